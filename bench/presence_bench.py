"""
Load benchmark of one C{twistd -n presence} process (the all-in-one role:
one dispatcher-less SIP core and one subscription manager) under real sipp
traffic on loopback, on SQLite and on PostgreSQL.

Why: the targets of one manager process on a 2-core machine are 3,000
SUBSCRIBE/s, 5,000 PUBLISH/s without watchers and 5,000 NOTIFY/s delivered
(Kamailio: about 15k/15k/40k).  Only a real process behind a real socket
shows what the parser, transactions, store group commit and NOTIFY
generation cost together.

Workloads (scenarios in C{bench/sipp/}):

C{subscribe}
    C{subscribe.xml}: one call = SUBSCRIBE -> 200 -> initial NOTIFY -> 200,
    a new presentity and watcher per call (every call is a new user for
    billing: its answers come from memory all the same).
C{subscribe-warm}
    C{subscribe_pool.xml}: the same exchange for C{--pool} (presentity,
    watcher) pairs taken in turn from an injection file (the same users
    again after the first pass).
C{publish}
    C{publish.xml}: one call = an initial PUBLISH (PIDF) -> 200 for a
    presentity nobody watches, a new presentity per call.
C{watchers}
    Setup: C{--presentities} presentities with C{--watchers} watchers each,
    subscribed by C{watcher.xml} (one sipp, one call per watcher, Expires
    7200), whose calls then answer every NOTIFY with 200.  Load:
    C{publish_watched.xml}, one call = PUBLISH (initial) -> 200, then
    PUBLISH SIP-If-Match Expires 0 (removal) -> 200: two changes of state,
    so up to 2 x watchers NOTIFYs per call.  NOTIFYs delivered are counted
    on the watcher side: the C{4_NOTIFY_Recv} column of sipp's
    C{-trace_counts} file, NOTIFYs received and answered after the initial
    one.  The server's rate control is set by C{--notify-min-interval}
    (default 0: every change is sent, except those coalesced while a
    NOTIFY to the same watcher is in flight, RFC 6665 §4.2.2).

For each workload and database the sipp rate (C{-r}) steps up through
C{--rates}; each step runs C{--duration} seconds (C{-m rate*duration}) on a
fresh server and database (the watchers workload keeps one server and its
watchers across its steps).  A step passes with less than 1% failed calls
(a call fails on a missing answer within 5 s, C{-recv_timeout}) and an
achieved rate of at least 90% of the offered one; stepping stops at the
first failed step unless C{--keep-going}.  Reported per step: calls,
failures, achieved rate, response-time p50/p99 from sipp's C{-trace_rtt}
(millisecond resolution), server CPU% (of one core; threads included) and
the whole machine's busy% (the machine is shared: sipp and PostgreSQL run
on the same two cores).

Run from the repository root::

    python bench/presence_bench.py --database both --duration 15 --json out.json
    python bench/presence_bench.py --workloads subscribe --rates 500,1000,2000
    python bench/presence_bench.py --workloads publish --rates 1000 --profile /tmp/prof
    python bench/presence_bench.py --python /opt/presence-pypy/bin/python --warmup 8 \
        --pg-url postgresql+pg8000://postgres@127.0.0.1:5432/test --database both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.experiments import EXPERIMENTS  # noqa: E402
from bench.loadtools import (  # noqa: E402
    DEFAULT_PG_URL,
    CPUMeter,
    Database,
    Server,
    SippRun,
    loadAverage,
    log,
    memoryOf,
    postgresAvailable,
    sippPath,
    startProfiler,
    stopOnSignals,
    summariseProfile,
    treeState,
    writeInjection,
)

TARGETS = {"subscribe": 3000, "subscribe-warm": 3000, "publish": 5000, "watchers": 5000}
DEFAULT_RATES = {
    "subscribe": [100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000],
    "subscribe-warm": [250, 500, 750, 1000, 1500, 2000, 3000],
    "publish": [250, 500, 750, 1000, 1500, 2000, 3000, 5000],
    # Publisher calls a second; each call is 2 PUBLISHes, 20 NOTIFYs offered.
    "watchers": [25, 50, 100, 150, 200, 250, 400],
}
HOST = "127.0.0.1"
# sipp sends no credentials: the benchmark domain is one without digest
# authentication (a trusted network); SUBSCRIBE and PUBLISH still go
# through the billing gate (account standing) but are never challenged.
NO_AUTH = "[billing]\nno_auth_domains = example.test\n"


class Bench:
    """
    Runs the steps of every workload on every database asked for, and
    collects their figures.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.results: List[Dict[str, Any]] = []
        self.commands: Dict[str, List[str]] = {}
        self.root = tempfile.mkdtemp(prefix="presence-bench-")
        self.tree = treeState()

    def rates(self, workload: str) -> List[float]:
        if self.options.rates:
            return [float(r) for r in self.options.rates.split(",") if r]
        return [float(r) for r in DEFAULT_RATES[workload]]

    def config(self, workload: str) -> str:
        interval = self.options.notify_min_interval if workload == "watchers" else 1.0
        return "[manager]\nnotify_min_interval = %s\n%s" % (interval, NO_AUTH)

    def newServer(self, workload: str, database: Database, tag: str) -> Server:
        workdir = os.path.join(self.root, tag)
        os.makedirs(workdir, exist_ok=True)
        database.workdir = workdir
        url = database.create()
        server = Server(
            workdir, url, python=self.options.python, host=HOST, config=self.config(workload),
            experiments=[e for e in self.options.experiment.split(",") if e],
        )
        self.commands.setdefault("server", server.command())
        return server

    # One step of the subscribe or publish workload.

    def simpleStep(self, workload: str, kind: str, rate: float) -> Dict[str, Any]:
        duration = self.options.duration
        tag = "%s-%s-%d" % (workload, kind, rate)
        database = Database(kind, self.root, self.options.pg_url)
        server = self.newServer(workload, database, tag)
        sipp: Optional[SippRun] = None
        profiler = None
        result: Optional[Dict[str, Any]] = None
        try:
            readySeconds = server.start()
            calls = int(rate * duration)
            scenario, injection = "%s.xml" % (workload,), None
            if workload == "subscribe-warm":
                scenario = "subscribe_pool.xml"
                pool = self.options.pool
                injection = writeInjection(
                    os.path.join(self.root, tag, "pairs.csv"),
                    [("pp%d" % (i,), "pw%d" % (i,)) for i in range(pool)],
                )
            self._warmUp(server, scenario, rate, injection, workload)
            sipp = SippRun(
                scenario,
                (HOST, server.port),
                rate,
                calls,
                timeout=duration * 2 + 20,
                service="%s%dx" % (workload[:3], rate),
                injection=injection,
                limit=max(200, int(rate * 3)),
            )
            self.commands.setdefault(workload, sipp.command)
            load = loadAverage()
            meter = CPUMeter(server.pid).start()
            sipp.start()
            profiler = self._profile(server, tag, duration)
            sipp.wait()
            cpu = meter.stop()
            result = self._result(workload, kind, rate, sipp.summary(), cpu, load)
            result["serverReadySeconds"] = round(readySeconds, 2)
            result["serverRssKiB"] = memoryOf(server.pid).get("VmRSS")
            self._profileDone(profiler, tag, result)
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
                profiler.wait()
            if sipp is not None:
                sipp.cleanup()
            server.stop()
            database.drop()
            if result is not None:
                # Group commit at work: writes per committed transaction.
                m = server.find(r"stopped after (\d+) batches, (\d+) commits")
                if m:
                    result["storeBatches"] = int(m.group(1))
                    result["callsPerBatch"] = round(result["successful"] / max(1, int(m.group(1))), 2)
        assert result is not None
        return result

    def _warmUp(
        self, server: Server, scenario: str, rate: float, injection: Optional[str], workload: str
    ) -> None:
        """
        Run the step's own load for C{--warmup} seconds on the fresh
        server before measuring (other user names, unmeasured): PyPy's JIT
        compiles the hot path in the first seconds, and a long-running
        server is measured in its steady state, not while it compiles.
        """
        seconds = self.options.warmup
        if seconds <= 0:
            return
        warm = SippRun(
            scenario,
            (HOST, server.port),
            rate,
            int(rate * seconds),
            timeout=seconds * 2 + 20,
            service="%swarm%dx" % (workload[:3], rate),
            injection=injection,
            limit=max(200, int(rate * 3)),
        )
        try:
            warm.start()
            warm.wait()
        finally:
            warm.cleanup()
        # Let the warm-up's last transactions finish.
        time.sleep(2.0)

    def _profile(self, server: Server, tag: str, duration: float) -> Optional[subprocess.Popen]:
        if not self.options.profile:
            return None
        os.makedirs(self.options.profile, exist_ok=True)
        # Skip the first second (sipp warming up), stop before the tail.
        time.sleep(1.0)
        return startProfiler(
            server.pid, max(1, duration - 2), os.path.join(self.options.profile, tag + ".txt")
        )

    def _profileDone(self, profiler: Optional[subprocess.Popen], tag: str, result: Dict[str, Any]) -> None:
        if profiler is None:
            return
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
        path = os.path.join(self.options.profile, tag + ".txt")
        if os.path.exists(path):
            result["profile"] = {"file": path, "main": summariseProfile(path, 20, "MainThread")}

    def _result(
        self, workload: str, kind: str, rate: float, summary: Dict[str, Any], cpu: Dict[str, float], load: float
    ) -> Dict[str, Any]:
        result: Dict[str, Any] = {"workload": workload, "database": kind, "rate": rate}
        result.update(summary)
        result["serverCpuPercent"] = cpu["cpuPercent"]
        # Server CPU per successful call: steadier than rates on a shared machine.
        ok = summary.get("successful") or 0
        result["serverCpuMsPerCall"] = (
            round(cpu["cpuPercent"] * 10.0 * cpu["seconds"] / ok, 3) if ok else None
        )
        result["hostBusyPercent"] = cpu["hostBusyPercent"]
        result["loadAverageBefore"] = load
        failed = summary.get("failedPercent")
        result["passed"] = bool(
            summary.get("calls")
            and failed is not None
            and failed < 1.0
            and summary["achievedRate"] >= 0.9 * rate
        )
        return result

    # The watchers workload.

    def watchersRun(self, kind: str) -> List[Dict[str, Any]]:
        options = self.options
        tag = "watchers-%s" % (kind,)
        database = Database(kind, self.root, options.pg_url)
        server = self.newServer("watchers", database, tag)
        workdir = os.path.join(self.root, tag)
        results: List[Dict[str, Any]] = []
        watchers: Optional[SippRun] = None
        try:
            server.start()
            rates = self.rates("watchers")
            budget = 60 + len(rates) * (options.duration * 2 + 30)
            watchers, publishFile = startWatchers(
                server, workdir, options.presentities, options.watchers, options.setup_rate, budget
            )
            self.commands.setdefault("watchers-setup", watchers.command)
            for rate in rates:
                result = self.watchersStep(kind, rate, server, watchers, publishFile, tag)
                results.append(result)
                self._print(result)
                if not result["passed"] and not options.keep_going:
                    break
        finally:
            if watchers is not None:
                watchers.stop()
                watchers.cleanup()
            server.stop()
            database.drop()
        return results

    def watchersStep(
        self, kind: str, rate: float, server: Server, watchers: SippRun, publishFile: str, tag: str,
        scenario: str = "publish_watched.xml", publishes: int = 2,
    ) -> Dict[str, Any]:
        """
        One step of publisher calls (C{scenario}, C{publishes} PUBLISHes a
        call) at C{rate} against the watchers of L{startWatchers}.
        """
        options = self.options
        duration = options.duration
        calls = int(rate * duration)
        stepTag = "%s-%d" % (tag, rate)
        publisher = SippRun(
            scenario, (HOST, server.port), rate, calls, timeout=duration * 2 + 20,
            injection=publishFile, limit=max(100, int(rate * 3)),
        )
        self.commands.setdefault("watchers-publish", publisher.command)
        mark = server.mark()
        load = loadAverage()
        notified0 = _lastCount(watchers, "4_NOTIFY_Recv")
        meter = CPUMeter(server.pid).start()
        assert watchers.process is not None
        watcherMeter = CPUMeter(watchers.process.pid).start()
        publisher.start()
        profiler = self._profile(server, stepTag, duration)
        try:
            publisher.wait()
            elapsed = publisher.endedAt - publisher.startedAt
            # Let the last NOTIFYs arrive and sipp write its next counts row.
            time.sleep(2.2)
            cpu = meter.stop()
            watcherCpu = watcherMeter.stop()["cpuPercent"]
            notified = _lastCount(watchers, "4_NOTIFY_Recv") - notified0
            summary = publisher.summary()
            self._profileDone(profiler, stepTag, summary)
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
                profiler.wait()
            publisher.cleanup()
        result = self._result("watchers", kind, rate, summary, cpu, load)
        offered = publishes * summary["successful"] * options.watchers
        failures = server.count("NOTIFY to", mark)
        result.update(
            publishPerSecond=round(publishes * summary["successful"] / max(elapsed, 1e-3), 1),
            notifiesDelivered=notified,
            notifiesPerSecond=round(notified / max(elapsed, 1e-3), 1),
            notifiesOffered=offered,
            notifyFailuresLogged=failures,
            watcherSippCpuPercent=watcherCpu,
            serverRssKiB=memoryOf(server.pid).get("VmRSS"),
        )
        result["passed"] = bool(result["passed"] and failures <= 0.01 * max(notified, 1))
        return result

    # Driver.

    def run(self) -> None:
        options = self.options
        kinds = ["sqlite", "postgresql"] if options.database == "both" else [options.database]
        for workload in options.workloads.split(","):
            for kind in kinds:
                log("=== %s on %s" % (workload, kind))
                if workload == "watchers":
                    self.results.extend(self.watchersRun(kind))
                    continue
                for rate in self.rates(workload):
                    result = self.simpleStep(workload, kind, rate)
                    self.results.append(result)
                    self._print(result)
                    if not result["passed"] and not options.keep_going:
                        break

    def _print(self, r: Dict[str, Any]) -> None:
        rtd1 = r.get("rtd1", {})
        extra = ""
        if "callsPerBatch" in r:
            extra = " calls/commit=%s" % (r["callsPerBatch"],)
        if r["workload"] == "watchers":
            extra = " publish/s=%s NOTIFY/s=%s (%d of %d offered, %d failed) watcher-sipp=%s%%" % (
                r["publishPerSecond"], r["notifiesPerSecond"], r["notifiesDelivered"],
                r["notifiesOffered"], r["notifyFailuresLogged"], r["watcherSippCpuPercent"],
            )
        log(
            "%-14s %-10s rate=%-6g achieved=%-7s failed=%s/%s (%s%%) p50=%sms p99=%sms "
            "server=%s%% (%sms/call) host=%s%% sipp=%s%% load=%.2f %s%s"
            % (
                r["workload"], r["database"], r["rate"], r["achievedRate"], r["failed"], r["calls"],
                r["failedPercent"], rtd1.get("p50"), rtd1.get("p99"), r["serverCpuPercent"],
                r["serverCpuMsPerCall"], r["hostBusyPercent"], r.get("sippCpuPercent"), r["loadAverageBefore"],
                "PASS" if r["passed"] else "FAIL", extra,
            )
        )
        for error in r.get("errors", [])[:3]:
            log("    sipp: " + error)

    def report(self) -> Dict[str, Any]:
        best: Dict[str, Any] = {}
        for r in self.results:
            key = "%s/%s" % (r["workload"], r["database"])
            if r["passed"]:
                value = r["notifiesPerSecond"] if r["workload"] == "watchers" else r["achievedRate"]
                if key not in best or value > best[key]["value"]:
                    best[key] = {"rate": r["rate"], "value": value, "target": TARGETS[r["workload"]]}
            else:
                best.setdefault(key, {"rate": None, "value": None, "target": TARGETS[r["workload"]]})
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": self.options.python,
                "platform": platform.platform(),
                "sipp": subprocess.run([sippPath(), "-v"], capture_output=True, text=True).stdout.strip().splitlines()[0:1],
            },
            "settings": {
                "duration": self.options.duration,
                "presentities": self.options.presentities,
                "pool": self.options.pool,
                "watchers": self.options.watchers,
                "notifyMinInterval": self.options.notify_min_interval,
                "experiments": self.options.experiment,
            },
            "tree": {"before": self.tree, "after": treeState()},
            "commands": self.commands,
            "best": best,
            "steps": self.results,
        }

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def startWatchers(
    server: Server, workdir: str, presentities: int, perPresentity: int, setupRate: float, timeout: float
) -> Tuple[SippRun, str]:
    """
    Subscribe C{perPresentity} watchers to each of C{presentities}
    presentities (C{watcher.xml}, one sipp whose calls then answer every
    NOTIFY 200, for C{timeout} seconds at most) and wait until all are
    subscribed.

    @return: the watchers' sipp and the injection file naming the
        presentities, for the publisher's scenario.
    """
    total = presentities * perPresentity
    names = ["wp%d" % (i,) for i in range(presentities)]
    watchersFile = writeInjection(
        os.path.join(workdir, "watchers.csv"), [(names[i % presentities], "wa%d" % (i,)) for i in range(total)]
    )
    publishFile = writeInjection(os.path.join(workdir, "presentities.csv"), [(p,) for p in names])
    watchers = SippRun(
        "watcher.xml", (HOST, server.port), setupRate, total, timeout=timeout,
        injection=watchersFile, limit=total, recvTimeoutMs=None, rtt=False, counts=True,
    )
    watchers.start()
    try:
        began = time.monotonic()
        while True:
            answered = _lastCount(watchers, "3_200_Sent")
            if answered >= total:
                break
            if time.monotonic() - began > 60 + total / setupRate * 3:
                raise RuntimeError("only %d of %d watchers subscribed" % (answered, total))
            if watchers.process is not None and watchers.process.poll() is not None:
                raise RuntimeError("watcher sipp exited: %s" % (watchers.process.returncode,))
            time.sleep(0.5)
    except BaseException:
        watchers.stop()
        watchers.cleanup()
        raise
    log("watchers: %d subscriptions in %.1f s" % (total, time.monotonic() - began))
    time.sleep(1.5)
    return watchers, publishFile


def _lastCount(run: SippRun, column: str) -> int:
    rows = run.countRows()
    if not rows:
        return 0
    try:
        return int(rows[-1].get(column) or 0)
    except ValueError:
        return 0


def printTable(report: Dict[str, Any]) -> None:
    print("%-14s %-10s %7s %9s %8s %8s %6s %6s %7s %8s %6s %s" % (
        "workload", "database", "rate", "achieved", "calls", "failed%", "p50ms", "p99ms",
        "server%", "ms/call", "host%", "result"))
    for r in report["steps"]:
        rtd1 = r.get("rtd1", {})
        line = "%-14s %-10s %7g %9s %8s %8s %6s %6s %7s %8s %6s %s" % (
            r["workload"], r["database"], r["rate"], r["achievedRate"], r["calls"], r["failedPercent"],
            rtd1.get("p50"), rtd1.get("p99"), r["serverCpuPercent"], r["serverCpuMsPerCall"], r["hostBusyPercent"],
            "pass" if r["passed"] else "FAIL",
        )
        if r["workload"] == "watchers":
            line += "  PUBLISH/s=%s NOTIFY/s=%s" % (r["publishPerSecond"], r["notifiesPerSecond"])
        print(line)
    print()
    for key, b in sorted(report["best"].items()):
        print("best %-22s %s/s at -r %s (target %s/s)" % (key, b["value"], b["rate"], b["target"]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--workloads", default="subscribe,subscribe-warm,publish,watchers",
                        help="comma-separated: subscribe, subscribe-warm, publish, watchers")
    parser.add_argument("--pool", type=int, default=1000,
                        help="subscribe-warm: (presentity, watcher) pairs cycled through")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate step")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="subscribe/publish: seconds of the same load before each measured step "
                        "(unmeasured; lets PyPy's JIT warm up)")
    parser.add_argument("--rates", default="",
                        help="comma-separated sipp rates (calls/s) for every workload; "
                        "default per workload: %s" % (DEFAULT_RATES,))
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first failed step")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--python", default=sys.executable, help="interpreter running the server (e.g. pypy3)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--presentities", type=int, default=500, help="watchers workload: presentities")
    parser.add_argument("--watchers", type=int, default=10, help="watchers workload: watchers per presentity")
    parser.add_argument("--setup-rate", type=float, default=1000.0, help="watchers workload: SUBSCRIBE/s of the setup")
    parser.add_argument("--notify-min-interval", type=float, default=0.0,
                        help="watchers workload: the server's [manager] notify_min_interval")
    parser.add_argument("--experiment", default="",
                        help="comma-separated what-if patches from bench/experiments.py, applied in the "
                        "server process only: %s" % (", ".join(sorted(EXPERIMENTS)),))
    parser.add_argument("--profile", metavar="DIR", help="record each step with py-spy (raw stacks) into DIR; CPython only (for PyPy see README: vmprof)")
    options = parser.parse_args(argv)
    unknown = [e for e in options.experiment.split(",") if e and e not in EXPERIMENTS]
    if unknown:
        # Checked here: in the server it would be a KeyError before twistd runs.
        parser.error("unknown experiment %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(EXPERIMENTS))))
    if options.database in ("postgresql", "both"):
        reason = postgresAvailable(options.pg_url)
        if reason:
            parser.error("PostgreSQL unreachable at %s: %s" % (options.pg_url, reason))
    stopOnSignals()
    bench = Bench(options)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        bench.cleanup()
    report = bench.report()
    printTable(report)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
