"""
How the dispatcher picks a manager for a request that no dialog ties to
one: round robin, least loaded, or a hash of the presentity.

C{hash} is rendezvous (highest random weight) hashing: each presentity goes
to the live manager with the highest C{hash(manager, presentity)}.  Its
watchers and its publisher then meet on one manager, which can notify them
without publication replication; when a manager dies only its own
presentities move, and they move back when it returns.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING, Callable, Dict, Sequence

if TYPE_CHECKING:
    from presence.dispatcher.health import ManagerState


def weight(manager: str, key: str) -> int:
    """
    The rendezvous weight of C{manager} for C{key}.
    """
    digest = blake2b((manager + "\x00" + key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(names: Sequence[str], key: str) -> str:
    """
    The name among C{names} that C{key} hashes to (for tests and tools that
    need to know where a presentity lands).
    """
    return max(names, key=lambda name: (weight(name, key), name))


class RoundRobin:
    """
    Each manager in turn, in configured order: the first candidate after
    the one chosen last, so that a manager out of the running (down, or
    already tried for this request) does not shift the turns of the others.
    """

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[ManagerState], key: str) -> ManagerState:
        """
        @param candidates: the live managers not yet tried, in configured
            order; never empty.
        @param key: the presentity's AOR (ignored here).
        """
        after = [manager for manager in candidates if manager.index >= self._next]
        manager = min(after or candidates, key=lambda m: m.index)
        self._next = manager.index + 1
        return manager


class LeastLoaded:
    """
    The manager with the fewest requests in flight through this
    dispatcher; ties in turn.  The dispatcher cannot see how many
    subscriptions a manager holds, but requests in flight rise at once
    when a manager slows down, which is when spreading matters.
    """

    def __init__(self) -> None:
        self._turn = RoundRobin()

    def choose(self, candidates: Sequence[ManagerState], key: str) -> ManagerState:
        least = min(manager.inFlight for manager in candidates)
        return self._turn.choose([m for m in candidates if m.inFlight == least], key)


class Hash:
    """
    Rendezvous hashing of the presentity's AOR.
    """

    def choose(self, candidates: Sequence[ManagerState], key: str) -> ManagerState:
        return max(candidates, key=lambda manager: (weight(manager.name, key), manager.name))


POLICIES: Dict[str, Callable[[], object]] = {
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
    "hash": Hash,
}
