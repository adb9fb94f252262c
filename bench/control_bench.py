"""
What one page of a C{presence-admin live} listing costs the server's
reactor thread: the console's C{presentities()} and C{subscriptions()}
(L{presence.admin.console.Console}, what the control channel runs) over a
manager holding C{--count} subscriptions to half as many presentities.

Why: a listing is read on the reactor thread in one go, page by page
(L{presence.admin.control}); a page must not stall the server for long,
however many subscriptions it holds.  Each page is found in one pass
over the subscriptions (no sort of them all), so its cost grows with the
count, not with the page.

The machine is usually shared: each figure is the best of C{--repeat}
runs, the median beside it.

Run from the repository root::

    python3 bench/control_bench.py --count 100000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, List

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.application import service  # noqa: E402

from presence.admin.console import Console  # noqa: E402
from presence.manager.state import Subscription  # noqa: E402
from presence.sip.target import Target  # noqa: E402
from tests.harness import Harness  # noqa: E402


def console(count: int) -> Console:
    """
    A console over a manager holding C{count} subscriptions, put straight
    into its memory (no SIP: the listing is what is measured).
    """
    harness = Harness()
    manager = harness.manager
    target = Target("UDP", "192.0.2.10", 5060)
    now = harness.clock.seconds()
    for i in range(count):
        ident = "%016x" % (i,)
        manager.model.keep(
            Subscription(
                ident, "call-%d" % (i,), ident, "tag", "", "sip:w%d@example.test" % (i,),
                "sip:p%d@example.test" % (i % max(1, count // 2),), "sip:w@192.0.2.10", (), target,
                now + 3600, now, 1,
            )
        )
    root = service.MultiService()
    holder = service.Service()
    holder.setName("manager")
    holder.manager = manager  # type: ignore[attr-defined]
    holder.setServiceParent(root)
    return Console(root, harness.clock)


def timed(label: str, page: Callable[[], List[Any]], repeat: int) -> None:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        items = page()
        times.append(time.perf_counter() - start)
    size = len(json.dumps(items))
    print(
        "%-44s best %6.1f ms  median %6.1f ms  (%d items, %d bytes of JSON)"
        % (label, min(times) * 1000, statistics.median(times) * 1000, len(items), size)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100000, help="subscriptions held")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=int, default=1000, help="items per page (the CLI's)")
    args = parser.parse_args()
    c = console(args.count)
    limit = args.limit
    print("%d subscriptions, pages of %d, %s" % (args.count, limit, sys.version.split()[0]))
    timed("presentities, first page", lambda: c.presentities(limit=limit), args.repeat)
    timed("presentities, a middle page", lambda: c.presentities(after="sip:p5", limit=limit), args.repeat)
    timed("subscriptions, first page", lambda: c.subscriptions(limit=limit), args.repeat)
    middle = ["sip:p5", "", ""]
    timed("subscriptions, a middle page", lambda: c.subscriptions(after=middle, limit=limit), args.repeat)
    timed("subscriptions of one watcher", lambda: c.subscriptions(watcher="sip:w777@example.test", limit=limit), args.repeat)
    timed("subscriptions to one presentity", lambda: c.subscriptions(presentity="sip:p777@example.test", limit=limit), args.repeat)


if __name__ == "__main__":
    main()
