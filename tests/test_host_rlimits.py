import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_in_child(code):
    """Run code in a fresh interpreter, so the test process keeps its limits."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=REPO)
    return json.loads(proc.stdout)


def test_soft_limits_raised_to_hard():
    out = run_in_child(
        "import json, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))\n"
        "from apbd import rlimits\n"
        "result = rlimits.raise_soft_limits()\n"
        "now = {n: list(resource.getrlimit(w)) for n, w in rlimits.RAISED_LIMITS.items()}\n"
        "print(json.dumps({'result': result, 'now': now}))\n")
    result, now = out["result"], out["now"]
    assert set(result) == {"AS", "DATA", "STACK", "FSIZE", "NOFILE", "NPROC"}
    assert result["NOFILE"]["before"] == "64"
    assert result["STACK"]["before"] == str(1 << 20)
    for name, (soft, hard) in now.items():
        assert soft == hard, name
        assert result[name]["soft"] == result[name]["hard"], name


def test_hard_limit_is_ceiling():
    out = run_in_child(
        "import json, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (32, 128))\n"
        "from apbd import rlimits\n"
        "result = rlimits.raise_soft_limits()\n"
        "print(json.dumps({'result': result, 'now': list(resource.getrlimit(resource.RLIMIT_NOFILE))}))\n")
    assert out["now"] == [128, 128]
    assert out["result"]["NOFILE"] == {"before": "32", "soft": "128", "hard": "128"}
