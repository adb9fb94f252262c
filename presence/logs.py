"""
Structured log output for operators: every C{twisted.logger} event as one
JSON object per line, to a file named in the configuration, filtered by
level.

twistd writes its own text log; a log collector wants fields instead, so
this service adds a second observer for as long as it runs.  Each line has
the shape collectors expect (Elasticsearch, Loki, journald's JSON import):
C{time} (ISO 8601, UTC), C{level} (C{debug} ... C{critical}), C{logger}
(the event's namespace), C{message} (the rendered text), then the event's
own fields, made JSON-safe.  A failure adds C{error} and C{traceback}.
Twisted's C{jsonFileLogObserver} writes its private event form instead
(C{log_format}, C{log_level} as an object, no rendered text), which only
Twisted reads back.

The file is opened again by L{JSONLogService.reopen} (SIGHUP, after
logrotate moved it away), and the level can change while it runs.  Only
the configuration is pickled, so the service survives in a C{.tap} file.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict, Optional

from twisted.application import service
from twisted.python.failure import Failure
from twisted.logger import (
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
)

from presence.config import Config
from presence.runtime import RuntimeService
from presence.startup import StartupError, describe

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: Keys of the line itself; an event field of the same name is written
#: as C{event_NAME}.
_OWN_KEYS = ("time", "level", "logger", "message", "error", "traceback")

#: Keys the legacy C{twisted.python.log} bridge adds, already rendered
#: into C{message}.
_LEGACY_KEYS = frozenset(("message", "format", "isError", "system", "why", "failure", "time", "logLevel"))

#: How deep nested containers are copied before they become strings.
_MAX_DEPTH = 4


def jsonSafe(value: Any, depth: int = 0) -> Any:
    """
    C{value} as something C{json.dumps} writes as standard JSON: text,
    numbers, booleans, null, lists and objects; anything else as its
    C{str}, bytes decoded, NaN and infinities as text.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {str(k): jsonSafe(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [jsonSafe(v, depth + 1) for v in value]
    return str(value)


def eventAsJSON(event: Dict[str, Any]) -> str:
    """
    One log event as one line of JSON (no newline), in the shape of the
    module docstring.
    """
    level = event.get("log_level")
    when = event.get("log_time")
    line: Dict[str, Any] = {
        "time": datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": getattr(level, "name", None),
        "logger": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    # twisted.python.log.msg events (Twisted's own, stdout and stderr);
    # their log.err failures are not under log_failure, and their text
    # holds the traceback.
    legacy = "isError" in event and "message" in event
    failure = event.get("log_failure")
    if failure is None and legacy and isinstance(event.get("failure"), Failure):
        failure = event["failure"]
        line["message"] = event.get("why") or "Unhandled Error"
    if failure is not None:
        line["error"] = describe(failure)
        line["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        name = "event_" + key if key in _OWN_KEYS else key
        line[name] = jsonSafe(value)
    return json.dumps(line, ensure_ascii=False, allow_nan=False, default=str)


class JSONLineObserver:
    """
    Writes the events at or above a level to a text file, one JSON object
    per line, flushed at each line.

    @ivar predicate: the level filter; replaced by L{setLevel}.
    """

    def __init__(self, outFile: IO[str], level: str) -> None:
        self.outFile = outFile
        self.setLevel(level)

    def setLevel(self, level: str) -> None:
        """
        Write events of C{level} (a key of L{LEVELS}) and above from now on.
        """
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])

    def __call__(self, event: Dict[str, Any]) -> None:
        if self.predicate(event) == PredicateResult.no:
            return
        self.outFile.write(eventAsJSON(event) + "\n")
        self.outFile.flush()


class JSONLogService(RuntimeService):
    """
    Writes JSON log lines to C{config.logJsonFile} (C{-} for standard
    output) at C{config.logLevel} and above.
    """

    name = "jsonlog"

    def __init__(self, config: Config) -> None:
        self.config = config
        RuntimeService.__init__(self)

    def _resetRuntime(self) -> None:
        self._observer: Optional[JSONLineObserver] = None

    def _open(self) -> IO[str]:
        """
        @raise StartupError: the file cannot be opened (a missing folder,
            no permission).
        """
        path = self.config.logJsonFile
        if path == "-":
            return sys.stdout
        try:
            return open(path, "a", encoding="utf-8")
        except OSError as e:
            raise StartupError("[log] json_file = %r: %s" % (path, describe(e))) from e

    def startService(self) -> None:
        self._observer = JSONLineObserver(self._open(), self.config.logLevel)
        globalLogPublisher.addObserver(self._observer)
        service.Service.startService(self)

    def reopen(self) -> None:
        """
        Close the file and open it by name again, so lines go to a new
        file once logrotate has moved the old one away.

        @raise StartupError: the file cannot be opened again; lines still
            go to the old one.
        """
        observer = self._observer
        if observer is None or observer.outFile is sys.stdout:
            return
        old = observer.outFile
        observer.outFile = self._open()
        old.close()

    def reconfigure(self, config: Config) -> None:
        """
        Apply a new C{[log] level} (SIGHUP, L{presence.reload}).
        """
        self.config = config
        if self._observer is not None:
            self._observer.setLevel(config.logLevel)

    def stopService(self) -> None:
        service.Service.stopService(self)
        observer, self._observer = self._observer, None
        if observer is not None:
            globalLogPublisher.removeObserver(observer)
            if observer.outFile is not sys.stdout:
                observer.outFile.close()
