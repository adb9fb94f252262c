"""
The C{presence.winfo} event package (RFC 3857, bodies RFC 3858): the owner
of a presentity watches its watchers.

A client subscribes to its own C{presence.winfo} and learns who watches
its presence and how each watcher stands -- C{pending} while billing's
policy says C{ask}, C{active} once allowed, C{terminated} when its
subscription ended or the owner blocked it -- so it can allow or block a
pending watcher (C{presence-admin policy}). Only the owner may subscribe
(C{ownerOnly}); nobody publishes this state: it is the manager's own, the
presence subscriptions to the resource, which the manager hands the
package through L{bind}.

The composed document is the full watcher list (version 0, no durations,
so the same watchers give the same bytes); each subscription then gets it
as full state first and partial documents after
(L{presence.winfo.WatcherinfoView}), with the version and what it was
told kept in C{packageState}, stored with the subscription.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional

from zope.interface import implementer

from presence.interfaces import IWatcherInfoPackage
from presence.winfo import (
    CONTENT_TYPE,
    EVENTS,
    Watcher,
    WatcherinfoView,
    WatcherList,
    parseWatcherinfo,
    renderWatcherinfo,
)

# A watcher's status and the event that put it there.
_STATUS = {"active": ("active", "approved"), "pending": ("pending", "subscribe")}


@implementer(IWatcherInfoPackage)
class WatcherInfoPackage:
    """
    Watcher information about the C{presence} package.
    """

    event = "presence.winfo"
    reports = "presence"
    bodyTypes = (CONTENT_TYPE,)
    publishTypes = ()
    ownerOnly = True

    def __init__(self) -> None:
        self._watchers: Callable[[str], Iterable[Any]] = lambda aor: ()
        # Per resource, the watcher whose subscription ended last, listed
        # as terminated with its reason until the resource's next change,
        # so that every owner's subscription can be told why.
        self._ended: Dict[str, Watcher] = {}

    def bind(self, watchers: Callable[[str], Iterable[Any]]) -> None:
        self._watchers = watchers

    def changing(self, subscription: Any, reason: Optional[str]) -> None:
        resource = subscription.presentity
        if reason is None:
            self._ended.pop(resource, None)
            return
        event = reason if reason in EVENTS else "timeout"
        self._ended[resource] = Watcher(subscription.watcher, subscription.id, "terminated", event)

    def parse(self, body: bytes, resource: str) -> Any:
        raise ValueError("nobody publishes presence.winfo")

    def compose(self, resource: str, documents: List[Any]) -> bytes:
        return self.withoutState(resource, None)

    def withoutState(self, resource: str, registered: Optional[str]) -> bytes:
        watchers = []
        for sub in sorted(self._watchers(resource), key=lambda s: s.id):
            status = _STATUS.get(sub.state)
            if status is not None and not sub.terminated:
                watchers.append(Watcher(sub.watcher, sub.id, status[0], status[1]))
        ended = self._ended.get(resource)
        if ended is not None:
            watchers.append(ended)
        return renderWatcherinfo([WatcherList(resource, self.reports, tuple(watchers))], 0)

    def initialState(self, params: Any) -> str:
        return ""

    def render(self, subscription: Any, body: bytes) -> bytes:
        lists = list(parseWatcherinfo(body).lists)
        view = _loadView(subscription.packageState)
        out = view.update(lists)
        if out is None:
            # Nothing changed for this subscription (its NOTIFY was asked
            # for another reason, a refresh): an empty partial document.
            out = renderWatcherinfo([], view.version, "partial")
            view.version += 1
        subscription.packageState = _dumpView(view)
        return out


def _loadView(text: str) -> WatcherinfoView:
    if not text:
        return WatcherinfoView()
    try:
        state = json.loads(text)
        view = WatcherinfoView(int(state["version"]))
        told = state.get("told")
        if told is not None:
            view.restore(told)
        return view
    except (ValueError, KeyError, TypeError):
        return WatcherinfoView()


def _dumpView(view: WatcherinfoView) -> str:
    return json.dumps({"version": view.version, "told": view.snapshot()}, sort_keys=True, separators=(",", ":"))
