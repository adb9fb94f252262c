"""
Deadlines for many objects at once, with one delayed call.

A manager holds 100,000 subscriptions and as many publications, each with
an expiry.  One C{callLater} each would fill the reactor's heap and make
every refresh a cancel and a re-insert; instead deadlines go into buckets of
C{resolution} seconds and a single delayed call fires the earliest bucket.
A refresh only moves a key between two dict entries.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Dict, Hashable, List, Optional, Set


class ExpiryWheel:
    """
    Call C{expired(keys)} with the keys whose deadline has passed, at most
    C{resolution} seconds late and never early.

    @ivar deadlines: key to its deadline (seconds, the clock's time).
    """

    def __init__(
        self,
        clock: Any,
        expired: Callable[[List[Hashable]], None],
        resolution: float = 0.5,
    ) -> None:
        self.clock = clock
        self.expired = expired
        self.resolution = resolution
        self.deadlines: Dict[Hashable, float] = {}
        self._buckets: Dict[int, Set[Hashable]] = {}
        self._heap: List[int] = []  # bucket numbers, stale ones skipped lazily
        self._call: Optional[Any] = None
        self._callBucket: Optional[int] = None

    def __len__(self) -> int:
        return len(self.deadlines)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.deadlines

    def _bucketOf(self, deadline: float) -> int:
        return int(math.ceil(deadline / self.resolution))

    def set(self, key: Hashable, deadline: float) -> None:
        """
        Expire C{key} at C{deadline}, replacing any earlier deadline.
        """
        self.discard(key)
        bucket = self._bucketOf(deadline)
        self.deadlines[key] = deadline
        keys = self._buckets.get(bucket)
        if keys is None:
            self._buckets[bucket] = {key}
            heapq.heappush(self._heap, bucket)
        else:
            keys.add(key)
        if self._callBucket is None or bucket < self._callBucket:
            self._schedule(bucket)

    def discard(self, key: Hashable) -> None:
        """
        Forget C{key}; nothing happens if it has no deadline.
        """
        deadline = self.deadlines.pop(key, None)
        if deadline is None:
            return
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
        due: List[Hashable] = []
        heap = self._heap
        while heap and heap[0] * self.resolution <= now:
            keys = self._buckets.pop(heapq.heappop(heap), None)
            if keys:
                for key in keys:
                    del self.deadlines[key]
                due.extend(keys)
        while heap and heap[0] not in self._buckets:
            heapq.heappop(heap)
        if heap:
            self._schedule(heap[0])
        if due:
            self.expired(due)

    def stop(self) -> None:
        """
        Cancel the pending call; the deadlines are kept (for a restart).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._callBucket = None
