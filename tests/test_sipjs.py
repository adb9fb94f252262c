"""
A real browser SIP stack: SIP.js 0.21 (npm, the package the web page
serves, run by Node with the npm C{ws} client as its WebSocket) against real servers over WS and WSS, all
in one process and behind a dispatcher in front of a cluster of managers.

The scenario is tests/node/sipjs-presence.mjs: three users register with
digest authentication, one watches the two others, sees them online from
their registrations, sees each PUBLISH of the third, and (all in one
process) sees the second go offline the moment its WebSocket closes
without an un-REGISTER.  It prints one JSON line per step; the test
checks them and the server's own account of the closed connection.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List

import pytest

from tests.certs import selfSigned
from tests.conftest import requireNodeModules
from tests.serverprocess import REPO, ServerProcess
from tests.test_billing_integration import presenceAdmin

SCENARIO = os.path.join(REPO, "tests", "node", "sipjs-presence.mjs")
PASSWORD = "secret"
USERS = ("alice", "bob", "carol")


def runScenario(node: str, **config: Any) -> List[Dict[str, Any]]:
    """
    Run the SIP.js scenario; return its events, failing with its output
    when it does not finish.
    """
    config.setdefault("password", PASSWORD)
    config.setdefault("timeout", 40)
    result = subprocess.run(
        [node, SCENARIO, json.dumps(config)],
        cwd=REPO,
        capture_output=True,
        timeout=config["timeout"] + 20,
    )
    out = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, "SIP.js scenario failed (%s):\n%s\n%s" % (
        result.returncode, out, result.stderr.decode("utf-8", "replace")[-3000:]
    )
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def notesOf(events: List[Dict[str, Any]], target: str) -> List[Any]:
    return [(e["basic"], e["note"]) for e in events if e["event"] == "notify" and e["target"] == target]


@pytest.fixture
def node() -> str:
    # The repository's package.json: npm ci there, as .ci/run does.
    return requireNodeModules(REPO, "sip.js", "ws")


@pytest.fixture
def allInOne(tmp_path):
    """
    An all-in-one server with alice, bob and carol, on WS and WSS, with
    the default digest offer (SHA-256, then MD5: SIP.js answers the last
    challenge, and MD5 only).
    """
    workdir = str(tmp_path)
    keyPath, certPath, _ = selfSigned(tmp_path)
    database = "sqlite:///%s" % (os.path.join(workdir, "presence.sqlite"),)
    presenceAdmin(database, "initdb")
    for user in USERS:
        presenceAdmin(database, "account", "add", "%s@example.test" % (user,), "--customer", "acme",
                      "--password-file", "-", password=PASSWORD)
    configPath = os.path.join(workdir, "presence.ini")
    with open(configPath, "w") as f:
        f.write("[manager]\nnotify_min_interval = 0\n")
    server = ServerProcess(
        workdir,
        [
            "--config", configPath,
            "--database", database,
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "ws:0:interface=127.0.0.1",
            "--listen", "wss:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath),
            "--domain", "example.test",
        ],
    ).start("Subscription manager")
    try:
        yield server, str(certPath)
    finally:
        server.stopCleanly()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_sipjsPresenceAllInOne(node, allInOne, scheme):
    server, certPath = allInOne
    events = runScenario(
        node,
        server="%s://127.0.0.1:%d" % (scheme, server.ports[scheme.upper()]),
        ca=certPath if scheme == "wss" else None,
    )
    assert [e["user"] for e in events if e["event"] == "registered"] == list(USERS)
    bob = notesOf(events, "bob")
    assert bob[0] == ("open", None)
    assert bob[-2:] == [("open", "Online"), ("closed", "Away")]
    carol = notesOf(events, "carol")
    assert carol[0][0] == "open" and carol[-1][0] == "closed"
    assert events[-1]["event"] == "done"
    server.waitFor("bindings of sip:carol@example.test removed")


@pytest.fixture
def cluster(tmp_path, node):
    """
    A dispatcher on WS and WSS in front of three managers sharing
    PostgreSQL (tests.test_cluster_integration's cluster, whose managers
    trust example.test without authentication).
    """
    from tests.conftest import postgresSchema
    from tests.test_cluster_integration import DISPATCHER, _startCluster

    keyPath, certPath, _ = selfSigned(tmp_path, (), (DISPATCHER,))
    listen = [
        "ws:0:interface=" + DISPATCHER,
        "wss:0:interface=%s:privateKey=%s:certKey=%s" % (DISPATCHER, keyPath, certPath),
    ]
    with postgresSchema("sipjs") as database:
        # policy hash: an AOR's registrations and its watchers meet on
        # one manager (README, Registration).
        for running in _startCluster(tmp_path, database, listen=listen, policy="hash"):
            yield running, str(certPath)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_sipjsPresenceThroughTheDispatcher(node, cluster, scheme):
    """
    The same users behind a dispatcher: registrations, subscriptions and
    publications go to the managers, the NOTIFYs come back down each
    browser's WebSocket through the dispatcher's signed Record-Route.  (A
    manager learns nothing of a connection closing at the dispatcher, for
    WebSocket as for TCP: the dropped connection is not checked here.)
    """
    from tests.test_cluster_integration import DISPATCHER

    running, certPath = cluster
    port = running.dispatcher.ports[scheme.upper()]
    events = runScenario(
        node,
        server="%s://%s:%d" % (scheme, DISPATCHER, port),
        ca=certPath if scheme == "wss" else None,
        dropCheck=False,
    )
    assert [e["user"] for e in events if e["event"] == "registered"] == list(USERS)
    bob = notesOf(events, "bob")
    assert bob[0] == ("open", None)
    assert bob[-2:] == [("open", "Online"), ("closed", "Away")]
    assert notesOf(events, "carol")[0][0] == "open"
    assert events[-1]["event"] == "done"
