"""
Structured log output for operators: every C{twisted.logger} event as one
JSON object per line, to a file named in the configuration, filtered by
level.

twistd writes its own text log; a log collector wants fields instead, so
this service adds a second observer for as long as it runs.  Only the
configuration is pickled, so it survives in a C{.tap} file.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Optional

from twisted.application import service
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

from presence.config import Config
from presence.runtime import RuntimeService

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


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
        self._observer: Optional[Any] = None
        self._file: Optional[IO[str]] = None

    def startService(self) -> None:
        path = self.config.logJsonFile
        if path == "-":
            self._file = sys.stdout
        else:
            self._file = open(path, "a", encoding="utf-8")
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[self.config.logLevel])
        observer = jsonFileLogObserver(self._file, recordSeparator="")
        self._observer = FilteringLogObserver(observer, [predicate])
        globalLogPublisher.addObserver(self._observer)
        service.Service.startService(self)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
