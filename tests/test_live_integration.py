"""
A scripted C{presence-admin live} session against a running cluster: the
dispatcher and three managers of L{tests.test_cluster_integration}, each a
real C{twistd} process with its control socket, and the CLI run as an
operator runs it, one process per command.

It lists the watchers of a presentity across the managers, finds one
watcher's subscriptions, re-sends the current state to a presentity's
watchers, terminates a watcher's subscriptions (the watcher gets its
final NOTIFY), checks the cluster's health, then drains a manager: its
subscriptions move to the others in the database, the dispatcher takes it
out of rotation, and its former watchers are notified of the next
publication by their new owners.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Tuple

from tests.serverprocess import REPO
from tests.test_cluster_integration import (  # noqa: F401 (fixtures)
    NAMES,
    Agents,
    Cluster,
    cluster,
    database,
)

BOB = "sip:bob@example.test"
WATCHERS = ["sip:w%d@example.test" % (i,) for i in range(6)]


def live(cluster: Cluster, *argv: str, nodes: Any = None) -> Tuple[int, Any, str]:
    """
    C{presence-admin live --socket ... ARGV} in a process of its own:
    its exit status, its JSON output and its standard error.

    @param nodes: the processes to ask (default: every one).
    """
    sockets: List[str] = []
    for name in nodes or NAMES + ["dispatcher"]:
        sockets += ["--socket", cluster.controlSocket(name)]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", "from presence.admin.cli import main; main()", "live"] + sockets + list(argv),
        env=env, capture_output=True, timeout=120,
    )
    out = done.stdout.decode()
    return done.returncode, json.loads(out) if out.strip() else None, done.stderr.decode()


def test_liveSession(cluster):
    agents = Agents(cluster.dispatcher.ports["UDP"])
    try:
        calls = {watcher: agents.subscribe(BOB, watcher) for watcher in WATCHERS}
        agents.waitUntil(lambda: all(c in agents.ok for c in calls.values()), 15, "the 200s")
        dialogs = {watcher: agents.dialogOf(call) for watcher, call in calls.items()}
        agents.waitUntil(lambda: all(agents.latest(d) for d in dialogs.values()), 15, "initial NOTIFYs")
        homes = {watcher: agents.managerOf(call) for watcher, call in calls.items()}
        assert set(homes.values()) == set(NAMES), homes

        status, health, err = live(cluster, "status")
        assert status == 0, (health, err)
        assert health["dispatcher"]["healthy"] and all(health[name]["healthy"] for name in NAMES)
        assert [m["up"] for m in health["dispatcher"]["dispatcher"]["managers"]] == [True] * 3
        assert health["m1"]["cluster"]["peers"] == {"m2": True, "m3": True}
        assert [lease["node"] for lease in health["m1"]["cluster"]["leases"]] == NAMES

        # Who watches bob, and where: the dispatcher holds none (it says
        # so on stderr), the managers each their own.
        status, listed, err = live(cluster, "watchers", BOB)
        assert status == 0 and "dispatcher" in err and "not-running" in err
        assert sorted((item["watcher"], item["node"]) for item in listed) == sorted(homes.items())
        assert all(item["state"] == "active" and item["presentity"] == BOB for item in listed)

        status, listed, err = live(cluster, "subscriptions", "--watcher", WATCHERS[0])
        assert status == 0 and [(i["watcher"], i["node"]) for i in listed] == [(WATCHERS[0], homes[WATCHERS[0]])]

        # The current state again, to every active watcher, once each.
        before = {watcher: max(agents.notifies[d]) for watcher, d in dialogs.items()}
        status, refreshed, err = live(cluster, "refresh-watchers", BOB, nodes=NAMES)
        assert status == 0 and sum(r["queued"] for r in refreshed.values()) == 6, (refreshed, err)
        agents.waitUntil(
            lambda: all(max(agents.notifies[d]) > before[w] for w, d in dialogs.items()), 15, "refreshed NOTIFYs"
        )

        # The first watcher's subscriptions end, with a final NOTIFY.
        gone = WATCHERS[0]
        status, ended, err = live(cluster, "terminate", "--watcher", gone, nodes=NAMES)
        assert status == 0 and sum(e["terminated"] for e in ended.values()) == 1, (ended, err)
        agents.waitUntil(
            lambda: (agents.latest(dialogs[gone]).header("subscription-state") or "").startswith("terminated"),
            15, "the final NOTIFY",
        )
        assert agents.latest(dialogs[gone]).header("subscription-state") == "terminated;reason=deactivated"
        status, ended, err = live(cluster, "terminate", "--watcher", gone, nodes=NAMES)
        assert status == 4
        status, _, err = live(cluster, "terminate", "no-such-id", nodes=NAMES)
        assert status == 4

        status, cleaned, err = live(cluster, "cleanup", nodes=["m2"])
        assert status == 0 and cleaned == {"m2": {"subscriptions": 0, "publications": 0}}, err

        # Drain m1: its subscriptions go to m2 and m3, the dispatcher
        # takes it out of rotation.
        drained = [w for w in WATCHERS[1:] if homes[w] == "m1"]
        assert drained
        status, report, err = live(cluster, "drain", "--grace", "1.5", nodes=["m1"])
        assert status == 0, (report, err)
        assert report["m1"]["handedOver"] == len(drained) and report["m1"]["remaining"] == 0
        owners: Dict[Any, str] = cluster.owners()
        assert "m1" not in owners.values() and len(owners) == 5
        cluster.dispatcher.waitFor("Manager m1 is draining")
        status, health, err = live(cluster, "status", nodes=["dispatcher", "m1"])
        assert status == 6, health
        assert [m["draining"] for m in health["dispatcher"]["dispatcher"]["managers"]] == [True, False, False]
        assert health["m1"]["manager"]["draining"] and health["m1"]["manager"]["subscriptions"] == 0

        # New subscriptions go to the others; the next publication
        # reaches every watcher left, the drained ones from their new
        # owners.
        late = agents.subscribe(BOB, "sip:late@example.test")
        agents.waitUntil(lambda: late in agents.ok, 15, "the late 200")
        assert agents.managerOf(late) != "m1"
        published = agents.publish(BOB, "open", "after-drain")
        agents.waitUntil(lambda: published in agents.ok, 15, "PUBLISH 200")
        agents.waitUntil(
            lambda: all(agents.withNote(dialogs[w], "after-drain") for w in WATCHERS[1:]), 15, "NOTIFYs after the drain"
        )
        assert not agents.withNote(dialogs[gone], "after-drain")
        assert "Drained m1: %d subscriptions handed over" % (len(drained),) in cluster.managers["m1"].waitFor("Drained m1")
        status, resumed, err = live(cluster, "resume", nodes=["m1"])
        assert status == 0 and resumed["m1"]["draining"] is False
        cluster.dispatcher.waitFor("Manager m1 is back in rotation")
    finally:
        agents.close()
