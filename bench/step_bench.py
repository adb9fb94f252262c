"""
Step benchmark of one C{twistd -n presence} process kept running through
every phase: SUBSCRIBE and PUBLISH at rising rates until a step fails,
fan-out, then an overload of 2x and 4x the SUBSCRIBE capacity followed by
a recovery step at half of it.

Why: a presence server meets its worst load when a site comes back and
every phone subscribes again at once; it must keep serving at its full
rate then, and be back to normal as soon as the burst ends.  Only one
server carrying the state of every earlier phase (its subscriptions,
their NOTIFY transactions, the store's queue) shows whether it recovers:
a fresh server per step would hide a collapse.

Phases (sipp scenarios in C{bench/sipp/}, UDP, SQLite, authentication off
for the domain):

C{subscribe}
    C{subscribe.xml} (SUBSCRIBE -> 200 -> NOTIFY -> 200, a new
    presentity and watcher per call, Expires 3600) at C{--subscribe-rates},
    C{--duration} seconds each, until a step fails (1% failed calls or
    less than 90% of the offered rate achieved).  The best passing
    achieved rate is the capacity of the overload phase.
C{publish}
    C{publish.xml} (an initial PUBLISH with a PIDF body) likewise.
C{fanout}
    C{--presentities} x C{--watchers} subscriptions (C{watcher.xml}, which
    answers every NOTIFY), then C{publish_watched3.xml} (three PUBLISHes a
    call: initial, modification, removal; C{notify_min_interval = 0}, so
    three NOTIFYs per watcher and call) at C{--fanout-rates} calls/s.
    The watchers stay subscribed through the phases after it.
C{overload}
    SUBSCRIBE at 2x then 4x the capacity for C{--overload-duration}
    seconds each, then C{--duration} seconds at 0.5x (recovery: its
    failures after the first 5 s are reported apart), then one fan-out
    step at the lowest fan-out rate: every NOTIFY delivered means every
    watcher's subscription survived the overload.

Per step: offered and achieved rate, failed %, response time p50/p99
(rtd 1), sipp retransmissions, server CPU% (one core = 100), the kernel's
UDP receive-buffer drops (machine-wide C{RcvbufErrors}) and the load
average before the step (the machine is shared: say so with the figures).

The rising steps warm PyPy's JIT up before the overload.  Before the
server starts, its port is checked free; once it is ready, the
pid measured is checked to hold that port (a server that cannot bind
exits, and the run stops).

Run from the repository root::

    python bench/step_bench.py --json /tmp/steps-cpython.json
    PYPY_GC_NURSERY=16MB PYPY_GC_MAJOR_COLLECT=1.25 \
        python bench/step_bench.py --python /opt/presence-pypy/bin/python --json /tmp/steps-pypy.json
    python bench/step_bench.py --subscribe-rates 500,1000 --publish-rates 500 --fanout-rates 20 \\
        --overload-duration 10 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadtools import (  # noqa: E402
    CPUMeter,
    Database,
    Server,
    SippRun,
    freeUDPPort,
    holdsUDPPort,
    loadAverage,
    log,
    memoryOf,
    stopOnSignals,
    treeState,
    udpDrops,
    udpSocketsBound,
)
from bench.presence_bench import HOST, NO_AUTH, Bench, startWatchers  # noqa: E402


def _rates(text: str) -> List[float]:
    return [float(r) for r in text.split(",") if r]


class StepBench:
    """
    Runs the phases against one server and collects each step's figures.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.root = tempfile.mkdtemp(prefix="presence-steps-")
        self.steps: List[Dict[str, Any]] = []
        self.commands: Dict[str, List[str]] = {}
        self.tree = treeState()
        self.server: Optional[Server] = None
        self.watchersMark = 0
        # The fan-out steps are presence_bench's, on this server.
        self.fanout = Bench(options)
        shutil.rmtree(self.fanout.root, ignore_errors=True)
        self.fanout.root = self.root

    def startServer(self) -> Server:
        port = freeUDPPort(HOST)
        if udpSocketsBound(port):
            raise SystemExit("UDP port %d is taken" % (port,))
        workdir = os.path.join(self.root, "server")
        os.makedirs(workdir)
        database = Database("sqlite", workdir)
        config = "[manager]\nnotify_min_interval = 0\n" + NO_AUTH
        server = Server(workdir, database.create(), python=self.options.python, host=HOST, port=port, config=config)
        self.commands["server"] = server.command()
        server.start()
        if server.process is None or server.process.poll() is not None or not holdsUDPPort(server.pid, port):
            raise SystemExit("the server process %s does not hold UDP port %d:\n%s" % (server.pid, port, server.tail()))
        self.server = server
        return server

    def step(
        self, phase: str, scenario: str, rate: float, duration: float, limitSeconds: float = 3.0
    ) -> Dict[str, Any]:
        """
        One sipp run of C{scenario} at C{rate} calls/s for C{duration}
        seconds, measured.
        """
        server = self.server
        assert server is not None
        sipp = SippRun(
            scenario, (HOST, server.port), rate, int(rate * duration), timeout=duration * 2 + 20,
            service="%s%dx" % (phase[:3], rate), limit=max(200, int(rate * limitSeconds)),
        )
        self.commands.setdefault(phase, sipp.command)
        load = loadAverage()
        drops = udpDrops()["RcvbufErrors"]
        meter = CPUMeter(server.pid).start()
        try:
            sipp.start()
            sipp.wait()
            cpu = meter.stop()
            summary = sipp.summary()
            rows = sipp.statRows()
        finally:
            sipp.cleanup()
        result: Dict[str, Any] = {"phase": phase, "offered": rate}
        result.update(summary)
        rtd = summary.get("rtd1", {})
        result.update(
            p50ms=rtd.get("p50"), p99ms=rtd.get("p99"),
            serverCpuPercent=cpu["cpuPercent"], hostBusyPercent=cpu["hostBusyPercent"],
            kernelDrops=udpDrops()["RcvbufErrors"] - drops, loadAverageBefore=load,
            serverRssKiB=memoryOf(server.pid).get("VmRSS"), perSecond=_perSecond(rows),
        )
        failed = summary.get("failedPercent")
        result["passed"] = bool(
            summary.get("calls") and failed is not None and failed < 1.0 and summary["achievedRate"] >= 0.9 * rate
        )
        self._print(result)
        self.steps.append(result)
        return result

    def rising(self, phase: str, scenario: str, rates: List[float]) -> float:
        """
        Steps at C{rates} until one fails; the best achieved rate of a
        passing step (0 when none passed).
        """
        best = 0.0
        for rate in rates:
            result = self.step(phase, scenario, rate, self.options.duration)
            if not result["passed"]:
                break
            best = max(best, result["achievedRate"])
            time.sleep(2.0)
        return best

    def fanoutPhase(self, watchers: Any, publishFile: str, rates: List[float], phase: str = "fanout") -> None:
        server = self.server
        assert server is not None
        for rate in rates:
            r = self.fanout.watchersStep(
                "sqlite", rate, server, watchers, publishFile, phase, "publish_watched3.xml", 3
            )
            r.update(phase=phase, offered=rate, p50ms=r.get("rtd1", {}).get("p50"), p99ms=r.get("rtd1", {}).get("p99"))
            # A watcher's subscription ends only on a failed NOTIFY, which
            # the server logs ("NOTIFY to sip:waN@... failed"); the count
            # of NOTIFYs delivered cannot tell, some are coalesced while
            # one to the same watcher is in flight (RFC 6665 §4.2.2).
            r["watcherNotifyFailures"] = server.count("NOTIFY to sip:wa", self.watchersMark)
            r["dialogsKept"] = r["watcherNotifyFailures"] == 0
            log("%-9s offered=%-6g publish/s=%s NOTIFY/s=%s (%d of %d offered) failed=%s%% load=%.2f %s%s" % (
                phase, rate, r["publishPerSecond"], r["notifiesPerSecond"], r["notifiesDelivered"],
                r["notifiesOffered"], r["failedPercent"], r["loadAverageBefore"], "PASS" if r["passed"] else "FAIL",
                "" if r["dialogsKept"] else " (%d NOTIFYs to watchers failed)" % (r["watcherNotifyFailures"],)))
            self.steps.append(r)
            if not r["passed"]:
                break

    def run(self) -> None:
        options = self.options
        self.startServer()
        capacity = options.capacity or self.rising("subscribe", "subscribe.xml", _rates(options.subscribe_rates))
        if options.publish_rates:
            self.rising("publish", "publish.xml", _rates(options.publish_rates))
        watchers = None
        assert self.server is not None
        self.watchersMark = self.server.mark()
        try:
            watchers, publishFile = startWatchers(
                self.server, self.root, options.presentities, options.watchers, options.setup_rate, 3600
            )
            self.commands["fanout-setup"] = watchers.command
            fanoutRates = _rates(options.fanout_rates)
            self.fanoutPhase(watchers, publishFile, fanoutRates)
            if not capacity:
                log("no SUBSCRIBE step passed: no capacity to overload")
                return
            log("=== overload: SUBSCRIBE capacity %.0f/s" % (capacity,))
            for factor in (2, 4):
                # sipp holds a call until its 5 s receive timeout: room for all.
                self.step("overload%dx" % (factor,), "subscribe.xml", factor * capacity,
                          options.overload_duration, limitSeconds=7.0)
            recovery = self.step("recovery", "subscribe.xml", 0.5 * capacity, options.duration)
            recovery["failedPercentAfter5s"] = _failedAfter(recovery["perSecond"], 5)
            log("recovery: %s%% failed after its first 5 s" % (recovery["failedPercentAfter5s"],))
            self.fanoutPhase(watchers, publishFile, fanoutRates[:1], "fanout-after")
        finally:
            if watchers is not None:
                watchers.stop()
                watchers.cleanup()

    def _print(self, r: Dict[str, Any]) -> None:
        log("%-11s offered=%-7g achieved=%-7s failed=%s%% p50=%sms p99=%sms retrans=%s server=%s%% "
            "drops=%s load=%.2f %s" % (
                r["phase"], r["offered"], r["achievedRate"], r["failedPercent"], r["p50ms"], r["p99ms"],
                r["retransmissions"], r["serverCpuPercent"], r["kernelDrops"], r["loadAverageBefore"],
                "PASS" if r["passed"] else "FAIL"))
        for error in r.get("errors", [])[:3]:
            log("    sipp: " + error)

    def report(self) -> Dict[str, Any]:
        return {
            "python": self.options.python,
            "settings": {k: v for k, v in vars(self.options).items() if k != "json"},
            "tree": {"before": self.tree, "after": treeState()},
            "commands": self.commands,
            "steps": self.steps,
        }

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _perSecond(rows: List[Dict[str, str]]) -> List[Dict[str, float]]:
    """
    Seconds since sipp started, successful and failed calls of each
    periodic row of its C{-trace_stat} file (one a second, C{-fd 1}).
    """
    result = []
    for row in rows:
        try:
            h, m, sec = re.split(r"[:.]", row.get("ElapsedTime(C)") or "")[:3]
            result.append({
                "at": int(h) * 3600 + int(m) * 60 + int(sec),
                "ok": int(row.get("SuccessfulCall(P)") or 0),
                "failed": int(row.get("FailedCall(P)") or 0),
            })
        except ValueError:
            continue
    return result


def _failedAfter(perSecond: List[Dict[str, float]], seconds: float) -> Optional[float]:
    """
    The failed % of the calls that ended after sipp's first C{seconds}.
    """
    rows = [r for r in perSecond if r["at"] > seconds]
    ok = sum(r["ok"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    return round(100.0 * failed / (ok + failed), 2) if ok + failed else None


def printTable(steps: List[Dict[str, Any]]) -> None:
    print("%-12s %8s %9s %8s %6s %6s %8s %7s %7s %6s" % (
        "step", "offered", "achieved", "failed%", "p50ms", "p99ms", "retrans", "server%", "drops", "load"))
    for r in steps:
        achieved = r.get("notifiesPerSecond") if r["phase"].startswith("fanout") else r["achievedRate"]
        print("%-12s %8g %9s %8s %6s %6s %8s %7s %7s %6.2f" % (
            r["phase"], r["offered"], achieved, r["failedPercent"], r.get("p50ms"), r.get("p99ms"),
            r.get("retransmissions"), r.get("serverCpuPercent"), r.get("kernelDrops", ""), r["loadAverageBefore"]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter running the server (e.g. pypy3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rising and recovery step")
    parser.add_argument("--overload-duration", type=float, default=30.0, help="seconds of each overload step")
    parser.add_argument("--subscribe-rates", default="250,500,1000,1500,2000,3000,4000,6000,8000")
    parser.add_argument("--publish-rates", default="250,500,1000,2000,3000,4000,6000,8000",
                        help="empty: no PUBLISH phase")
    parser.add_argument("--fanout-rates", default="20,50,100,200,400,600,1000", help="publisher calls/s")
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="SUBSCRIBE/s the overload phase multiplies; 0: measured by the subscribe phase")
    parser.add_argument("--presentities", type=int, default=100)
    parser.add_argument("--watchers", type=int, default=10, help="watchers per presentity")
    parser.add_argument("--setup-rate", type=float, default=500.0, help="SUBSCRIBE/s of the fan-out setup")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    options = parser.parse_args(argv)
    # What presence_bench's fan-out step reads from its options.
    options.profile = None
    options.notify_min_interval = 0.0
    stopOnSignals()
    bench = StepBench(options)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        bench.cleanup()
    printTable(bench.steps)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(bench.report(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
