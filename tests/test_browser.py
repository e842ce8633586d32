"""The pages in a real browser: Debian's chromium, headless, driven by selenium.

Needs `apt-get install -y chromium chromium-driver` and `pip install selenium`.
Selenium gets the driver's path, so it never downloads a browser or a driver.
A screenshot of every page goes to test-output/screenshots/.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import requests

from apbd import spool as spool_format
from tests.support.packages import submit_tarball, tarball_from_text
from tests.support.servers import wait_for_status
from tests.test_stream import make_job, set_status

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1300"]

# A build that prints makepkg-style lines for a minute, so the test can watch
# the log grow and cancel it. One line tries to run a script in the page.
SLOW_PKGBUILD = """\
pkgname=browser-slow
pkgver=1.0
pkgrel=1
pkgdesc='Slow build for the browser tests'
arch=('any')
license=('MIT')

build() {
  echo '<script>window.pwned = 1</script>'
  echo '==> WARNING: a warning line'
  echo '==> ERROR: an error line (the build goes on)'
  for ((i = 1; i <= 300; i++)); do
    echo "==> Step $i"
    echo "  -> sub-step $i"
    sleep 0.2
  done
}

package() {
  mkdir -p "$pkgdir/usr/share/browser-slow"
}
"""


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "Debian's chromium is not installed (apt-get install -y chromium chromium-driver)"
        # CI installs chromium, so there a missing browser is a failure, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def wait_until(driver, condition, timeout: float = 30.0, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)


def log_lines(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#log .line'), e => e.textContent)")


def line_class(driver, text: str) -> str:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#log .line')).find(e => e.textContent === arguments[0])"
        "?.className", text)


def test_build_page_follows_log_and_cancels(apbd_server, browser):
    url = apbd_server.url
    build_id = str(uuid.uuid4())
    answer = submit_tarball(url, tarball_from_text({"PKGBUILD": SLOW_PKGBUILD}), build_id=build_id)
    assert answer.status_code == 200, answer.text
    wait_for_status(url, build_id, states=("building",), timeout=60)

    browser.get(url + "/")
    assert "browser-slow" in browser.page_source
    screenshot(browser, "index")

    browser.get(f"{url}/build/{build_id}")
    wait_until(browser, lambda d: len(log_lines(d)) >= 10, message="no log lines arrived")
    first_count = len(log_lines(browser))
    time.sleep(2)
    second_count = len(log_lines(browser))
    assert second_count > first_count, "the log did not grow while the build ran"
    assert browser.find_element(By.ID, "status").text == "building"
    screenshot(browser, "build-running")

    lines = log_lines(browser)
    assert "<script>window.pwned = 1</script>" in lines
    assert browser.execute_script("return window.pwned === undefined")
    assert line_class(browser, "==> WARNING: a warning line") == "line warning"
    assert line_class(browser, "==> ERROR: an error line (the build goes on)") == "line error"
    assert line_class(browser, "==> Step 1") == "line step"
    assert line_class(browser, "  -> sub-step 1") == "line substep"

    browser.find_element(By.ID, "cancel-link").click()
    wait_until(browser, lambda d: d.current_url.endswith("/confirm-cancel"))
    screenshot(browser, "confirm-cancel")
    browser.find_element(By.ID, "confirm-cancel").click()
    wait_until(browser, lambda d: d.current_url.rstrip("/").endswith(f"/build/{build_id}"),
               message="the confirm page did not return to the build page")
    wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "cancelled", timeout=60,
               message="the build page never showed the build as cancelled")
    wait_until(browser, lambda d: d.find_element(By.ID, "log-state").text.startswith("finished: cancelled"))
    assert browser.find_elements(By.ID, "cancel-link") == []
    screenshot(browser, "build-cancelled")

    status = requests.get(f"{url}/build/{build_id}/status-api", timeout=10).json()
    assert status["status"] == "cancelled"
    steps = [line for line in log_lines(browser) if line.startswith("==> Step ")]
    assert len(steps) < 300, "the build ran to its end instead of being cancelled"


def test_long_log_stays_responsive(web_server, spool, browser):
    total = 200_000
    log = b"".join(b"==> line %d\n" % i if i % 1000 == 0 else b"line %d of a long build\n" % i
                   for i in range(total))
    build_id = make_job(spool, spool_format.COMPLETED, log)
    set_status(spool, build_id, spool_format.COMPLETED, exit_code=0, duration=3600.0)

    started = time.monotonic()
    browser.get(f"{web_server.url}/build/{build_id}")
    wait_until(browser, lambda d: d.find_element(By.ID, "log-state").text.startswith("finished"), timeout=120,
               message="the stream of a 200,000-line log never completed in the page")
    elapsed = time.monotonic() - started
    wait_until(browser, lambda d: d.find_element(By.ID, "log-count").text == f"{total} lines")

    probe = time.monotonic()
    shown = browser.execute_script("return document.querySelectorAll('#log .line').length")
    assert time.monotonic() - probe < 2.0
    assert shown <= 5000
    assert log_lines(browser)[-1] == f"line {total - 1} of a long build"
    assert "not shown here" in browser.find_element(By.ID, "log-trimmed").text
    assert elapsed < 90
    screenshot(browser, "build-long-log")


def test_view_and_cleanup_pages(web_server, spool, browser):
    build_id = make_job(spool, spool_format.FAILED,
                        b"==> Making package: demo\n<script>window.pwned = 1</script>\n\x1b[31mred\x1b[0m\n")
    old = make_job(spool, spool_format.COMPLETED, b"old\n")
    set_status(spool, old, spool_format.COMPLETED, end_time=time.time() - 10 * 86400)

    browser.get(f"{web_server.url}/build/{build_id}/view/build.log")
    cells = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.source td.text")]
    assert cells == ["==> Making package: demo", "<script>window.pwned = 1</script>", "red"]
    assert browser.execute_script("return window.pwned === undefined")
    screenshot(browser, "view-log")

    browser.get(f"{web_server.url}/admin/cleanup")
    assert old in browser.page_source
    screenshot(browser, "cleanup")
    browser.find_element(By.CSS_SELECTOR, "#cleanup-form button").click()
    result = wait_until(browser, lambda d: d.find_element(By.ID, "cleanup-result").text not in ("", "Cleaning up…"))
    assert result
    text = browser.find_element(By.ID, "cleanup-result").text
    assert "failed" not in text.lower(), text
    wait_until(browser, lambda d: not spool.exists(old), message="the old build was not removed")
    assert spool.exists(build_id)



def test_index_chart_links_builds(web_server, spool, browser):
    outcomes = [spool_format.COMPLETED, spool_format.FAILED, spool_format.COMPLETED, spool_format.CANCELLED]
    build_ids = []
    for n in range(12):
        state = outcomes[n % len(outcomes)]
        build_id = make_job(spool, state, b"x\n")
        set_status(spool, build_id, state, duration=30.0 + 40 * (n % 5), exit_code=0 if state == "completed" else 2)
        build_ids.append(build_id)
        time.sleep(0.01)

    browser.get(web_server.url + "/")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    assert len(bars) == 12
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar-failed")) == 3
    fill = browser.execute_script("return getComputedStyle(arguments[0]).fill", bars[0])
    assert fill.startswith("rgb(")
    screenshot(browser, "index-chart")

    # The newest build is the rightmost bar.
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", bars[-1])
    wait_until(browser, lambda d: d.current_url.endswith(f"/build/{build_ids[-1]}"))
