"""
Live control: the console's helpers and the control channel's commands
over a cluster of managers in memory (L{tests.test_cluster.Cluster}: real
managers and groups on one L{MemoryStore}, a fake network, a L{Clock}),
the channel's protocol over a L{StringTransport}, a manager's drain,
and the CLI's exit statuses (the dispatcher's view of a drain is in
L{tests.test_dispatcher}).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import socket
import stat
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from twisted.python import usage
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from presence.admin import live as livecli
from presence.admin.console import Console, NotRunning
from presence.admin.control import (
    CommandError,
    Commands,
    ControlError,
    ControlProtocol,
    ControlService,
    clearStaleSocket,
    controlProblem,
)
from presence.config import Config
from presence.preflight import problems
from presence.cluster.group import LocalPeer
from presence.interfaces import IPeer
from presence.sip.message import Request, Response
from presence.tap import Options, makeService
from tests.harness import refresh, request, subscribe
from tests.sipclient import answer, newRequest
from tests.test_cluster import BOB, Node, cluster  # noqa: F401 (fixture)
from tests.test_manhole import UserAgent

ALICE = "sip:alice@example.test"
CAROL = "sip:carol@example.test"


def treeOf(node: Node) -> service.MultiService:
    """
    A service tree holding C{node}'s live objects where the real services
    keep them: what the console looks up.
    """
    root = service.MultiService()
    for name, attribute, value in (
        ("store", "store", node.store),
        ("sip", "core", node.harness.core),
        ("manager", "manager", node.manager),
        ("cluster", "group", node.group),
    ):
        child = service.Service()
        child.setName(name)
        setattr(child, attribute, value)
        child.setServiceParent(root)
    return root


def consoleOf(node: Node) -> Console:
    return Console(treeOf(node), node.clock)


def result(d: Deferred) -> Any:
    """
    What an already fired Deferred gave (the fakes answer at once).
    """
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def watchers(node: Node, *pairs: Any) -> List[Any]:
    """
    Subscribe each C{(watcher, presentity)} on C{node}; return the
    SUBSCRIBEs and their 200s.
    """
    made = []
    for watcher, presentity in pairs:
        sub, ok, _ = node.harness.subscribed(uri=presentity, fromURI=watcher)
        made.append((sub, ok))
    return made


# The console's reads and actions.


def test_listingsArePagedInOrder(cluster):
    """
    presentities() and subscriptions() come in order, page after page,
    with nothing skipped nor repeated.
    """
    a = cluster["a"]
    watchers(a, (ALICE, BOB), (CAROL, BOB), (ALICE, CAROL), (CAROL, ALICE))
    console = consoleOf(a)
    listed = [p["aor"] for p in console.presentities(limit=2)]
    listed += [p["aor"] for p in console.presentities(after=listed[-1], limit=2)]
    assert listed == sorted([ALICE, BOB, CAROL])
    assert console.presentities(after=listed[-1], limit=2) == []
    bob = [p for p in console.presentities() if p["aor"] == BOB][0]
    assert bob == {"aor": BOB, "watchers": 2, "active": 2, "publications": 0, "registered": False}

    everything = console.subscriptions()
    assert [(s["presentity"], s["watcher"]) for s in everything] == [
        (ALICE, CAROL), (BOB, ALICE), (BOB, CAROL), (CAROL, ALICE)
    ]
    paged: List[Dict[str, Any]] = []
    after = None
    while True:
        page = console.subscriptions(after=after, limit=3)
        paged += page
        if len(page) < 3:
            break
        after = [page[-1]["presentity"], page[-1]["watcher"], page[-1]["id"]]
    assert paged == everything
    assert [s["presentity"] for s in console.subscriptions(watcher=ALICE)] == [BOB, CAROL]
    assert [s["watcher"] for s in console.subscriptions(presentity="sip:bob@EXAMPLE.test")] == [ALICE, CAROL]
    assert console.subscriptions(watcher=ALICE, presentity=ALICE) == []


def test_terminateTakesWhatSubscriptionsGives(cluster):
    """
    terminate() takes the list subscriptions() returns, one summary of
    it, an id or the object, and each watcher gets its final NOTIFY; a
    subscription that is not live ends none of them.
    """
    a = cluster["a"]
    watchers(a, (ALICE, BOB), (CAROL, BOB), (ALICE, CAROL))
    console = consoleOf(a)
    assert console.namespace()["terminate"] == console.terminate
    with pytest.raises(KeyError):
        console.terminate(console.subscriptions() + [{"id": "gone"}])
    assert len(a.manager.subscriptions) == 3
    with pytest.raises(ValueError):
        console.terminate(console.subscriptions(), "bogus")

    assert result(console.terminate(console.subscriptions(presentity=BOB))) == 2
    finals = a.notifies()
    assert len(finals) == 2
    assert {n.header("subscription-state") for n in finals} == {"terminated;reason=deactivated"}
    [left] = console.subscriptions()
    assert result(console.terminate(left, "rejected")) == 1
    [final] = a.notifies()
    assert final.header("subscription-state") == "terminated;reason=rejected"
    assert a.manager.subscriptions == {} and console.subscriptions() == []


def test_refreshSendsTheCurrentStateToActiveWatchers(cluster):
    """
    refresh(aor) sends each active watcher one NOTIFY with the current
    state, and no one else anything.
    """
    a = cluster["a"]
    made = watchers(a, (ALICE, BOB), (CAROL, BOB), (ALICE, CAROL))
    console = consoleOf(a)
    assert console.refresh("sip:bob@example.test") == {"aor": BOB, "watchers": 2, "queued": 2}
    sent = a.notifies()
    assert sorted(n.callId for n in sent) == sorted(sub.callId for sub, _ in made[:2])
    assert all((n.header("subscription-state") or "").startswith("active") for n in sent)
    assert all(b"<presence" in n.body for n in sent)
    assert console.refresh("sip:nobody@example.test") == {"aor": "sip:nobody@example.test", "watchers": 0, "queued": 0}
    assert a.notifies() == []


def test_cleanupDeletesRowsExpiredLongAgo(cluster):
    """
    cleanup() deletes the rows that expired more than its margin ago,
    and no live one.
    """
    a = cluster["a"]
    watchers(a, (ALICE, BOB))
    [live] = result(cluster.shared.loadSubscriptions())
    now = a.clock.seconds()
    for ident, expired in (("old", now - 61), ("recent", now - 30)):
        result(cluster.shared.addSubscription(dataclasses.replace(live, id=ident, localTag=ident, expiresAt=expired)))
    assert result(consoleOf(a).cleanup()) == {"subscriptions": 1, "publications": 0}
    assert sorted(r.id for r in result(cluster.shared.loadSubscriptions())) == sorted([live.id, "recent"])
    assert result(consoleOf(a).cleanup(olderThan=0)) == {"subscriptions": 1, "publications": 0}


def test_notRunningBeforeTheManager():
    """
    A tree whose manager has not started yet: the helpers say so; stats
    and status still answer.
    """
    root = service.MultiService()
    manager = service.Service()
    manager.setName("manager")
    manager.setServiceParent(root)
    console = Console(root, None)
    with pytest.raises(NotRunning):
        console.subscriptions()
    assert console.stats() == {"managerReady": False}
    assert result(console.status()) == {"manager": {"ready": False}, "healthy": False}


def test_statusOfAManagerInACluster(cluster):
    """
    status() tells the manager's state, its peers' links, and every
    lease in the store; it is healthy while all is well.
    """
    a = cluster["a"]
    cluster.shared.clock = a.clock
    result(a.store.registerLease("a", 5.0))
    result(a.store.registerLease("b", 5.0))
    status = result(consoleOf(a).status())
    assert status["manager"]["ready"] and not status["manager"]["draining"]
    assert status["cluster"]["peers"] == {"b": True, "c": True}
    assert [lease["node"] for lease in status["cluster"]["leases"]] == ["a", "b"]
    assert 4.0 <= status["cluster"]["leases"][0]["expiresIn"] <= 5.0
    assert status["healthy"] is True
    cluster.cut("a", "c")
    status = result(consoleOf(a).status())
    assert status["cluster"]["peers"] == {"b": True, "c": False} and status["healthy"] is False


# Drain.


def test_drainHandsEverySubscriptionOver(cluster):
    """
    A drain refuses new work at once (503, and OPTIONS 503 for the
    dispatcher), then hands each subscription over to a live peer: the
    store names the peer, the peer notifies the watcher of the next
    change, the drained manager does not; a refresh of a handed-over
    dialog that still reaches it is 503, not pulled back.
    """
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    made = watchers(a, (ALICE, BOB), (CAROL, BOB), (ALICE, CAROL), (CAROL, ALICE))
    console = consoleOf(a)
    done = console.drain(grace=1.0)
    assert not done.called and a.manager.draining
    a.harness.receive(subscribe(fromURI="sip:dave@example.test"))
    a.harness.receive(request("OPTIONS", "sip:192.0.2.1"))
    assert [(r.code, r.reason) for r in a.harness.responses()] == [(503, "Draining"), (503, "Draining")]
    assert console.drain() is not done and len(a.manager.subscriptions) == 4

    cluster.advance(1.0)
    report = result(done)
    assert report["handedOver"] == 4 and report["failed"] == 0 and report["remaining"] == 0
    assert sum(report["to"].values()) == 4 and set(report["to"]) <= {"b", "c"}
    assert a.manager.subscriptions == {}
    held = {sid: node.name for node in (b, c) for sid in node.manager.subscriptions}
    owners = {record.id: record.owner for record in result(cluster.shared.loadSubscriptions())}
    assert owners == held and len(held) == 4
    assert result(console.drain()) == report

    etag, _ = b.harness.published()
    cluster.flush()
    told = b.notifies() + c.notifies()
    assert len([n for n in told if b"<basic>open</basic>" in n.body]) == 2
    assert a.notifies() == []

    sub, ok = made[0]
    a.harness.receive(refresh(sub, ok, 2))
    assert [r.code for r in a.harness.responses()] == [503]
    assert len(held) == len(b.manager.subscriptions) + len(c.manager.subscriptions)

    assert console.resume()["draining"] is False
    a.harness.receive(request("OPTIONS", "sip:192.0.2.1"))
    [answer] = a.harness.responses()
    assert answer.code == 200 and answer.header("allow").count("OPTIONS") == 1


def test_drainWithoutPeersOnlyRefusesNewWork(cluster):
    """
    With no peer reachable nothing is moved: the subscriptions stay,
    served here, and the report says so.
    """
    a = cluster["a"]
    watchers(a, (ALICE, BOB))
    cluster.cut("a", "b")
    cluster.cut("a", "c")
    done = consoleOf(a).drain(grace=0)
    cluster.advance(0)
    report = result(done)
    assert (report["handedOver"], report["remaining"], report["peers"]) == (0, 1, [])
    assert a.manager.draining and len(a.manager.subscriptions) == 1


def test_drainingManagerAdoptsNothing(cluster):
    """
    While a manager drains, a dead peer's subscriptions go to the
    managers that stay.
    """
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    watchers(c, (ALICE, BOB), (CAROL, BOB))
    a.manager.setDraining(True)
    c.crash()
    cluster.cut("a", "c")
    cluster.cut("b", "c")
    cluster.advance(10.0)
    assert a.manager.subscriptions == {} and len(b.manager.subscriptions) == 2
    assert {r.owner for r in result(cluster.shared.loadSubscriptions())} == {"b"}


def test_takeOverRefusesBadItems(cluster):
    """
    takeOver is a peer's call: anything but [id, stale] pairs is refused,
    and only rows the store gives the callee are served.
    """
    peer = LocalPeer(cluster["b"].group, "a")
    verifyObject(IPeer, peer)
    for bad in ("x", [["id"]], [["id", "yes"]], [[1, True]], [["i", True]] * 1001):
        with pytest.raises(ValueError):
            result(peer.takeOver(bad))
    watchers(cluster["a"], (ALICE, BOB))
    [sid] = cluster["a"].manager.subscriptions
    # Still a's in the store: b does not take it.
    assert result(peer.takeOver([[sid, False]])) == 0
    assert cluster["b"].manager.subscriptions == {}


# The channel's commands and protocol.


class Answers:
    """
    A control connection over a StringTransport; C{send} a request, read
    the answers written.
    """

    def __init__(self, commands: Commands, uid: Optional[int] = 1000) -> None:
        self.transport = StringTransport()
        self.protocol = ControlProtocol(commands, lambda peer: peer == 1000, lambda transport: uid)
        self.protocol.makeConnection(self.transport)

    def send(self, data: Any) -> None:
        line = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.protocol.dataReceived(line + b"\n")

    def read(self) -> List[Dict[str, Any]]:
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return [json.loads(line) for line in lines]


def test_commandsCheckTheirArguments(cluster):
    commands = Commands(consoleOf(cluster["a"]), "a", "manager")
    for name, args in (
        ("nope", {}),
        ("presentities", {"limit": 0}),
        ("presentities", {"limit": "9"}),
        ("subscriptions", {"after": "x"}),
        ("presentity", {}),
        ("terminate", {}),
        ("terminate", {"ids": ["x"], "watcher": ALICE}),
        ("terminate", {"ids": "x"}),
        ("terminate", {"watcher": ALICE, "reason": "bogus"}),
        ("drain", {"grace": -1}),
        ("stats", []),
    ):
        failure = []
        commands.run(name, args).addErrback(failure.append)
        assert failure and failure[0].check(CommandError) and failure[0].value.code == "usage", (name, args)


def test_protocolAnswersEachRequestByIdentifier(cluster):
    """
    One JSON answer per request line, with its id and the node name;
    refused requests get an error code, and a slow command (a drain)
    does not hold up the others.
    """
    a = cluster["a"]
    watchers(a, (ALICE, BOB), (CAROL, BOB))
    channel = Answers(Commands(consoleOf(a), "a", "manager"))
    channel.send({"id": 1, "command": "hello"})
    channel.send({"id": 2, "command": "drain", "args": {"grace": 1}})
    channel.send({"id": 3, "command": "subscriptions", "args": {"watcher": ALICE}})
    channel.send({"id": 4, "command": "terminate", "args": {"ids": ["gone"]}})
    channel.send(b"{not json")
    channel.send({"id": 5, "command": "presentity", "args": {"aor": BOB}})
    hello, subs, terminated, bad, pres = channel.read()
    assert hello["result"]["node"] == "a" and "drain" in hello["result"]["commands"]
    assert (subs["id"], subs["node"], [s["presentity"] for s in subs["result"]]) == (3, "a", [BOB])
    assert terminated["result"] == {"terminated": 0, "notFound": ["gone"], "reason": "deactivated"}
    assert bad["ok"] is False and bad["error"]["code"] == "usage"
    assert pres["result"]["aor"] == BOB and len(pres["result"]["watchers"]) == 2
    cluster.advance(1.0)
    [drained] = channel.read()
    assert drained["id"] == 2 and drained["result"]["handedOver"] == 2


def test_protocolRefusesOtherUsers(cluster):
    channel = Answers(Commands(consoleOf(cluster["a"]), "a", "manager"), uid=4242)
    [refusal] = channel.read()
    assert refusal["ok"] is False and "4242" in refusal["error"]["message"]
    assert channel.transport.disconnecting


def test_notRunningIsItsOwnCode():
    root = service.MultiService()
    channel = Answers(Commands(Console(root, None), "dispatcher", "dispatcher"))
    channel.send({"id": 1, "command": "presentities"})
    [answer] = channel.read()
    assert answer["error"]["code"] == "not-running"


# The CLI's exit statuses and output.


@pytest.mark.parametrize(
    "command, answers, status",
    [
        ("terminate", [{"terminated": 1, "notFound": []}], 0),
        ("terminate", [{"terminated": 0, "notFound": ["x"]}], livecli.EXIT_NOT_FOUND),
        ("terminate", [{"terminated": 1, "notFound": ["x", "y"]}, {"terminated": 1, "notFound": ["x"]}], livecli.EXIT_NOT_FOUND),
        ("terminate", [{"terminated": 1, "notFound": ["y"]}, {"terminated": 1, "notFound": ["x"]}], 0),
        ("refresh-watchers", [{"watchers": 0}], livecli.EXIT_NOT_FOUND),
        ("drain", [{"remaining": 0, "failed": 0}], 0),
        ("drain", [{"remaining": 2, "failed": 0}], livecli.EXIT_FAILED),
        ("status", [{"healthy": True}, {"healthy": False}], livecli.EXIT_UNHEALTHY),
    ],
)
def test_exitStatuses(command, answers, status):
    assert livecli._status(command, {str(i): a for i, a in enumerate(answers)}, [], [], len(answers)) == status


def test_exitStatusesOfRefusals():
    notRunning = livecli.RemoteError("not-running", "no manager")
    notFound = livecli.RemoteError("not-found", "no such")
    assert livecli._status("presentities", {}, [], [("d", notRunning)], 1) == livecli.EXIT_NOT_RUNNING
    assert livecli._status("presentities", {}, [{"aor": BOB}], [("d", notRunning)], 2) == 0
    assert livecli._status("presentity", {}, [], [("a", notFound)], 1) == livecli.EXIT_NOT_FOUND
    assert livecli._status("stats", {}, [], [("a", livecli.RemoteError("failed", "x"))], 2) == livecli.EXIT_FAILED


def test_noSocketIsUnreachable():
    options = livecli.LiveOptions()
    options.parseOptions(["stats"])
    with pytest.raises(livecli.LiveError) as caught:
        livecli.runLive(options, [], io.StringIO(), io.StringIO())
    assert caught.value.status == livecli.EXIT_UNREACHABLE
    err = io.StringIO()
    assert livecli.runLive(options, ["/nonexistent/a.control", "/nonexistent/b.control"], io.StringIO(), err) == 3
    assert err.getvalue().count("cannot reach the control channel /nonexistent/") == 2
    with pytest.raises(usage.UsageError):
        livecli.LiveOptions().parseOptions(["--json", "--table", "stats"])


def test_tableOutput():
    out = io.StringIO()
    livecli._write(out, [{"node": "m1", "aor": BOB, "watchers": 2}, {"node": "m2", "aor": ALICE, "watchers": 10}], True)
    assert out.getvalue().splitlines() == [
        "node  aor                     watchers",
        "m1    sip:bob@example.test    2",
        "m2    sip:alice@example.test  10",
    ]
    out = io.StringIO()
    livecli._write(out, {"m1": {"healthy": True, "cluster": {"peers": {"m2": True}}}}, True)
    assert out.getvalue() == "== m1 ==\nhealthy: True\ncluster:\n  peers:\n    m2: True\n"
    out = io.StringIO()
    livecli._write(out, [], True)
    assert out.getvalue() == "(none)\n"


# The channel on a real socket, with the CLI.


def _config(workdir: str, path: str) -> str:
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        f.write(
            "[server]\ndatabase = sqlite:///%s\n[manager]\nnotify_min_interval = 0\n"
            "[billing]\nno_auth_domains = example.test\n[control]\nsocket = %s\n"
            % (os.path.join(workdir, "presence.sqlite"), path)
        )
    return config


def _cli(*argv: str) -> Any:
    """
    presence-admin in a thread (it blocks; the server runs on this
    reactor): C{(status, output, errors)}.
    """
    from twisted.internet import threads

    from presence.admin.cli import run

    def call() -> Any:
        out, err = io.StringIO(), io.StringIO()
        status = run(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    return threads.deferToThread(call)


@pytest_twisted.inlineCallbacks
def test_controlSocketWithTheCLI(tmp_path):
    """
    A server with [control] socket: the socket has mode 0600; the CLI,
    pointed at the configuration, lists a watcher and ends its
    subscription, whose watcher gets the final NOTIFY; a second server
    may not take the socket; a stale socket file is replaced.
    """
    from twisted.internet import reactor

    workdir = str(tmp_path)
    path = os.path.join(workdir, "presence.control")
    config = _config(workdir, path)
    options = Options()
    options.parseOptions(["--config", config, "--domain", "example.test", "--listen", "udp:0:interface=127.0.0.1"])
    root = makeService(options)
    root.startService()
    ua = UserAgent()
    udp = reactor.listenUDP(0, ua, interface="127.0.0.1")
    try:
        yield root.getServiceNamed("manager").whenReady()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
        sipPort = root.getServiceNamed("sip").addresses[0][2]
        ua.send(newRequest("SUBSCRIBE", BOB, ua.port, Event="presence", Expires="300", fromURI=ALICE), sipPort)
        got = [(yield ua.next()), (yield ua.next())]
        ua.send(answer([m for m in got if isinstance(m, Request)][0]), sipPort)

        status, out, err = yield _cli("--config", config, "live", "watchers", BOB)
        assert status == 0, err
        [listed] = json.loads(out)
        assert (listed["node"], listed["watcher"], listed["state"]) == ("manager", ALICE, "active")
        status, out, err = yield _cli("live", "-s", str(tmp_path / "gone.control"), "-s", path, "stats")
        assert status == livecli.EXIT_UNREACHABLE and "gone.control" in err
        assert json.loads(out)["manager"]["subscriptions"] == 1
        status, out, err = yield _cli("live", "--socket", path, "--table", "presentities")
        assert status == 0 and out.split("\n")[1].split() == ["manager", BOB, "1", "1", "0", "False"], out

        status, out, err = yield _cli("--config", config, "live", "terminate", "--watcher", ALICE)
        assert status == 0 and json.loads(out)["manager"]["terminated"] == 1, (out, err)
        final = yield ua.next()
        assert final.method == "NOTIFY" and final.header("subscription-state") == "terminated;reason=deactivated"
        ua.send(answer(final), sipPort)
        status, out, err = yield _cli("--config", config, "live", "terminate", "--watcher", ALICE)
        assert status == livecli.EXIT_NOT_FOUND

        second = ControlService(Config(controlSocket=path), "all")
        second.setServiceParent(service.MultiService())
        with pytest.raises(ControlError, match="in use by another running process"):
            second.startService()
    finally:
        yield udp.stopListening()
        yield root.stopService()
    assert not os.path.exists(path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    status, out, err = yield _cli("live", "--socket", path, "stats")
    assert status == livecli.EXIT_UNREACHABLE and "cannot reach the control channel" in err
    control = ControlService(Config(controlSocket=path), "dispatcher")
    control.setServiceParent(service.MultiService())
    control.startService()
    try:
        status, out, err = yield _cli("live", "--socket", path, "presentities")
        assert status == livecli.EXIT_NOT_RUNNING and "(not-running)" in err
    finally:
        yield control.stopService()


def test_controlProblems(tmp_path):
    assert controlProblem(Config()) is None
    assert "does not exist" in controlProblem(Config(controlSocket=str(tmp_path / "no" / "c")))
    assert "under 100 bytes" in controlProblem(Config(controlSocket="/" + "x" * 120))
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(ControlError, match="not a socket"):
        clearStaleSocket(str(regular))
    assert problems(Config(controlSocket=str(regular)), database=False) == [
        "[control] socket = %r exists and is not a socket" % (str(regular),)
    ]
    svc = ControlService(Config(controlSocket=str(tmp_path / "c")), "manager")
    svc.address = "x"
    copy = pickle.loads(pickle.dumps(svc))
    assert copy.config == svc.config and copy.role == "manager" and copy.address is None
