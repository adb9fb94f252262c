"""
What digest authentication and authorization cost: SUBSCRIBE and PUBLISH
rates of one C{twistd -n presence} process with authentication on, next
to the same load with it off (C{[billing] no_auth_domains = example.test}),
under real sipp traffic on loopback.

Why this shape: a user agent is challenged once, then reuses the nonce
with an increasing nonce-count for its next requests (RFC 7616 section
3.4.5), and billing's answers (the account, the watch decision) come from
the server's memory.  So one sipp call is one user agent doing C{M} (5)
operations after one challenge:

C{subscribe}
    C{subscribe_auth.xml}: SUBSCRIBE -> 401, then 5 SUBSCRIBEs (a buddy
    list: 5 new dialogs) with credentials, each -> 200 -> NOTIFY -> 200.
    C{subscribe_noauth.xml}: the same 5 SUBSCRIBEs without the challenge
    nor credentials.  Watchers come from C{--accounts} accounts (cycled).
C{publish}
    C{publish_auth.xml}: PUBLISH -> 401, then an initial PUBLISH, 3
    modifications and a removal, all with credentials.
    C{publish_noauth.xml}: the same 5 PUBLISHes without authentication.

sipp 3.6.1 computes the digest uri from C{-auth_uri}, one value per run,
so every request names the same presentity (C{sip:bench@example.test});
the baseline does the same, so the comparison holds.  sipp also answers
only MD5, so the server offers MD5 first (C{algorithms = MD5 SHA-256});
SHA-256 costs the same to the server.

The accounts are provisioned before the server starts with the same SQL
functions C{presence-admin} uses (one transaction).

Reported per step: operations per second (5 per call) achieved, response
time of the first authenticated request (p50/p99), server CPU% and the
server's CPU milliseconds per operation, which is the steadier figure on
a shared machine.  Steps go up through C{--rates} (calls per second) on a
fresh server and database, and stop at the first that fails (more than 1%
failed calls or less than 90% of the offered rate).

Run from the repository root::

    python bench/auth_bench.py --duration 10
    python bench/auth_bench.py --workloads subscribe --rates 100,200,400 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadtools import (  # noqa: E402
    CPUMeter,
    Database,
    Server,
    SippRun,
    loadAverage,
    log,
    writeInjection,
)

HOST = "127.0.0.1"
OPERATIONS_PER_CALL = 5
DEFAULT_RATES = [100, 200, 300, 400, 500, 600, 800]
PRESENTITY = "bench@example.test"


def provision(url: str, accounts: int) -> None:
    """
    Create the schema and the accounts: C{w0..wN-1} (password C{pw-i})
    and the presentity C{bench} (C{bench-pw}), all of the default customer.
    """
    from presence.billing import db
    from presence.store import schema
    from presence.store.sql import createEngine

    engine = createEngine(url, poolSize=1)
    try:
        with engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                schema.upgrade(conn)
                db.addAccount(conn, "sip:" + PRESENTITY, "bench-pw")
                for i in range(accounts):
                    db.addAccount(conn, "sip:w%d@example.test" % (i,), "pw-%d" % (i,))
    finally:
        engine.dispose()


class AuthBench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.root = tempfile.mkdtemp(prefix="presence-authbench-")
        self.results: List[Dict[str, Any]] = []

    def config(self, auth: bool) -> str:
        text = "[manager]\nnotify_min_interval = 1.0\n[billing]\nalgorithms = MD5 SHA-256\n"
        if not auth:
            text += "no_auth_domains = example.test\n"
        return text

    def step(self, workload: str, auth: bool, rate: float) -> Dict[str, Any]:
        options = self.options
        mode = "auth" if auth else "noauth"
        tag = "%s-%s-%d" % (workload, mode, rate)
        workdir = os.path.join(self.root, tag)
        os.makedirs(workdir)
        database = Database(options.database, workdir, options.pg_url)
        url = database.create()
        provision(url, options.accounts)
        if workload == "subscribe":
            rows = [("w%d" % (i,), "[authentication username=w%d password=pw-%d]" % (i, i))
                    for i in range(options.accounts)]
        else:
            rows = [("bench", "[authentication username=bench password=bench-pw]")]
        injection = writeInjection(os.path.join(workdir, "users.csv"), rows)
        server = Server(workdir, url, python=options.python, host=HOST, config=self.config(auth))
        sipp: Optional[SippRun] = None
        try:
            server.start()
            calls = int(rate * options.duration)
            sipp = SippRun(
                "%s_%s.xml" % (workload, mode), (HOST, server.port), rate, calls,
                timeout=options.duration * 2 + 20, injection=injection, limit=max(100, int(rate * 2)),
                extra=["-auth_uri", PRESENTITY],
            )
            load = loadAverage()
            meter = CPUMeter(server.pid).start()
            sipp.start()
            sipp.wait()
            cpu = meter.stop()
            summary = sipp.summary()
        finally:
            if sipp is not None:
                sipp.cleanup()
            server.stop()
            database.drop()
        ok = summary.get("successful") or 0
        elapsed = max(1e-3, summary["wallSeconds"])
        result: Dict[str, Any] = {
            "workload": workload,
            "auth": auth,
            "rate": rate,
            "calls": summary["calls"],
            "failed": summary["failed"],
            "failedPercent": summary["failedPercent"],
            "operationsPerSecond": round(ok * OPERATIONS_PER_CALL / elapsed, 1),
            "rtd1": summary.get("rtd1", {}),
            "serverCpuPercent": cpu["cpuPercent"],
            "serverCpuMsPerOperation": (
                round(cpu["cpuPercent"] * 10.0 * cpu["seconds"] / (ok * OPERATIONS_PER_CALL), 3) if ok else None
            ),
            "hostBusyPercent": cpu["hostBusyPercent"],
            "loadAverageBefore": load,
            "errors": summary.get("errors", [])[:3],
        }
        failed = summary.get("failedPercent")
        result["passed"] = bool(
            summary.get("calls") and failed is not None and failed < 1.0 and summary["achievedRate"] >= 0.9 * rate
        )
        return result

    def run(self) -> None:
        options = self.options
        rates = [float(r) for r in options.rates.split(",") if r] if options.rates else DEFAULT_RATES
        for workload in options.workloads.split(","):
            for auth in (False, True):
                for rate in rates:
                    result = self.step(workload, auth, rate)
                    self.results.append(result)
                    self._print(result)
                    if not result["passed"] and not options.keep_going:
                        break

    def _print(self, r: Dict[str, Any]) -> None:
        log(
            "%-9s %-6s rate=%-5g ops/s=%-7s failed=%s/%s p50=%sms p99=%sms server=%s%% %sms/op host=%s%% %s"
            % (
                r["workload"], "auth" if r["auth"] else "noauth", r["rate"], r["operationsPerSecond"],
                r["failed"], r["calls"], r["rtd1"].get("p50"), r["rtd1"].get("p99"), r["serverCpuPercent"],
                r["serverCpuMsPerOperation"], r["hostBusyPercent"], "PASS" if r["passed"] else "FAIL",
            )
        )
        for error in r["errors"]:
            log("    sipp: " + error)

    def report(self) -> Dict[str, Any]:
        summary: Dict[str, Any] = {}
        for workload in sorted({r["workload"] for r in self.results}):
            entry: Dict[str, Any] = {}
            for auth in (False, True):
                steps = [r for r in self.results if r["workload"] == workload and r["auth"] == auth]
                passed = [r for r in steps if r["passed"]]
                best = max(passed, key=lambda r: r["operationsPerSecond"]) if passed else None
                costs = [r["serverCpuMsPerOperation"] for r in passed if r["serverCpuMsPerOperation"]]
                entry["auth" if auth else "noauth"] = {
                    "bestOperationsPerSecond": best["operationsPerSecond"] if best else None,
                    "atRate": best["rate"] if best else None,
                    "medianCpuMsPerOperation": sorted(costs)[len(costs) // 2] if costs else None,
                }
            off, on = entry["noauth"], entry["auth"]
            if off["bestOperationsPerSecond"] and on["bestOperationsPerSecond"]:
                entry["rateRatio"] = round(on["bestOperationsPerSecond"] / off["bestOperationsPerSecond"], 3)
            if off["medianCpuMsPerOperation"] and on["medianCpuMsPerOperation"]:
                entry["cpuRatio"] = round(on["medianCpuMsPerOperation"] / off["medianCpuMsPerOperation"], 3)
            summary[workload] = entry
        return {
            "settings": {
                "duration": self.options.duration,
                "accounts": self.options.accounts,
                "database": self.options.database,
                "operationsPerCall": OPERATIONS_PER_CALL,
                "python": self.options.python,
                "cpus": os.cpu_count(),
            },
            "summary": summary,
            "steps": self.results,
        }

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="subscribe,publish", help="comma-separated: subscribe, publish")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate step")
    parser.add_argument("--rates", default="", help="comma-separated sipp call rates; default %s" % (DEFAULT_RATES,))
    parser.add_argument("--accounts", type=int, default=500, help="watcher accounts cycled by the subscribe load")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first failed step")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--python", default=sys.executable, help="interpreter running the server (e.g. pypy3)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "PRESENCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    options = parser.parse_args(argv)
    bench = AuthBench(options)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        bench.cleanup()
    report = bench.report()
    print(json.dumps(report["summary"], indent=2))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
