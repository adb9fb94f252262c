"""
What one C{presence.winfo} subscription has been told, so that it gets a
full document first and then partial ones (RFC 3857 section 3.5,
RFC 3858 section 4).

The first NOTIFY of a subscription, and the first after the notifier lost
what it had sent (a restart, an adoption by another manager), is full
state. Later ones list only the watchers whose status, event or display
name changed; a watcher that is gone without having been reported
terminated is reported once as C{terminated} with event C{timeout}.
Durations are not a change: they grow every second.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from presence.winfo.document import Watcher, WatcherList, renderWatcherinfo

_Key = Tuple[str, str]


def _identity(watcher: Watcher) -> tuple:
    return (watcher.uri, watcher.status, watcher.event, watcher.displayName)


class WatcherinfoView:
    """
    One subscription's version counter and what it was last told.

    @ivar version: the version of the next document (RFC 3858: starts at
        0, one more with every document of the subscription).
    """

    def __init__(self, version: int = 0) -> None:
        self.version = version
        self._told: Optional[Dict[_Key, Dict[str, Watcher]]] = None

    def full(self, lists: Sequence[WatcherList]) -> bytes:
        """
        The next document as full state.
        """
        body = renderWatcherinfo(lists, self.version, "full")
        self.version += 1
        self._remember(lists)
        return body

    def update(self, lists: Sequence[WatcherList]) -> Optional[bytes]:
        """
        The next document for the current state (one list per resource
        and package): full if this view has
        told nothing yet, else partial, or L{None} if nothing changed.
        """
        told = self._told
        if told is None:
            return self.full(lists)
        changed: List[WatcherList] = []
        current: Dict[_Key, WatcherList] = {(l.resource, l.package): l for l in lists}
        for key, watcherList in current.items():
            before = told.get(key, {})
            ids = set()
            watchers = []
            for watcher in watcherList.watchers:
                ids.add(watcher.id)
                old = before.get(watcher.id)
                if old is None or _identity(old) != _identity(watcher):
                    watchers.append(watcher)
            watchers.extend(_gone(before, ids))
            if watchers:
                changed.append(WatcherList(key[0], key[1], tuple(watchers)))
        for key, before in told.items():
            if key not in current:
                watchers = _gone(before, set())
                if watchers:
                    changed.append(WatcherList(key[0], key[1], tuple(watchers)))
        if not changed:
            return None
        body = renderWatcherinfo(changed, self.version, "partial")
        self.version += 1
        self._remember(lists)
        return body

    def snapshot(self) -> Optional[List[list]]:
        """
        What this view was told, as plain lists (JSON-ready) for
        L{restore}; L{None} if nothing yet.
        """
        if self._told is None:
            return None
        return [
            [key[0], key[1], [[w.id, w.uri, w.status, w.event, w.displayName] for w in watchers.values()]]
            for key, watchers in self._told.items()
        ]

    def restore(self, snapshot: Sequence[Sequence[Any]]) -> None:
        """
        Take back what L{snapshot} gave (a stored subscription's).

        @raise ValueError: for anything L{snapshot} does not give.
        """
        told: Dict[_Key, Dict[str, Watcher]] = {}
        try:
            for resource, package, watchers in snapshot:
                told[(str(resource), str(package))] = {
                    str(i): Watcher(str(uri), str(i), str(status), str(event), name)
                    for i, uri, status, event, name in watchers
                }
        except (TypeError, ValueError) as e:
            raise ValueError("not a watcherinfo snapshot: %s" % (e,)) from None
        self._told = told

    def _remember(self, lists: Sequence[WatcherList]) -> None:
        self._told = {
            (l.resource, l.package): {w.id: w for w in l.watchers} for l in lists
        }


def _gone(before: Dict[str, Watcher], present: set) -> List[Watcher]:
    """
    The watchers told before and gone now that were not yet reported
    terminated, as terminated.
    """
    return [
        watcher._replace(status="terminated", event="timeout", expiration=None)
        for watcherId, watcher in before.items()
        if watcherId not in present and watcher.status != "terminated"
    ]
