"""
A TTL cache of billing answers indexed by the AORs they depend on.

Used by the manager side of a remote billing node
(L{presence.billing.remote.RemoteAuthorizer}), which asks the node over
the network and keeps its answers a short time: a change pushed by the
node drops exactly the answers involving the AORs it names.  The embedded
authorizer needs none: it holds all of billing in memory
(L{presence.billing.authorizer}).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Hashable, Iterable, Set, Tuple

#: What L{TTLCache.get} returns for a key it has no live value for (L{None}
#: is a value: "no such account").
_MISSING = object()


class TTLCache:
    """
    A bounded mapping whose entries live C{ttl} seconds and are indexed by
    the AORs they depend on, so that a change to one AOR drops exactly the
    entries it may have changed.  Least recently used entries go first when
    it is full.
    """

    def __init__(self, clock: Any, ttl: float, maxEntries: int) -> None:
        self.clock = clock
        self.ttl = ttl
        self.maxEntries = maxEntries
        self._entries: OrderedDict[Hashable, Tuple[Any, float, Tuple[str, ...]]] = OrderedDict()
        self._byAOR: Dict[str, Set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """
        The live value for C{key}, or C{_MISSING}.
        """
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        if entry[1] <= self.clock.seconds():
            self._drop(key)
            return _MISSING
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, aors: Tuple[str, ...]) -> None:
        """
        Remember C{value} for C{key}; it depends on C{aors}.
        """
        if self.ttl <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self.clock.seconds() + self.ttl, aors)
        for aor in aors:
            self._byAOR.setdefault(aor, set()).add(key)
        while len(self._entries) > self.maxEntries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for aor in entry[2]:
            keys = self._byAOR.get(aor)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._byAOR[aor]

    def invalidate(self, aors: Iterable[str]) -> int:
        """
        Drop every entry depending on one of C{aors}.

        @return: how many entries were dropped.
        """
        dropped = 0
        for aor in aors:
            for key in list(self._byAOR.get(aor, ())):
                self._drop(key)
                dropped += 1
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._byAOR.clear()
