"""
Watcher information documents (RFC 3858, C{application/watcherinfo+xml}):
the value types and the renderer.

The owner of a presentity subscribes to C{presence.winfo} (RFC 3857) and
learns who watches it and how each watcher stands -- pending (waiting for
the owner's decision), active, waiting, terminated -- so a client can
allow or block a pending watcher. Rendering is deterministic: watcher
lists and watchers come out in the order given, attributes in a fixed
order, so the same state gives the same bytes.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

from presence.body import BodyError
from presence.pidf.document import escapeAttribute, escapeText

WATCHERINFO_NS = "urn:ietf:params:xml:ns:watcherinfo"
CONTENT_TYPE = "application/watcherinfo+xml"

# RFC 3858 section 5: the watcher status values and the events that lead
# to them.
STATUSES = ("pending", "active", "waiting", "terminated")
EVENTS = (
    "subscribe",
    "approved",
    "deactivated",
    "probation",
    "rejected",
    "timeout",
    "giveup",
    "noresource",
)


class WatcherinfoError(BodyError):
    """
    A watcherinfo body was refused.
    """

    default = "invalid watcherinfo"


class Watcher(NamedTuple):
    """
    One watcher of a resource.

    @ivar uri: the watcher's URI (the element's text).
    @ivar id: a stable id for this watcher's subscription.
    @ivar status: one of L{STATUSES}.
    @ivar event: one of L{EVENTS}: what put it in that status.
    @ivar displayName: the watcher's display name, or L{None}.
    @ivar durationSubscribed: seconds since the subscription began, or
        L{None}.
    @ivar expiration: seconds until the subscription expires, or L{None}.
    """

    uri: str
    id: str
    status: str
    event: str
    displayName: Optional[str] = None
    durationSubscribed: Optional[int] = None
    expiration: Optional[int] = None


class WatcherList(NamedTuple):
    """
    The watchers of one resource for one event package.
    """

    resource: str
    package: str
    watchers: Tuple[Watcher, ...] = ()


def checkWatcher(watcher: Watcher) -> None:
    """
    Refuse a watcher whose values the schema does not allow.

    @raise WatcherinfoError: naming the bad value.
    """
    if watcher.status not in STATUSES:
        raise WatcherinfoError("watcher status must be one of " + ", ".join(STATUSES))
    if watcher.event not in EVENTS:
        raise WatcherinfoError("watcher event must be one of " + ", ".join(EVENTS))
    if not watcher.id:
        raise WatcherinfoError("watcher without id")
    if not watcher.uri:
        raise WatcherinfoError("watcher without URI")
    for value in (watcher.durationSubscribed, watcher.expiration):
        if value is not None and value < 0:
            raise WatcherinfoError("watcher durations must be non-negative")


def renderWatcherinfo(
    lists: Sequence[WatcherList], version: int, state: str = "full"
) -> bytes:
    """
    Render a watcherinfo document.

    @param lists: the watcher lists, in the order to render them.
    @param version: the subscription's counter (RFC 3858 section 4.1).
    @param state: C{"full"} or C{"partial"}.
    @raise WatcherinfoError: for a value the schema does not allow.
    """
    if state not in ("full", "partial"):
        raise WatcherinfoError("watcherinfo state must be full or partial")
    if version < 0:
        raise WatcherinfoError("watcherinfo version must be non-negative")
    parts: List[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<watcherinfo xmlns="',
        WATCHERINFO_NS,
        '" version="',
        str(version),
        '" state="',
        state,
        '">',
    ]
    for watcherList in lists:
        parts.append(
            '<watcher-list resource="'
            + escapeAttribute(watcherList.resource)
            + '" package="'
            + escapeAttribute(watcherList.package)
            + '"'
        )
        if not watcherList.watchers:
            parts.append("/>")
            continue
        parts.append(">")
        for watcher in watcherList.watchers:
            checkWatcher(watcher)
            parts.append(
                '<watcher id="'
                + escapeAttribute(watcher.id)
                + '" status="'
                + watcher.status
                + '" event="'
                + watcher.event
                + '"'
            )
            if watcher.displayName is not None:
                parts.append(' display-name="' + escapeAttribute(watcher.displayName) + '"')
            if watcher.durationSubscribed is not None:
                parts.append(' duration-subscribed="' + str(watcher.durationSubscribed) + '"')
            if watcher.expiration is not None:
                parts.append(' expiration="' + str(watcher.expiration) + '"')
            parts.append(">" + escapeText(watcher.uri) + "</watcher>")
        parts.append("</watcher-list>")
    parts.append("</watcherinfo>")
    return "".join(parts).encode("utf-8")
