"""
What one latency observation costs on the hot path: the transaction
layer's hook on every final response to SUBSCRIBE, PUBLISH and REGISTER
(look the method up, read the clock, observe), L{LatencyHistogram.observe}
alone, and C{prometheus_client}'s C{Histogram.observe} with the same
buckets for comparison (why L{presence.latency} exists).

The machine this runs on is usually shared: each case is timed
C{--repeat} times and the best run reported, the median beside it.

Run from the repository root::

    python3 bench/latency_bench.py
    pypy3 bench/latency_bench.py --number 2000000   # PyPy needs more warm-up
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from presence.latency import ANSWER_BUCKETS, LatencyHistogram  # noqa: E402
from presence.sip.transaction import TIMED_METHODS  # noqa: E402

# Durations spread over the buckets, as real answers are.
SAMPLES = [0.0003, 0.0012, 0.004, 0.02, 0.08, 0.3, 0.0007, 0.002]


def cases() -> Dict[str, Callable[[int], None]]:
    histogram = LatencyHistogram()
    answerTimes = {method: LatencyHistogram() for method in TIMED_METHODS}
    clock = time.time
    started = clock()

    def observe(n: int) -> None:
        samples = SAMPLES
        for i in range(n):
            histogram.observe(samples[i & 7])

    def hook(n: int) -> None:
        # What TransactionLayer._serverCompleted adds per final response.
        for _ in range(n):
            timed = answerTimes.get("SUBSCRIBE")
            if timed is not None:
                timed.observe(clock() - started)

    result = {"LatencyHistogram.observe": observe, "transaction-layer hook": hook}
    try:
        from prometheus_client import CollectorRegistry, Histogram
    except ImportError:
        return result
    theirs = Histogram("bench_seconds", "bench", buckets=ANSWER_BUCKETS, registry=CollectorRegistry())

    def prometheusObserve(n: int) -> None:
        samples = SAMPLES
        for i in range(n):
            theirs.observe(samples[i & 7])

    def emptyLoop(n: int) -> None:
        samples = SAMPLES
        for i in range(n):
            samples[i & 7]

    result["prometheus_client Histogram.observe"] = prometheusObserve
    result["(empty loop)"] = emptyLoop
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=500000, help="observations per run")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print("%s %s" % (platform.python_implementation(), platform.python_version()))
    for name, run in cases().items():
        run(args.number // 10)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run(args.number)
            times.append((time.perf_counter() - start) / args.number * 1e9)
        print("%-38s best %6.0f ns  median %6.0f ns" % (name, min(times), statistics.median(times)))


if __name__ == "__main__":
    main()
