"""
Throughput of the SIP codec on one core: how many typical presence
messages per second L{presence.sip.parser.parseMessage} parses and
L{presence.sip.message.Message.toBytes} serialises.

Why: the codec runs on the reactor thread for every datagram, so its cost
bounds what one process can serve.  Targets on CPython 3.11: 50,000 parses
and 100,000 serialisations a second of the sample SUBSCRIBE and NOTIFY.

The machine this runs on is usually shared, so every measurement is taken
C{--repeat} times and the best run is reported (the least disturbed one);
the median is shown beside it as a hint of the noise.  The process runs a
single thread; C{--cpu} pins it to one CPU.

Run from the repository root::

    python3 bench/codec_bench.py            # a table
    python3 bench/codec_bench.py --json     # one JSON object
    pypy3 bench/codec_bench.py --seconds 2  # PyPy needs more warm-up
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.samples import NOTIFY, SUBSCRIBE  # noqa: E402
from presence.sip.message import Message, Request, Response  # noqa: E402
from presence.sip.parser import parseMessage  # noqa: E402

PARSE_TARGET = 50000
SERIALISE_TARGET = 100000

IS_PYPY = platform.python_implementation() == "PyPy"


def serverAccess(message: Message) -> None:
    """
    The structured reads a server makes of every request it handles:
    transaction key, dialog identifiers, event package and expiry.
    """
    message.topVia()
    message.cseq()
    message.fromAddr()
    message.toAddr()
    message.header("event")
    message.header("expires")


def makeCases() -> Dict[str, Callable[[], object]]:
    """
    The operations measured, by name.  Each is a closure over its input so
    that the timing loop does nothing but call it.
    """
    subscribe = parseMessage(SUBSCRIBE)
    notify = parseMessage(NOTIFY)
    assert isinstance(subscribe, Request)

    def parseSubscribe() -> object:
        return parseMessage(SUBSCRIBE)

    def parseNotify() -> object:
        return parseMessage(NOTIFY)

    def serialiseSubscribe() -> object:
        return subscribe.toBytes()

    def serialiseNotify() -> object:
        return notify.toBytes()

    def accessSubscribe() -> object:
        message = parseMessage(SUBSCRIBE)
        serverAccess(message)
        return message

    def accessNotify() -> object:
        message = parseMessage(NOTIFY)
        serverAccess(message)
        return message

    def answerSubscribe() -> object:
        response = Response.forRequest(subscribe, 200, toTag="a6c85cf")
        response.addHeader("Expires", "3600")
        response.addHeader("Contact", "<sip:presence@192.0.2.1:5060>")
        return response.toBytes()

    return {
        "parse SUBSCRIBE": parseSubscribe,
        "parse NOTIFY": parseNotify,
        "serialise SUBSCRIBE": serialiseSubscribe,
        "serialise NOTIFY": serialiseNotify,
        "parse+access SUBSCRIBE": accessSubscribe,
        "parse+access NOTIFY": accessNotify,
        "200 OK for SUBSCRIBE": answerSubscribe,
    }


TARGETS = {
    "parse SUBSCRIBE": PARSE_TARGET,
    "parse NOTIFY": PARSE_TARGET,
    "serialise SUBSCRIBE": SERIALISE_TARGET,
    "serialise NOTIFY": SERIALISE_TARGET,
}


def calibrate(func: Callable[[], object], seconds: float) -> int:
    """
    How many calls take about C{seconds}.
    """
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            func()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or loops >= 1 << 30:
            return max(1, int(loops * seconds / max(elapsed, 1e-9)))
        loops *= 4


def measure(func: Callable[[], object], loops: int) -> float:
    """
    Calls per second over one run of C{loops} calls.
    """
    start = time.perf_counter()
    for _ in range(loops):
        func()
    return loops / (time.perf_counter() - start)


def run(seconds: float, repeat: int, warmup: float, only: Optional[List[str]]) -> Dict[str, object]:
    """
    Measure every case: warm up, then C{repeat} runs of C{seconds / repeat}
    each.

    @return: the results, ready for JSON.
    """
    cases = makeCases()
    results = []
    for name, func in cases.items():
        if only and not any(word.lower() in name.lower() for word in only):
            continue
        deadline = time.perf_counter() + warmup
        while time.perf_counter() < deadline:
            for _ in range(100):
                func()
        loops = calibrate(func, seconds / repeat)
        rates = [measure(func, loops) for _ in range(repeat)]
        best = max(rates)
        target = TARGETS.get(name)
        results.append(
            {
                "name": name,
                "best": best,
                "median": statistics.median(rates),
                "runs": rates,
                "usPerOp": 1e6 / best,
                "target": target,
                "meetsTarget": None if target is None else best >= target,
            }
        )
    return {
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
        "machine": platform.machine(),
        "seconds": seconds,
        "repeat": repeat,
        "results": results,
    }


def formatTable(report: Dict[str, object]) -> str:
    """
    The report as a plain-text table.
    """
    lines = [
        "%s %s on %s: best of %d runs, %.2fs per case"
        % (
            report["implementation"],
            report["version"],
            report["machine"],
            report["repeat"],
            report["seconds"],
        ),
        "",
        "%-24s %12s %12s %8s %10s  %s" % ("case", "best ops/s", "median", "us/op", "target", ""),
        "-" * 76,
    ]
    for result in report["results"]:  # type: ignore[attr-defined]
        target = result["target"]
        if target is None:
            targetText, verdict = "", ""
        else:
            targetText = _thousands(target)
            verdict = "ok" if result["meetsTarget"] else "MISSED"
        lines.append(
            "%-24s %12s %12s %8.2f %10s  %s"
            % (
                result["name"],
                _thousands(result["best"]),
                _thousands(result["median"]),
                result["usPerOp"],
                targetText,
                verdict,
            )
        )
    return "\n".join(lines)


def _thousands(value: float) -> str:
    return "{:,.0f}".format(value)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="measuring time per case (default 1.0)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per case; the best is reported (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="warm-up seconds per case (default 0.2 on CPython, 2.0 on PyPy for its JIT)",
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only cases whose name contains a word"
    )
    options = parser.parse_args(argv)
    if options.repeat < 1 or options.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds positive")
    if options.cpu is not None:
        if not hasattr(os, "sched_setaffinity"):
            parser.error("--cpu needs os.sched_setaffinity (Linux)")
        os.sched_setaffinity(0, {options.cpu})
    warmup = options.warmup if options.warmup is not None else (2.0 if IS_PYPY else 0.2)
    report = run(options.seconds, options.repeat, warmup, options.only)
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print(formatTable(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
