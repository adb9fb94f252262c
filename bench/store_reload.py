"""
Store-level benchmark: write N subscriptions through L{SQLStore} (group
commit) and time how long a fresh store takes to load them back.

Why: a manager rebuilds its memory from the store on start, and the target
is 100,000 subscriptions reloaded in well under 10 s.  This isolates the
store's share (query, row decoding, record building) from the rest of the
server, which C{bench/subscriptions_bench.py} measures end to end.

Run from the repository root::

    python bench/store_reload.py                      # 100,000 on both backends
    python bench/store_reload.py --count 20000 --database sqlite

PostgreSQL runs in a throw-away schema (C{PRESENCE_TEST_PG_URL} or the test
default), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from typing import Any, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from presence.store import SQLStore, SubscriptionRecord  # noqa: E402

PG_URL = os.environ.get("PRESENCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def record(n: int) -> SubscriptionRecord:
    """
    A realistic subscription, numbered C{n}.
    """
    return SubscriptionRecord(
        id="%032x" % (n,),
        callId="%s@192.0.2.%d" % (uuid.uuid4().hex, n % 250),
        localTag="%016x" % (n,),
        remoteTag="%016x" % (n * 7,),
        watcher="sip:watcher%d@example.test" % (n,),
        presentity="sip:user%d@example.test" % (n % 5000,),
        event="presence",
        accept="application/pidf+xml",
        remoteTarget="sip:watcher%d@192.0.2.%d:5060;transport=tcp" % (n, n % 250),
        expiresAt=2000000000.0 + n,
        state="active",
        owner="manager-a",
        transport="tcp",
        peerHost="192.0.2.%d" % (n % 250,),
        peerPort=40000 + n % 20000,
        createdAt=1700000000.0 + n,
        routeSet=("<sip:edge.example.test;lr>",),
        localCSeq=100,
        remoteCSeq=n,
        flowToken="flow-%d" % (n,),
    )


@defer.inlineCallbacks
def run(reactor: Any, url: str, label: str, count: int) -> Any:
    store = SQLStore(url, reactor=reactor)
    yield store.start()
    began = time.perf_counter()
    step = 10000
    for start in range(0, count, step):
        yield defer.gatherResults([store.addSubscription(record(n)) for n in range(start, min(count, start + step))])
    written = time.perf_counter() - began
    batches = store.batchCount
    yield store.stop()

    fresh = SQLStore(url, reactor=reactor)
    began = time.perf_counter()
    yield fresh.start()
    started = time.perf_counter() - began
    began = time.perf_counter()
    loaded: List[SubscriptionRecord] = yield fresh.loadSubscriptions()
    reload = time.perf_counter() - began
    mine: List[SubscriptionRecord] = yield fresh.loadSubscriptions(owner="manager-a")
    yield fresh.stop()
    assert len(loaded) == count == len(mine), (len(loaded), len(mine))
    print(
        "%-10s %7d subscriptions: written in %.2f s (%d batches, %.0f/s); "
        "store start %.2f s; reload %.2f s (%.1f us each)"
        % (label, count, written, batches, count / written, started, reload, reload / count * 1e6)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()

    if args.database in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = "sqlite:///%s" % (os.path.join(tmp, "bench.sqlite"),)
            _runOnce(url, "sqlite", args.count)
    if args.database in ("postgresql", "both"):
        schemaName = "presence_bench_%s" % (uuid.uuid4().hex[:12],)
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql('CREATE SCHEMA "%s"' % (schemaName,))
        try:
            sep = "&" if "?" in PG_URL else "?"
            _runOnce("%s%soptions=-csearch_path%%3D%s" % (PG_URL, sep, schemaName), "postgresql", args.count)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql('DROP SCHEMA "%s" CASCADE' % (schemaName,))
            admin.dispose()


def _runOnce(url: str, label: str, count: int) -> None:
    """
    One benchmark in a child process: C{task.react} stops the reactor, which
    cannot be restarted for the next backend.
    """
    import subprocess

    subprocess.check_call([sys.executable, __file__, "--_child", url, label, str(count)])


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_child":
        _, _, childUrl, childLabel, childCount = sys.argv
        task.react(lambda reactor: run(reactor, childUrl, childLabel, int(childCount)), [])
    else:
        main()
