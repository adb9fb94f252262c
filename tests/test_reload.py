"""
SIGHUP (presence.reload): the log files are reopened, the live keys of
the configuration file applied, the others reported as needing a restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import List

from twisted.application import service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent

from presence.config import Config
from presence.reload import LIVE, applyLive, changes, summary
from presence.root import PresenceService
from presence.sip.listen import ListenSpec
from presence.sip.service import SIPService
from tests.serverprocess import REPO


def test_changesSplitLiveFromRestart():
    """
    The diff of two configurations: each changed key once, in schema
    order; the live ones applied, the others left as they were.
    """
    old = Config()
    new = Config.fromString(
        "[server]\nlisten = udp:5070\n[manager]\nmax_pending_writes = 5\nmin_expires = 30\n"
        "[log]\nlevel = debug\n[dispatcher]\nmanagers = m1=udp:127.0.0.1:5070\n"
    )
    found = changes(old, new)
    assert [(c.section, c.key, c.live) for c in found] == [
        ("server", "listen", False),
        ("manager", "min_expires", False),
        ("manager", "max_pending_writes", True),
        ("log", "level", True),
        ("dispatcher", "managers", True),
    ]
    applied, restart = summary(found)
    assert applied == [
        "[manager] max_pending_writes 20000 -> 5",
        "[log] level info -> debug",
        "[dispatcher] managers (none) -> m1=udp:127.0.0.1:5070",
    ]
    assert restart == ["[server] listen udp:5060 tcp:5060 -> udp:5070", "[manager] min_expires 60 -> 30"]
    inForce = applyLive(old, found)
    assert (inForce.maxPendingWrites, inForce.logLevel, inForce.listen, inForce.minExpires) == (
        5, "debug", old.listen, 60,
    )
    assert changes(new, new) == []


class Recorder(service.Service):
    """
    A child that records what the reload gives it.
    """

    name = "recorder"

    def __init__(self) -> None:
        self.configs: List[Config] = []
        self.reopened = 0

    def reconfigure(self, config: Config) -> None:
        self.configs.append(config)

    def reopen(self) -> None:
        self.reopened += 1


def _messages(events, level):
    return [formatEvent(e) for e in events if e.get("log_level") == level and e.get("log_namespace") == "presence.reload"]


def test_reloadAppliesLiveChanges(tmp_path, logEvents):
    """
    The root reads its file again under the command-line overrides, hands
    the configuration in force to its children, and says what it applied
    and what needs a restart; a file with a mistake changes nothing.
    """
    path = tmp_path / "presence.ini"
    path.write_text("[sip]\nmax_body_size = 1000\n")
    overrides = {"listen": (ListenSpec("TCP", 5070, "127.0.0.1"),)}
    config = Config.fromFile(str(path)).replace(**overrides)
    sip = SIPService(config, MemoryReactorClock())
    recorder = Recorder()
    root = PresenceService(MemoryReactorClock(), config, str(path), True, overrides)
    sip.setServiceParent(root)
    recorder.setServiceParent(root)
    root.startService()
    limits = sip.core.limits
    path.write_text("[sip]\nmax_body_size = 2000\nt1 = 0.25\n[log]\nrequests = yes\n")
    root.reload()
    assert recorder.reopened == 1
    (inForce,) = recorder.configs
    assert (inForce.maxBodySize, inForce.logRequests, inForce.t1, inForce.listen) == (2000, True, 0.5, overrides["listen"])
    assert root.config == inForce and sip.config == inForce
    # In place: the parsers of open connections read the same object.
    assert sip.core.limits is limits and limits.maxBodySize == 2000 and sip.core.logRequests
    assert _messages(logEvents, LogLevel.info)[-1] == (
        "SIGHUP: applied [log] requests False -> True; [sip] max_body_size 1000 -> 2000"
    )
    assert _messages(logEvents, LogLevel.warn) == ["SIGHUP: these changes need a restart and are not applied: [sip] t1 0.5 -> 0.25"]
    path.write_text("[sip]\nmax_body_size = lots\n")
    root.reload()
    assert len(recorder.configs) == 1 and limits.maxBodySize == 2000
    assert _messages(logEvents, LogLevel.error) == [
        "SIGHUP: the configuration is not reloaded: %s: [sip] max_body_size = 'lots': invalid literal for int() with base 10: 'lots'" % (path,)
    ]
    path.write_text("[log]\njson_file = %s\n" % (tmp_path / "no" / "p.json",))
    root.reload()
    assert _messages(logEvents, LogLevel.error)[-1].startswith("SIGHUP: the configuration is not reloaded: [log] json_file")
    root.stopService()


def _waitForFile(path, text: str, process: subprocess.Popen, timeout: float = 30.0) -> str:
    """
    Wait until the file at C{path} holds C{text}, polling: a log file has
    no event to wait on.
    """
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                content = f.read()
            if text in content:
                return content
        assert process.poll() is None, "server exited:\n" + content
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %r in %s:\n%s" % (text, path, content))


def test_hangupReopensLogsAndReloads(tmp_path):
    """
    logrotate's way: move the log files away, SIGHUP; twistd's log and
    the JSON log are written anew, the live change applied, the others
    logged as needing a restart, and the server serves on.
    """
    import json

    from tests.sipclient import UDPClient

    logFile, jsonFile, config = tmp_path / "twistd.log", tmp_path / "presence.json", tmp_path / "presence.ini"
    config.write_text("[log]\njson_file = %s\n" % (jsonFile,))
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
         "--logfile=%s" % (logFile,), "presence", "--config", str(config), "--database",
         "sqlite:///%s" % (tmp_path / "presence.sqlite",), "--listen", "udp:0:interface=127.0.0.1"],
        cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    killer = threading.Timer(90, process.kill)
    killer.start()
    try:
        started = _waitForFile(logFile, "Subscription manager", process)
        port = int(started.split("SIP listening on UDP 127.0.0.1:")[1].split(";")[0].split(",")[0])
        os.rename(logFile, str(logFile) + ".1")
        os.rename(jsonFile, str(jsonFile) + ".1")
        config.write_text(
            "[log]\njson_file = %s\nlevel = debug\nrequests = yes\n[manager]\nmin_expires = 120\n" % (jsonFile,)
        )
        process.send_signal(signal.SIGHUP)
        # The restart warning is logged after the applied line: wait for it.
        content = _waitForFile(logFile, "need a restart", process)
        assert "SIGHUP: applied [log] requests False -> True; [log] level info -> debug" in content
        assert "need a restart and are not applied: [manager] min_expires 60 -> 120" in content
        _waitForFile(jsonFile, "SIGHUP: applied", process)
        client = UDPClient(port)
        assert client.request("OPTIONS", "sip:127.0.0.1").code == 200
        client.close()
        # Live: [log] requests and the debug level reach the JSON log.
        lines = [json.loads(line) for line in _waitForFile(jsonFile, '"method": "OPTIONS"', process).splitlines()]
        assert [e["level"] for e in lines if e.get("method") == "OPTIONS"] == ["debug"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    with open(str(logFile) + ".1", encoding="utf-8") as f:
        # The old file ends with the signal; what follows is in the new one.
        old = f.read()
        assert "SIGHUP: reopening the log files" in old and "SIGHUP: applied" not in old
    with open(logFile, encoding="utf-8") as f:
        assert "Server Shut Down." in f.read()


def test_managerTakesNewOverloadThresholds():
    """
    The overload thresholds reach the running guard; a lag limit of 0
    stops its probe, a positive one starts it again.
    """
    from types import SimpleNamespace

    from presence.manager.overload import OverloadGuard
    from presence.manager.service import ManagerService

    clock = MemoryReactorClock()
    guard = OverloadGuard(clock, lambda: 0, 20000, 1.0, 5)
    guard.start()
    managerService = ManagerService(Config(), clock)
    managerService.manager = SimpleNamespace(overload=guard)
    managerService.reconfigure(Config(maxPendingWrites=10, maxReactorLag=0.0, overloadRetryAfter=9))
    assert (guard.maxBacklog, guard.maxLag, guard.retryAfter) == (10, 0.0, 9)
    assert clock.getDelayedCalls() == []
    managerService.reconfigure(Config(maxReactorLag=0.5))
    assert len(clock.getDelayedCalls()) == 1
    guard.stop()


def test_sipTakesNewIntakeThresholds():
    """
    The UDP intake's queue delay and the Retry-After of its 503s reach the
    running SIP service, and C{[sip] max_queue_delay} is a live key.
    """
    sip = SIPService(Config(listen=(ListenSpec("TCP", 5070, "127.0.0.1"),)), MemoryReactorClock())
    sip.startService()
    assert (sip.shedder.maxDelay, sip.core.retryAfter) == (0.5, Config().overloadRetryAfter)
    sip.reconfigure(Config(maxQueueDelay=0.2, overloadRetryAfter=7))
    assert (sip.shedder.maxDelay, sip.core.retryAfter) == (0.2, 7)
    assert ("sip", "max_queue_delay") in LIVE
    sip.stopService()
