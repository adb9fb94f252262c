"""
Memory and reload time of one C{twistd -n presence} process holding many
live subscriptions (default 100,000), on SQLite and on PostgreSQL.

Why: the target of one manager process is 100,000 subscriptions in under
400 MB of RSS, reloaded from the database in under 10 s after a restart;
memory and start-up both grow with the subscription count, and only a real
process shows them.

How: a fresh server and database; the subscriptions are made through SIP
by sipp (SUBSCRIBE -> 200 -> initial NOTIFY -> 200, Expires 7200, one new
dialog per call) at C{--rate} calls a second, topped up by further sipp
runs if some calls failed.  By default the calls cycle through C{--pool}
(presentity, watcher) pairs (C{bench/sipp/subscribe_pool.xml}: 100,000
subscriptions over 10,000 presentities, ten dialogs a pair);
C{--pool 0} gives every call its own presentity and watcher
(C{bench/sipp/subscribe.xml}), so the server holds as many presentities
as subscriptions.  Billing answers from memory either way.  Then:

* RSS: C{VmRSS} (and the peak, C{VmHWM}) of the server from
  C{/proc/PID/status}, before the load, after a first tenth of it (the
  process warmed up) and with every subscription live; RSS per
  subscription both from the empty process and from the warm one;
* reload: the server is stopped with SIGTERM (time to exit reported), then
  started again on the same database; reload time is spawning the process
  to its "Subscription manager ... ready" line (interpreter start and
  imports included; the time from the store's "started" line to ready is
  shown apart), and the subscription count is read from its "Loaded N
  subscriptions" line;
* the RSS after the reload, which holds the same subscriptions without the
  garbage of the load.

Run from the repository root::

    python bench/subscriptions_bench.py --database both --json subs.json
    python bench/subscriptions_bench.py --count 20000 --rate 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadtools import (  # noqa: E402
    DEFAULT_PG_URL,
    CPUMeter,
    Database,
    Server,
    SippRun,
    log,
    memoryOf,
    postgresAvailable,
    stopOnSignals,
    treeState,
    writeInjection,
)

HOST = "127.0.0.1"
# sipp sends no credentials: the benchmark domain is one without digest
# authentication (a trusted network); SUBSCRIBE and PUBLISH still go
# through the billing gate (account standing) but are never challenged.
NO_AUTH = "[billing]\nno_auth_domains = example.test\n"
RSS_TARGET_MB = 400
RELOAD_TARGET_S = 10


def loadedCount(server: Server) -> Optional[int]:
    m = server.find(r"Loaded (\d+) subscriptions")
    return int(m.group(1)) if m else None


def runOne(kind: str, options: argparse.Namespace, root: str) -> Dict[str, Any]:
    """
    Load C{options.count} subscriptions into a fresh server on C{kind},
    measure its memory, restart it and time the reload.
    """
    workdir = os.path.join(root, kind)
    os.makedirs(workdir, exist_ok=True)
    database = Database(kind, workdir, options.pg_url)
    url = database.create()
    config = "[manager]\nnotify_min_interval = 1.0\n" + NO_AUTH
    server = Server(workdir, url, python=options.python, host=HOST, config=config)
    result: Dict[str, Any] = {
        "database": kind, "target": options.count, "serverCommand": server.command(), "tree": treeState(),
    }
    restarted: Optional[Server] = None
    try:
        result["firstStartSeconds"] = round(server.start(), 2)
        result["rssEmptyKiB"] = memoryOf(server.pid)["VmRSS"]
        began = time.monotonic()
        meter = CPUMeter(server.pid).start()
        sippCommands: List[List[str]] = []
        scenario, injection = "subscribe.xml", None
        if options.pool:
            scenario = "subscribe_pool.xml"
            injection = writeInjection(
                os.path.join(workdir, "pairs.csv"),
                [("pp%d" % (i,), "pw%d" % (i,)) for i in range(options.pool)],
            )
        loaded = {"made": 0, "rounds": 0}

        def loadTo(count: int) -> None:
            while loaded["made"] < count and loaded["rounds"] < 8:
                calls = count - loaded["made"]
                sipp = SippRun(
                    scenario, (HOST, server.port), options.rate, calls,
                    timeout=calls / options.rate * 3 + 60, service="r%dk" % (loaded["rounds"],),
                    limit=max(200, int(options.rate * 3)), rtt=True, injection=injection,
                )
                sippCommands.append(sipp.command)
                try:
                    sipp.start()
                    sipp.wait()
                    summary = sipp.summary()
                finally:
                    sipp.cleanup()
                loaded["made"] += summary["successful"]
                loaded["rounds"] += 1
                log("%s: round %d: %d calls, %d successful, %d failed, %.0f/s, SUBSCRIBE->200 %s"
                    % (kind, loaded["rounds"], summary["calls"], summary["successful"], summary["failed"],
                       summary["achievedRate"], summary.get("rtd1")))
                result.setdefault("rounds", []).append(summary)

        # A first tenth warms the process up (PyPy's JIT code, its
        # nursery, the interpreter's and SQLAlchemy's caches, the
        # allocator's arenas): under PyPy that one-time growth is 70-80 MB,
        # as much as 50,000 subscriptions, so RSS per subscription is
        # measured between the warm and the full load as well.
        warm = options.count // 10
        if warm:
            loadTo(warm)
            # Let the NOTIFY transactions finish before measuring: one whose
            # 200 was lost ends its subscription when Timer F (64*T1 = 32 s)
            # fires, so after this wait the live count is what a restart
            # reloads.
            time.sleep(options.settle)
            result["warmSubscriptions"] = loaded["made"]
            result["rssWarmKiB"] = memoryOf(server.pid)["VmRSS"]
            log("%s: %d subscriptions; RSS %.1f MB" % (kind, loaded["made"], result["rssWarmKiB"] / 1024.0))
        loadTo(options.count)
        made = loaded["made"]
        result["loadSeconds"] = round(time.monotonic() - began, 1)
        result["loadCpu"] = meter.stop()
        result["sippCommands"] = sippCommands
        result["successfulCalls"] = made
        time.sleep(options.settle)
        memory = memoryOf(server.pid)
        result["rssLoadedKiB"] = memory["VmRSS"]
        result["rssPeakKiB"] = memory["VmHWM"]
        log("%s: %d successful SUBSCRIBE calls; RSS %.1f MB (peak %.1f MB, empty %.1f MB)"
            % (kind, made, memory["VmRSS"] / 1024.0, memory["VmHWM"] / 1024.0, result["rssEmptyKiB"] / 1024.0))
        stopBegan = time.monotonic()
        code = server.stop(timeout=120)
        result["stopSeconds"] = round(time.monotonic() - stopBegan, 2)
        result["stopExitCode"] = code
        restarted = Server(workdir, url, python=options.python, host=HOST, port=server.port, config=config)
        reload = restarted.start(timeout=300)
        storeAt = restarted.waitFor("store <SQLStore", timeout=5)
        readyAt = restarted.waitFor("Subscription manager", timeout=5)
        result["reloadSeconds"] = round(reload, 2)
        result["reloadAfterStoreSeconds"] = round(readyAt - storeAt, 2)
        result["reloadedSubscriptions"] = loadedCount(restarted)
        if result["reloadedSubscriptions"] is None:
            result["reloadLog"] = restarted.tail(60)
            log("%s: no 'Loaded N subscriptions' line after the restart:\n%s" % (kind, restarted.tail(60)))
        time.sleep(1)
        result["rssReloadedKiB"] = memoryOf(restarted.pid)["VmRSS"]
        live = result["reloadedSubscriptions"] or 0
        result["rssPerSubscriptionBytes"] = (
            round((result["rssLoadedKiB"] - result["rssEmptyKiB"]) * 1024.0 / live) if live else None
        )
        if warm and made > result["warmSubscriptions"]:
            result["rssPerSubscriptionWarmBytes"] = round(
                (result["rssLoadedKiB"] - result["rssWarmKiB"]) * 1024.0 / (made - result["warmSubscriptions"])
            )
        result["rssPassed"] = result["rssLoadedKiB"] < RSS_TARGET_MB * 1024
        result["reloadPassed"] = reload < RELOAD_TARGET_S
        log("%s: reloaded %s subscriptions in %.2f s (%.2f s after the store started); RSS %.1f MB"
            % (kind, live, reload, result["reloadAfterStoreSeconds"], result["rssReloadedKiB"] / 1024.0))
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop(timeout=120)
        database.drop()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--count", type=int, default=100000, help="subscriptions to hold")
    parser.add_argument("--rate", type=float, default=800.0, help="SUBSCRIBE calls a second while loading")
    parser.add_argument("--pool", type=int, default=10000,
                        help="(presentity, watcher) pairs the SUBSCRIBEs cycle through (subscribe_pool.xml); "
                        "0: a new presentity and watcher per call (subscribe.xml), as many presentities "
                        "as subscriptions")
    parser.add_argument("--settle", type=float, default=35.0,
                        help="seconds to wait after the load before measuring RSS (Timer F is 32 s)")
    parser.add_argument("--python", default=sys.executable, help="interpreter running the server")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    options = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if options.database == "both" else [options.database]
    if "postgresql" in kinds:
        reason = postgresAvailable(options.pg_url)
        if reason:
            parser.error("PostgreSQL unreachable at %s: %s" % (options.pg_url, reason))
    stopOnSignals()
    root = tempfile.mkdtemp(prefix="presence-subs-")
    results = []
    try:
        for kind in kinds:
            results.append(runOne(kind, options, root))
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("%-10s %8s %9s %9s %9s %8s %9s %9s %9s %9s" % (
        "database", "subs", "RSS0 MB", "RSS MB", "peak MB", "B/sub", "warm B/sub", "stop s", "reload s",
        "RSS2 MB"))
    for r in results:
        print("%-10s %8s %9.1f %9.1f %9.1f %8s %9s %9s %9s %9.1f" % (
            r["database"], r["reloadedSubscriptions"], r["rssEmptyKiB"] / 1024.0, r["rssLoadedKiB"] / 1024.0,
            r["rssPeakKiB"] / 1024.0, r["rssPerSubscriptionBytes"], r.get("rssPerSubscriptionWarmBytes"),
            r["stopSeconds"], r["reloadSeconds"], r["rssReloadedKiB"] / 1024.0))
    print("targets: RSS < %d MB with 100,000 subscriptions, reload < %d s" % (RSS_TARGET_MB, RELOAD_TARGET_S))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
