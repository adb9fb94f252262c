"""
Deadlines for many objects at once, with one delayed call.

A manager holds 100,000 subscriptions and as many publications, each with
an expiry.  One C{callLater} each would fill the reactor's heap and make
every refresh a cancel and a re-insert; instead keys go into buckets of
C{resolution} seconds and a single delayed call fires the earliest bucket.

The wheel keeps no deadline of its own: the objects it times already hold
theirs (C{expiresAt}), and a second copy in a dict cost a tenth of a
subscription's memory.  The owner names the old deadline when it takes a
key out (L{ExpiryWheel.discard}), and when a bucket fires the wheel asks
the owner for each key's deadline now (C{deadlineOf}) and reports only
the keys that are really due, so a discard that was missed costs memory
until the old deadline, never a wrong expiry.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Set


def expiresAtIn(table: Mapping[Any, Any]) -> Callable[[Any], Optional[float]]:
    """
    The C{deadlineOf} of a wheel over objects with an C{expiresAt}, held in
    C{table} by their key (gone from it once ended).
    """

    def deadlineOf(key: Any) -> Optional[float]:
        found = table.get(key)
        return None if found is None else found.expiresAt

    return deadlineOf


class ExpiryWheel:
    """
    Call C{expired(keys)} with the keys whose deadline has passed, at most
    C{resolution} seconds late and never early.

    The owner keeps each key's deadline, answers C{deadlineOf(key)} with it
    (or L{None} once the key has none), calls L{set} whenever it gives a
    key a deadline and L{discard} with the old one when it moves or ends
    it.  C{expired} must end the keys it is given or give them a new
    deadline (L{set}).
    """

    def __init__(
        self,
        clock: Any,
        expired: Callable[[List[Hashable]], None],
        deadlineOf: Callable[[Any], Optional[float]],
        resolution: float = 0.5,
    ) -> None:
        self.clock = clock
        self.expired = expired
        self.deadlineOf = deadlineOf
        self.resolution = resolution
        self._buckets: Dict[int, Set[Hashable]] = {}
        self._heap: List[int] = []  # bucket numbers, stale ones skipped lazily
        self._call: Optional[Any] = None
        self._callBucket: Optional[int] = None

    def _bucketOf(self, deadline: float) -> int:
        return int(math.ceil(deadline / self.resolution))

    def set(self, key: Hashable, deadline: float) -> None:
        """
        Expire C{key} at C{deadline}, which C{deadlineOf(key)} answers from
        now on; an earlier deadline of C{key} no longer counts.
        """
        bucket = self._bucketOf(deadline)
        keys = self._buckets.get(bucket)
        if keys is None:
            self._buckets[bucket] = {key}
            heapq.heappush(self._heap, bucket)
        else:
            keys.add(key)
        if self._callBucket is None or bucket < self._callBucket:
            self._schedule(bucket)

    def discard(self, key: Hashable, deadline: float) -> None:
        """
        Take C{key} out of the bucket of C{deadline}, the deadline it was
        last given.  Without it the key would stay there until that
        deadline (to be dropped then): a subscription refreshed every
        minute with an hour's expiry would leave sixty entries behind.
        """
        bucket = self._bucketOf(deadline)
        keys = self._buckets.get(bucket)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._buckets[bucket]

    def _schedule(self, bucket: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        delay = max(0.0, bucket * self.resolution - self.clock.seconds())
        self._callBucket = bucket
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._callBucket = None
        now = self.clock.seconds()
        due: Dict[Hashable, None] = {}
        heap = self._heap
        deadlineOf = self.deadlineOf
        while heap and heap[0] * self.resolution <= now:
            keys = self._buckets.pop(heapq.heappop(heap), None)
            if keys:
                for key in keys:
                    deadline = deadlineOf(key)
                    # Later deadlines are in later buckets too.
                    if deadline is not None and deadline <= now:
                        due[key] = None
        while heap and heap[0] not in self._buckets:
            heapq.heappop(heap)
        if heap:
            self._schedule(heap[0])
        if due:
            self.expired(list(due))

    def stop(self) -> None:
        """
        Cancel the pending call; the buckets are kept (for a restart).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._callBucket = None
