"""
The JSON log lines (presence.logs): one object per line, time, level,
logger and message first, then the event's fields made JSON-safe.
"""

from __future__ import annotations

import io
import json
from datetime import datetime

from twisted.logger import Logger, globalLogPublisher
from twisted.python import log as legacyLog

from presence.logs import JSONLineObserver


def _lines(out: io.StringIO):
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_shapeAndFields():
    out = io.StringIO()
    observer = JSONLineObserver(out, "info")
    log = Logger(namespace="presence.test", observer=observer)
    log.info(
        "SUBSCRIBE {aor} from {source}", aor="sip:bob@example.test", source=("127.0.0.1", 5070),
        message="not ours", raw=b"\xffbytes", ratio=float("inf"), nested={1: {"deep": object}},
    )
    log.debug("hidden below the level")
    (line,) = _lines(out)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert (line["level"], line["logger"]) == ("info", "presence.test")
    assert line["message"] == "SUBSCRIBE sip:bob@example.test from ('127.0.0.1', 5070)"
    assert line["source"] == ["127.0.0.1", 5070] and line["event_message"] == "not ours"
    assert line["raw"] == "\ufffdbytes" and line["ratio"] == "inf"
    assert line["nested"] == {"1": {"deep": "<class 'object'>"}}
    observer.setLevel("debug")
    log.debug("shown now")
    assert _lines(out)[-1]["message"] == "shown now"


def test_failures():
    """
    A failure adds error and traceback, from twisted.logger and from the
    legacy log.err that Twisted itself still uses.
    """
    out = io.StringIO()
    observer = JSONLineObserver(out, "info")
    log = Logger(namespace="presence.test", observer=observer)
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("Store write failed: {what}", what="batch")
    globalLogPublisher.addObserver(observer)
    try:
        try:
            {}["missing"]
        except KeyError:
            legacyLog.err(None, "Unhandled error in a Deferred")
        legacyLog.msg("Main loop terminated.")
    finally:
        globalLogPublisher.removeObserver(observer)
    new, legacy, plain = _lines(out)
    assert (new["message"], new["error"], new["what"]) == ("Store write failed: batch", "division by zero", "batch")
    assert "ZeroDivisionError" in new["traceback"]
    assert (legacy["level"], legacy["message"], legacy["error"]) == (
        "critical", "Unhandled error in a Deferred", "'missing'",
    )
    assert "KeyError" in legacy["traceback"]
    assert plain["message"] == "Main loop terminated." and "isError" not in plain and "system" not in plain
