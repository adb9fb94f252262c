"""
Latency histograms kept by the parts that time their work (the SIP
transaction layer, the store's writer, the notifier), read by the metrics
endpoint at scrape time.

Why not C{prometheus_client.Histogram}: an observation sits on the hot
path (every answered SUBSCRIBE and PUBLISH, every NOTIFY, every commit),
and that class takes a lock and walks its buckets for each one.  Here
everything runs on the reactor thread, so an observation is one bisection
and two additions (see README "Metrics" for the measured cost), and the
sans-IO parts keep plain numbers without depending on a metrics library;
L{presence.admin.collectors} turns them into Prometheus histograms.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import List, Sequence, Tuple

#: Upper bounds (seconds) for answer times and commits: half a millisecond
#: (an answer from memory) to ten seconds (a database in trouble).
ANSWER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Upper bounds for a change to reach a watcher, which rate control
#: (C{[manager] notify_min_interval}) and a held NOTIFY may delay by
#: seconds.
NOTIFY_BUCKETS = ANSWER_BUCKETS + (30.0, 60.0)


class LatencyHistogram:
    """
    Counts of observed durations per bucket, and their sum.

    @ivar bounds: the buckets' upper bounds, increasing; a value equal to
        a bound falls in that bucket (Prometheus's C{le}).
    @ivar counts: observations per bucket, not cumulative; the last entry
        counts those above every bound.
    @ivar sum: the sum of the observed durations.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = ANSWER_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must increase: %r" % (bounds,))
        self.bounds: Tuple[float, ...] = tuple(float(b) for b in bounds)
        self.counts: List[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one duration; a negative one (a clock stepped back) as 0.
        """
        if seconds < 0.0:
            seconds = 0.0
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> List[Tuple[float, int]]:
        """
        C{(upper bound, observations at or below it)} per bucket, ending
        with C{(inf, count)}: the form Prometheus exposes.
        """
        result = []
        total = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            result.append((bound, total))
        return result
