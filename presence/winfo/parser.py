"""
A hardened parser for watcherinfo documents (RFC 3858), for the clients
of C{presence.winfo}: the server's own tests, and any component that
subscribes to a watcher list and must not trust what it gets.

It runs on L{presence.xmlsafe} (no DTD, no entity, no external reference,
a size cap) and caps elements and depth while expat reads. Elements other
than C{watcher-list} and C{watcher} are skipped.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

from presence.winfo.document import (
    WATCHERINFO_NS,
    Watcher,
    WatcherinfoError,
    WatcherList,
    checkWatcher,
)
from presence.xmlsafe import SEPARATOR, LimitedBuilder, attribute, parseHostile

DEFAULT_MAX_SIZE = 256 * 1024
DEFAULT_MAX_ELEMENTS = 10000
DEFAULT_MAX_DEPTH = 16

_ROOT = WATCHERINFO_NS + SEPARATOR + "watcherinfo"
_LIST = WATCHERINFO_NS + SEPARATOR + "watcher-list"
_WATCHER = WATCHERINFO_NS + SEPARATOR + "watcher"
_WHITESPACE = " \t\r\n"


class WatcherinfoDocument(NamedTuple):
    """
    A parsed watcherinfo document.
    """

    version: int
    state: str
    lists: Tuple[WatcherList, ...]


def parseWatcherinfo(
    body: bytes,
    maxSize: int = DEFAULT_MAX_SIZE,
    maxElements: int = DEFAULT_MAX_ELEMENTS,
    maxDepth: int = DEFAULT_MAX_DEPTH,
) -> WatcherinfoDocument:
    """
    Parse and validate a watcherinfo body.

    @raise WatcherinfoError: for any body that is refused.
    @raise TypeError: if C{body} is not bytes-like.
    """
    builder = _Builder(maxElements, maxDepth)
    parseHostile(body, "watcherinfo", WatcherinfoError, maxSize, builder)
    return WatcherinfoDocument(builder.version, builder.state, tuple(builder.lists))


def _integer(attributes: List[str], name: str, required: bool = False) -> Optional[int]:
    value = attribute(attributes, name)
    if value is None and not required:
        return None
    value = (value or "").strip(_WHITESPACE)
    if not value.isdigit() or not value.isascii():
        raise WatcherinfoError(name + " must be a non-negative integer")
    return int(value)


class _Builder(LimitedBuilder):
    kind = "watcherinfo"
    error = WatcherinfoError

    def __init__(self, maxElements: int, maxDepth: int) -> None:
        super().__init__(maxElements, maxDepth)
        self.version = 0
        self.state = ""
        self.lists: List[WatcherList] = []
        self.listAttributes: Optional[Tuple[str, str]] = None
        self.watchers: List[Watcher] = []
        self.watcherAttributes: Optional[List[str]] = None

    def startElement(self, name: str, attributes: List[str]) -> None:
        depth = self.enter()
        if self.watcherAttributes is not None:
            raise WatcherinfoError("watcher with child elements")
        del self.pending[:]
        if depth == 1:
            if name != _ROOT:
                raise WatcherinfoError("root element is not watcherinfo")
            self.version = _integer(attributes, "version", True)  # type: ignore[assignment]
            self.state = (attribute(attributes, "state") or "").strip(_WHITESPACE)
            if self.state not in ("full", "partial"):
                raise WatcherinfoError("watcherinfo state must be full or partial")
        elif depth == 2 and name == _LIST:
            resource = attribute(attributes, "resource")
            package = attribute(attributes, "package")
            if not resource or not package:
                raise WatcherinfoError("watcher-list needs resource and package")
            self.listAttributes = (resource, package)
            self.watchers = []
        elif depth == 3 and name == _WATCHER and self.listAttributes is not None:
            self.watcherAttributes = attributes

    def endElement(self, name: str) -> None:
        depth = self.depth
        self.depth = depth - 1
        if depth == 3 and self.watcherAttributes is not None:
            attributes = self.watcherAttributes
            self.watcherAttributes = None
            watcher = Watcher(
                "".join(self.pending).strip(_WHITESPACE),
                attribute(attributes, "id") or "",
                attribute(attributes, "status") or "",
                attribute(attributes, "event") or "",
                attribute(attributes, "display-name"),
                _integer(attributes, "duration-subscribed"),
                _integer(attributes, "expiration"),
            )
            checkWatcher(watcher)
            self.watchers.append(watcher)
        elif depth == 2 and self.listAttributes is not None:
            resource, package = self.listAttributes
            self.listAttributes = None
            self.lists.append(WatcherList(resource, package, tuple(self.watchers)))
        del self.pending[:]
