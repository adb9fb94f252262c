"""
A dispatcher in front of three managers, each a real C{twistd presence}
process on its own loopback address: our client and sipp subscribe and
publish through the dispatcher over UDP and TCP; refreshes and
un-SUBSCRIBEs find their way back to the manager that owns the dialog; a
closed TCP flow fails fast; a manager killed with SIGKILL is taken out
within two seconds and put back when it returns.

Layout (one SQLite file per manager)::

    127.0.0.1  the user agents (our client, sipp)
    127.0.0.2  dispatcher A (policy hash) and dispatcher B (round robin)
    127.0.0.3  manager m1, reached over UDP
    127.0.0.4  manager m2, reached over TCP
    127.0.0.5  manager m3, reached over UDP
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional

import pytest

from presence.dispatcher.policy import rendezvous
from presence.sip.headers import NameAddr
from presence.sip.message import Request, Response
from presence.sip.parser import StreamFramer, parseMessage
from presence.sip.uri import SipURI
from tests.conftest import requireTool, skipOrFail
from tests.serverprocess import ServerProcess
from tests.sipclient import TCPClient, UDPClient, answer, newRequest

HERE = os.path.dirname(os.path.abspath(__file__))
DISPATCHER = "127.0.0.2"
MANAGERS = {"m1": ("127.0.0.3", "udp"), "m2": ("127.0.0.4", "tcp"), "m3": ("127.0.0.5", "udp")}
NAMES = sorted(MANAGERS)

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="%s"><status><basic>%s</basic></status></tuple></presence>\n'
)


def _loopbackUsable() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((DISPATCHER, 0))
        return True
    except OSError:
        return False


class Cluster:
    """
    The processes, and how to (re)start a manager.
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.managers: Dict[str, ServerProcess] = {}
        self.ports: Dict[str, int] = {}
        self.dispatchers: Dict[str, ServerProcess] = {}

    def startManager(self, name: str, port: int = 0) -> ServerProcess:
        host = MANAGERS[name][0]
        config = os.path.join(self.workdir, name + ".ini")
        with open(config, "w") as f:
            # These user agents do not authenticate: example.test is
            # trusted here (authentication is billing's test).
            f.write(
                "[manager]\nnode = %s\nnotify_min_interval = 0.2\n"
                "[billing]\nno_auth_domains = example.test\n" % (name,)
            )
        process = ServerProcess(
            self.workdir,
            [
                "--role=manager",
                "--config", config,
                "--database", "sqlite:///" + os.path.join(self.workdir, name + ".sqlite"),
                "--listen", "udp:%d:interface=%s" % (port, host),
                "--listen", "tcp:%d:interface=%s" % (port, host),
                "--advertise", host,
                "--domain", "example.test",
            ],
        ).start("Subscription manager %s ready" % (name,))
        self.managers[name] = process
        self.ports[name] = process.ports["UDP"]
        assert process.ports["TCP"] == process.ports["UDP"]
        return process

    def startDispatcher(self, label: str, policy: str) -> ServerProcess:
        config = os.path.join(self.workdir, "dispatcher-%s.ini" % (label,))
        managers = " ".join(
            "%s=%s:%s:%d" % (name, MANAGERS[name][1], MANAGERS[name][0], self.ports[name]) for name in NAMES
        )
        secret = os.path.join(self.workdir, "route-secret")
        with open(secret, "w") as f:
            f.write("cluster test secret, shared by both dispatchers\n")
        os.chmod(secret, 0o600)
        with open(config, "w") as f:
            f.write(
                "[dispatcher]\nmanagers = %s\npolicy = %s\nping_interval = 0.5\ndead_after = 1.5\n"
                "secret_file = %s\n" % (managers, policy, secret)
            )
        process = ServerProcess(
            self.workdir,
            [
                "--role=dispatcher",
                "--config", config,
                "--listen", "udp:0:interface=" + DISPATCHER,
                "--listen", "tcp:0:interface=" + DISPATCHER,
                "--advertise", DISPATCHER,
            ],
        ).start("Dispatcher ready")
        for name in NAMES:
            process.waitFor("Manager %s is up" % (name,))
        self.dispatchers[label] = process
        return process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not _loopbackUsable():
        skipOrFail("cannot bind 127.0.0.2: the loopback interface does not answer for 127/8")
    cluster = Cluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        for name in NAMES:
            cluster.startManager(name)
        cluster.startDispatcher("A", "hash")
        cluster.startDispatcher("B", "round_robin")
        yield cluster
    finally:
        problems = []
        for process in list(cluster.dispatchers.values()) + list(cluster.managers.values()):
            try:
                process.stopCleanly()
            except AssertionError as e:
                problems.append(str(e)[-2000:])
        assert not problems, problems


# User agents on 127.0.0.1 talking to a dispatcher on 127.0.0.2.


class UDPAgent(UDPClient):
    def __init__(self, port: int) -> None:
        UDPClient.__init__(self, port)
        self.server = (DISPATCHER, port)

    def receiveFrom(self) -> Any:
        data, address = self.sock.recvfrom(65535)
        return parseMessage(data), address


class TCPAgent(TCPClient):
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((DISPATCHER, port), timeout=timeout)
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.pending: List[object] = []


def _agent(dispatcher: ServerProcess, transport: str) -> Any:
    if transport == "UDP":
        return UDPAgent(dispatcher.ports["UDP"])
    return TCPAgent(dispatcher.ports["TCP"])


def _notify(client: Any) -> Request:
    """
    Take the next NOTIFY and answer it 200 as a UA does, where it came
    from (RFC 3261 §18.2.2): the dispatcher that relayed it, which need
    not be the one the watcher subscribed through (a restarted manager
    sends over whichever has connected to it again; their routes are
    signed with one secret).
    """
    if isinstance(client, UDPAgent):
        message, source = client.receiveFrom()
    else:
        message, source = client.receiveMessage(), None
    assert isinstance(message, Request) and message.method == "NOTIFY", message
    if source is None:
        client.send(answer(message))
    else:
        client.sock.sendto(answer(message).toBytes(), source)
    return message


def _routeParams(value: str) -> Dict[str, Optional[str]]:
    return SipURI.fromString(NameAddr.fromString(value).uri).params


def _subscribe(client: Any, transport: str, aor: str, expires: str = "300") -> Request:
    request = newRequest(
        "SUBSCRIBE", aor, client.port, transport, Event="presence", Expires=expires,
        Accept="application/pidf+xml", fromURI="sip:dave@example.test",
    )
    client.send(request)
    return request


def _inDialog(client: Any, transport: str, subscribe: Request, ok: Response, cseq: int, expires: str,
              routed: bool = True) -> Request:
    """
    A refresh or un-SUBSCRIBE as a user agent sends it: to the remote
    target (the 200's Contact) along the route set (its Record-Route).
    """
    request = newRequest(
        "SUBSCRIBE", NameAddr.fromString(ok.header("contact") or "").uri, client.port, transport,
        Event="presence", Expires=expires, fromURI="sip:dave@example.test",
    )
    request.setHeader("Call-ID", subscribe.callId or "")
    request.setHeader("From", subscribe.header("from") or "")
    request.setHeader("To", ok.header("to") or "")
    request.setHeader("CSeq", "%d SUBSCRIBE" % (cseq,))
    if routed:
        for value in ok.headerValues("record-route"):
            request.addHeader("Route", value)
    client.send(request)
    return request


def _publish(client: Any, transport: str, aor: str, basic: str) -> Response:
    body = (PIDF % (aor, "t1", basic)).encode()
    client.send(newRequest(
        "PUBLISH", aor, client.port, transport, body=body, Event="presence",
        Expires="120", Content_Type="application/pidf+xml", fromURI=aor,
    ))
    response = client.receive()
    assert response.code == 200 and response.header("sip-etag"), response
    return response


def _aorOn(manager: str, prefix: str, among: List[str] = NAMES) -> str:
    """
    A presentity that the hash policy puts on C{manager}.
    """
    for i in range(10000):
        aor = "sip:%s-%d@example.test" % (prefix, i)
        if rendezvous(among, aor) == manager:
            return aor
    raise AssertionError("no AOR hashes to " + manager)


def _waitAfter(process: ServerProcess, text: str, start: int, timeout: float = 10.0) -> str:
    """
    Wait for a line containing C{text} among those the process logs after
    its first C{start} lines (L{ServerProcess.waitFor} searches them all).
    """
    deadline = time.monotonic() + timeout
    with process._changed:
        while True:
            for line in process.output[start:]:
                if text in line:
                    return line
            if process._eof:
                raise AssertionError("process exited before %r:\n%s" % (text, process.log()))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for %r:\n%s" % (text, process.log()))
            process._changed.wait(remaining)


# The tests.


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_watcherSeesPublicationThroughDispatcher(cluster, transport):
    """
    Watcher and publisher of one presentity meet on one manager (hash
    policy); the NOTIFYs reach the watcher through the dispatcher, over
    the flow it subscribed on; refresh and un-SUBSCRIBE follow the route.
    """
    dispatcher = cluster.dispatchers["A"]
    aor = "sip:carol-%s@example.test" % (transport.lower(),)
    owner = rendezvous(NAMES, aor)
    watcher = _agent(dispatcher, transport)
    publisher = _agent(dispatcher, transport)
    try:
        subscribe = _subscribe(watcher, transport, aor)
        ok = watcher.receive()
        assert ok.code == 200 and ok.header("expires") == "300", ok
        [recordRoute] = ok.headerValues("record-route")
        params = _routeParams(recordRoute)
        assert params["m"] == owner and params["t"] == transport.lower()
        uri = SipURI.fromString(NameAddr.fromString(recordRoute).uri)
        assert uri.host == DISPATCHER and uri.port == dispatcher.ports[transport]
        assert [v.host for v in ok.vias()] == ["127.0.0.1"]
        if transport == "UDP":
            first, source = watcher.receiveFrom()
            assert source == (DISPATCHER, dispatcher.ports["UDP"])
            watcher.send(answer(first))
        else:
            first = _notify(watcher)
        assert first.header("subscription-state") == "active;expires=300"
        assert b"<basic>closed</basic>" in first.body
        assert first.topVia().host == DISPATCHER and len(first.vias()) == 2

        _publish(publisher, transport, aor, "open")
        second = _notify(watcher)
        assert b"<basic>open</basic>" in second.body

        _inDialog(watcher, transport, subscribe, ok, 2, "600")
        refreshed = watcher.receive()
        assert refreshed.code == 200 and refreshed.header("expires") == "600", refreshed
        assert _notify(watcher).header("subscription-state").startswith("active;expires=")

        _inDialog(watcher, transport, subscribe, ok, 3, "0")
        assert watcher.receive().code == 200
        final = _notify(watcher)
        assert final.header("subscription-state") == "terminated;reason=timeout"
    finally:
        watcher.close()
        publisher.close()


def test_routeKeepsTheDialogOnItsManager(cluster):
    """
    Through the round-robin dispatcher every new request goes to the next
    manager, yet refreshes carrying the route all reach the dialog's owner;
    the same refresh without the route goes elsewhere and gets 481.
    """
    dispatcher = cluster.dispatchers["B"]
    watcher = _agent(dispatcher, "UDP")
    try:
        subscribe = _subscribe(watcher, "UDP", "sip:rr-watch@example.test")
        ok = watcher.receive()
        assert ok.code == 200, ok
        owner = _routeParams(ok.header("record-route") or "")["m"]
        _notify(watcher)
        for cseq in (2, 3, 4):
            _inDialog(watcher, "UDP", subscribe, ok, cseq, "300")
            response = watcher.receive()
            assert response.code == 200, response
            _notify(watcher)
        _inDialog(watcher, "UDP", subscribe, ok, 5, "300", routed=False)
        assert watcher.receive().code == 481
    finally:
        watcher.close()


def test_notifyToAClosedFlowFailsFast(cluster):
    """
    The watcher's TCP connection closes: the manager's next NOTIFY gets
    430 from the dispatcher at once, not a timeout 32 seconds later.
    """
    dispatcher = cluster.dispatchers["A"]
    aor = "sip:gone-tcp@example.test"
    owner = rendezvous(NAMES, aor)
    manager = cluster.managers[owner]
    watcher = _agent(dispatcher, "TCP")
    publisher = _agent(dispatcher, "UDP")
    try:
        _subscribe(watcher, "TCP", aor)
        assert watcher.receive().code == 200
        _notify(watcher)
        watcher.close()
        start = len(manager.output)
        began = time.monotonic()
        _publish(publisher, "UDP", aor, "open")
        line = _waitAfter(manager, "failed: 430 Flow Failed", start, timeout=10)
        assert time.monotonic() - began < 5, line
    finally:
        publisher.close()


@pytest.mark.parametrize("scenario", ["watch_publish.xml", "watch_publish_routed.xml"])
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sippThroughDispatcher(cluster, tmp_path, transport, scenario):
    """
    sipp subscribes, publishes, sees its publication and unsubscribes,
    through the dispatcher (hash policy), five presentities per run.
    """
    sipp = requireTool("sipp")
    dispatcher = cluster.dispatchers["A"]
    port = dispatcher.ports["UDP" if transport == "u1" else "TCP"]
    result = subprocess.run(
        [
            sipp, "%s:%d" % (DISPATCHER, port),
            "-sf", os.path.join(HERE, "sipp", scenario),
            "-s", "sipp-%s-%s" % (transport, scenario.split(".")[0]),
            "-t", transport, "-i", "127.0.0.1", "-p", str(_freePort()),
            "-m", "5", "-l", "5", "-timeout", "30s", "-timeout_error",
            "-nostdin", "-trace_err", "-error_file", str(tmp_path / "errors.log"),
        ],
        capture_output=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
    assert result.returncode == 0, errors[-3000:] + result.stderr.decode("utf-8", "replace")[-2000:]


def test_deadManagerTakenOutAndPutBack(cluster):
    """
    SIGKILL two managers (one reached over TCP, one over UDP): the
    dispatcher takes each out within two seconds, sends their presentities
    to the survivor, forwards an in-dialog request of a dead manager to a
    live one, and puts both back when they have restarted; the restarted
    manager still notifies its watcher through the dispatcher.
    """
    dispatcher = cluster.dispatchers["A"]
    aor = _aorOn("m2", "victim")
    watcher = _agent(dispatcher, "UDP")
    publisher = _agent(dispatcher, "UDP")
    try:
        subscribe = _subscribe(watcher, "UDP", aor, "600")
        ok = watcher.receive()
        assert ok.code == 200 and _routeParams(ok.header("record-route") or "")["m"] == "m2"
        _notify(watcher)

        start = len(dispatcher.output)
        for name in ("m2", "m3"):
            killed = time.monotonic()
            assert cluster.managers[name].stop(signal.SIGKILL) == -signal.SIGKILL
            _waitAfter(dispatcher, "Manager %s is down" % (name,), start, timeout=10)
            elapsed = time.monotonic() - killed
            assert elapsed < 2.0, "%s taken out after %.2f s" % (name, elapsed)

        # New requests go to the survivor.
        for prefix in ("to-m2", "to-m3"):
            target = _aorOn(prefix[-2:], prefix)
            other = _agent(dispatcher, "UDP")
            try:
                _subscribe(other, "UDP", target, "60")
                response = other.receive()
                assert response.code == 200, response
                assert _routeParams(response.header("record-route") or "")["m"] == "m1"
                _notify(other)
            finally:
                other.close()

        # The dead owner's in-dialog request is answered by a live manager
        # (481 until managers adopt each other's dialogs), not left to time out.
        began = time.monotonic()
        _inDialog(watcher, "UDP", subscribe, ok, 2, "600")
        assert watcher.receive().code == 481
        assert time.monotonic() - began < 2

        start = len(dispatcher.output)
        for name in ("m2", "m3"):
            cluster.startManager(name, cluster.ports[name])
            _waitAfter(dispatcher, "Manager %s is up" % (name,), start, timeout=10)

        # m2 is back: its presentities go to it again, and the subscription
        # it reloaded from its database still reaches the watcher.  At start
        # m2 sent it the state it reloaded ([manager] notify_on_start; the
        # dispatcher relays it again until answered, and this watcher was
        # not reading yet), unless the publication came first.
        _publish(publisher, "UDP", aor, "open")
        notify = _notify(watcher)
        onStart = notify.cseq().number
        while b"<basic>open</basic>" not in notify.body:
            assert b"<basic>closed</basic>" in notify.body and notify.cseq().number == onStart
            notify = _notify(watcher)
        fresh = _agent(dispatcher, "UDP")
        try:
            _subscribe(fresh, "UDP", _aorOn("m2", "back"), "60")
            response = fresh.receive()
            assert response.code == 200 and _routeParams(response.header("record-route") or "")["m"] == "m2"
        finally:
            fresh.close()
    finally:
        watcher.close()
        publisher.close()


def _freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
