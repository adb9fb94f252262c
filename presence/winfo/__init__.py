"""
Watcher information (RFC 3857 event package C{presence.winfo}, RFC 3858
C{application/watcherinfo+xml}): render full and partial documents for
the owner of a presentity, parse them safely, keep each subscription's
version and what it was told.

Pure functions and value objects, no I/O and no reactor.
"""

from __future__ import annotations

from presence.winfo.document import (
    CONTENT_TYPE,
    EVENTS,
    STATUSES,
    WATCHERINFO_NS,
    Watcher,
    WatcherinfoError,
    WatcherList,
    renderWatcherinfo,
)
from presence.winfo.parser import WatcherinfoDocument, parseWatcherinfo
from presence.winfo.view import WatcherinfoView

__all__ = [
    "CONTENT_TYPE",
    "EVENTS",
    "STATUSES",
    "WATCHERINFO_NS",
    "Watcher",
    "WatcherList",
    "WatcherinfoDocument",
    "WatcherinfoError",
    "WatcherinfoView",
    "parseWatcherinfo",
    "renderWatcherinfo",
]
