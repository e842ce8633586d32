import os
import shutil
import time

from apbd import limits, monitor
from apbd.spool import Spool


def make_spool(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.create()
    return spool


def test_system_info_shape(tmp_path):
    info = monitor.collect_system_info(make_spool(tmp_path), "x86_64")
    assert set(info) == {"architecture", "cpu", "memory", "disk", "uptime", "process_info"}
    assert info["architecture"] == "x86_64"
    assert set(info["cpu"]) == {"model", "cores", "usage_percent", "load_average"}
    assert info["cpu"]["cores"] == os.cpu_count()
    assert isinstance(info["cpu"]["model"], str) and info["cpu"]["model"]
    assert len(info["cpu"]["load_average"]) == 3
    assert set(info["memory"]) == {"total", "available", "used", "percentage"}
    assert info["memory"]["used"] + info["memory"]["available"] == info["memory"]["total"]
    assert set(info["disk"]) == {"total", "used", "free", "percentage"}
    assert info["disk"]["total"] == shutil.disk_usage(tmp_path).total
    assert set(info["process_info"]) == {"pid", "thread_count", "open_files", "memory_usage"}
    assert info["process_info"]["pid"] == os.getpid()
    assert info["process_info"]["memory_usage"] > 0
    assert info["uptime"].count(",") == 2


def test_format_uptime():
    assert monitor.format_uptime(2 * 86400 + 5 * 3600 + 30 * 60 + 59) == "2 days, 5 hours, 30 minutes"
    assert monitor.format_uptime(86400 + 3600 + 60) == "1 day, 1 hour, 1 minute"
    assert monitor.format_uptime(0) == "0 days, 0 hours, 0 minutes"


def test_snapshot_returns_last_sample_without_sampling(tmp_path):
    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", interval=3600)
    mon.start()
    try:
        count = mon.sample_count
        first = mon.snapshot()
        started = time.perf_counter()
        for _ in range(100):
            assert mon.snapshot() is first
        assert time.perf_counter() - started < 0.05
        assert mon.sample_count == count == 1
    finally:
        mon.stop()


def test_thread_samples_every_interval(tmp_path):
    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", interval=0.1)
    mon.start()
    try:
        deadline = time.monotonic() + 5
        while mon.sample_count < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mon.sample_count >= 4
    finally:
        mon.stop()
    stopped_at = mon.sample_count
    time.sleep(0.3)
    assert mon.sample_count == stopped_at


def test_threshold_triggers_callback_once(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MEMORY_CLEANUP_PERCENT", -1.0)
    reasons = []
    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", interval=3600, on_threshold=reasons.append)
    mon.sample()
    mon.sample()
    assert len(reasons) == 1
    assert reasons[0].startswith("memory use")


def test_disk_threshold_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "DISK_CLEANUP_PERCENT", -1.0)
    reasons = []
    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", interval=3600, on_threshold=reasons.append,
                                  trigger_min_interval=0)
    mon.sample()
    mon.sample()
    assert len(reasons) == 2
    assert "disk use" in reasons[0]


def test_no_callback_below_thresholds(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MEMORY_CLEANUP_PERCENT", 100.0)
    monkeypatch.setattr(limits, "DISK_CLEANUP_PERCENT", 100.0)
    reasons = []
    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", on_threshold=reasons.append)
    mon.sample()
    assert reasons == []


def test_failing_callback_keeps_thread_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MEMORY_CLEANUP_PERCENT", -1.0)
    calls = []

    def broken(reason):
        calls.append(reason)
        raise OSError("cleanup broke")

    mon = monitor.ResourceMonitor(make_spool(tmp_path), "x86_64", interval=0.05, on_threshold=broken,
                                  trigger_min_interval=0)
    mon.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 3
        assert mon._thread.is_alive()
    finally:
        mon.stop()


def test_disk_has_room(tmp_path):
    spool = make_spool(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    assert monitor.disk_has_room(spool, 1024) is True
    assert monitor.disk_has_room(spool.root, 1024) is True
    assert monitor.disk_has_room(spool, free) is False
    reason = monitor.low_disk_reason(spool, free)
    assert reason.startswith("Not enough free disk space for this upload")
    assert monitor.low_disk_reason(spool, 1024) is None


def test_missing_spool_logged_once(tmp_path, caplog):
    spool = make_spool(tmp_path)
    mon = monitor.ResourceMonitor(spool, "x86_64", interval=0.05)
    mon.start()
    shutil.rmtree(spool.root)
    try:
        time.sleep(0.5)
        assert mon._thread.is_alive()
    finally:
        mon.stop()
    warnings = [r for r in caplog.records if "spool folder is missing" in r.getMessage()]
    assert len(warnings) == 1
