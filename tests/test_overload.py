"""
Overload shedding: L{presence.manager.overload.OverloadGuard} driven by a
L{Clock}, and the manager answering new SUBSCRIBE and PUBLISH 503 with
Retry-After while it is overloaded, still serving in-dialog requests and
publication refreshes; the UDP intake (L{presence.sip.intake}) ordering a
turn's datagrams and shedding new requests by their wait in the kernel.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Dict

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport

from presence.manager.overload import OverloadGuard
from presence.sip.core import SIPCore
from presence.sip.message import Request
from presence.sip.intake import ACCEPT, DROP, REFUSE, Shedder, isNewWork, refusal
from presence.sip.parser import DEFAULT_LIMITS, parseMessage
from presence.sip.transport import SIPDatagramProtocol
from tests.harness import PUBLISHER, FakeNetwork, HeldStore, publish, refresh, subscribe
from tests.serverprocess import ServerProcess
from tests.sipclient import UDPClient, answer, newRequest
from tests.test_manager import make  # noqa: F401 (fixture)


class Backlog:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_backlogSignal() -> None:
    backlog = Backlog()
    guard = OverloadGuard(Clock(), backlog, maxBacklog=100, maxLag=0, retryAfter=5)
    assert not guard.overloaded()
    backlog.value = 101
    assert guard.overloaded() and guard.overloaded()
    backlog.value = 100
    assert not guard.overloaded()
    backlog.value = 500
    assert guard.overloaded()
    assert guard.counters == {"shed": 3, "episodes": 2}


def test_backlogSignalOff() -> None:
    backlog = Backlog()
    backlog.value = 10 ** 9
    guard = OverloadGuard(Clock(), backlog, maxBacklog=0, maxLag=0, retryAfter=5)
    assert not guard.overloaded()


def test_lagSignal() -> None:
    """
    The probe runs every interval; when it runs late by more than maxLag
    (the reactor was busy), new work is refused until it runs on time.
    A probe overdue right now counts too.
    """
    clock = Clock()
    guard = OverloadGuard(clock, Backlog(), maxBacklog=0, maxLag=1.0, retryAfter=5, interval=0.1)
    guard.start()
    for _ in range(10):
        clock.advance(0.1)
    assert guard.lag == pytest.approx(0.0, abs=1e-9) and not guard.overloaded()
    # The reactor is stuck in one turn for 1.5 s: the probe due 0.1 s
    # after the last one is 1.4 s overdue, and says so before it runs.
    clock.rightNow += 1.5
    assert guard.currentLag() == pytest.approx(1.4)
    assert guard.overloaded()
    clock.advance(0)  # the late probe runs
    assert guard.lag == pytest.approx(1.4)
    assert guard.overloaded()
    clock.advance(0.1)  # the next one is on time
    assert not guard.overloaded()
    guard.stop()
    assert clock.getDelayedCalls() == []


def test_lagSignalOffStartsNoTimer() -> None:
    clock = Clock()
    guard = OverloadGuard(clock, Backlog(), maxBacklog=10, maxLag=0, retryAfter=5)
    guard.start()
    assert clock.getDelayedCalls() == []


def test_newRequestsShedInDialogServed(make: Any) -> None:
    """
    With the store's backlog past max_pending_writes: a new SUBSCRIBE and
    an initial PUBLISH get 503 with Retry-After and create nothing; a
    refresh of an existing subscription, an un-SUBSCRIBE and a refresh
    of a publication are still served.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store, maxPendingWrites=1000, overloadRetryAfter=7)
    sub, ok, _ = h.subscribed(Expires="600")
    etag, _ = h.published()
    store.pendingWrites = 5000

    h.receive(subscribe("sip:carol@example.test"))
    (refused,) = h.responses()
    assert (refused.code, refused.header("retry-after")) == (503, "7")
    h.receive(publish("sip:bob@example.test", body=b"<x/>"), PUBLISHER)
    (refused,) = h.responses()
    assert refused.code == 503
    assert len(h.manager.subscriptions) == 1 and list(h.manager.publications) == [etag]

    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    (ok2,) = h.responses()
    assert ok2.code == 200
    h.receive(refresh(sub, ok, 2, Expires="600"))
    (ok3,), _ = h.split()
    assert ok3.code == 200
    assert h.manager.overload.counters["shed"] == 2

    store.pendingWrites = 0
    h.receive(subscribe("sip:carol@example.test"))
    (accepted,), _ = h.split()
    assert accepted.code == 200


# The UDP intake (presence.sip.intake): the wait in the kernel decides.


def test_shedderByDelay() -> None:
    """
    Once new requests have waited more than maxDelay for a whole
    interval, those that waited too long are refused while refusals cost
    at most rejectRatio of the served ones (and a burst saved up), and
    dropped beyond that; one that waited less is served and ends it.
    """
    clock = Clock()
    clock.advance(100.0)
    shedder = Shedder(clock, maxDelay=0.2, rejectRatio=0.5, burst=2, interval=1.0, memory=10.0)
    assert shedder.decide(99.9) == ACCEPT and not shedder.shedding
    # Above maxDelay, but not yet for an interval: a burst draining.
    assert shedder.decide(99.0) == ACCEPT
    clock.advance(0.9)
    assert shedder.decide(99.5) == ACCEPT and not shedder.shedding
    clock.advance(0.1)
    assert [shedder.decide(99.5) for _ in range(3)] == [REFUSE, REFUSE, DROP]
    assert shedder.shedding
    # A request that waited little is served and stops the shedding; two
    # served requests earn one refusal.  Within the memory of the episode
    # a long wait sheds again at once.
    assert shedder.decide(101.0) == ACCEPT and not shedder.shedding
    assert shedder.decide(100.9) == ACCEPT
    assert [shedder.decide(100.0), shedder.decide(100.0)] == [REFUSE, DROP]
    # Past the memory of the last shedding, the episode is over, and
    # shedding waits for a whole interval again.
    clock.advance(10.0)
    assert shedder.decide(111.0) == ACCEPT
    clock.advance(10.0)
    assert shedder.decide(121.0) == ACCEPT and shedder.decide(100.0) == ACCEPT
    clock.advance(1.0)
    assert shedder.decide(100.0) == REFUSE and shedder.shedding
    assert shedder.counters == {"accepted": 8, "refused": 4, "dropped": 2, "episodes": 2}


def test_shedderBurstDrainingNotShed() -> None:
    """
    Waits above maxDelay broken by one below it never start shedding.
    """
    clock = Clock()
    clock.advance(100.0)
    shedder = Shedder(clock, maxDelay=0.2, interval=1.0)
    for _ in range(10):
        clock.advance(0.6)
        now = clock.seconds()
        assert shedder.decide(now - 0.5) == ACCEPT
        assert shedder.decide(now) == ACCEPT
    assert shedder.counters["episodes"] == 0


def test_shedderOff() -> None:
    clock = Clock()
    clock.advance(100.0)
    shedder = Shedder(clock, maxDelay=0)
    assert shedder.decide(0.0) == ACCEPT


@pytest.mark.parametrize(
    "data, new",
    [
        (b"SUBSCRIBE sip:a@x SIP/2.0\r\nTo: <sip:a@x>\r\nFrom: <sip:b@x>;tag=1\r\n\r\n", True),
        (b"PUBLISH sip:a@x SIP/2.0\r\nt: <sip:a@x>\r\n\r\n", True),
        (b"SUBSCRIBE sip:a@x SIP/2.0\r\nTo: <sip:a@x>;tag=9\r\n\r\n", False),
        (b"SUBSCRIBE sip:a@x SIP/2.0\r\nt:<sip:a@x> ; TAG=9\r\n\r\n", False),
        (b"PUBLISH sip:a@x SIP/2.0\r\nTo: <sip:a@x>\r\nSIP-If-Match: e1\r\n\r\n", False),
        # A tag in the body is no To tag.
        (b"SUBSCRIBE sip:a@x SIP/2.0\r\nTo: <sip:a@x>\r\n\r\nTo: x;tag=1\r\n", True),
        (b"NOTIFY sip:a@x SIP/2.0\r\nTo: <sip:a@x>\r\n\r\n", False),
        (b"SIP/2.0 200 OK\r\nCSeq: 1 SUBSCRIBE\r\n\r\n", False),
    ],
)
def test_isNewWork(data: bytes, new: bool) -> None:
    assert isNewWork(data) is new


def _subscribe(n: int, toTag: str = "") -> bytes:
    return (
        "SUBSCRIBE sip:p%d@example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-%d\r\n"
        "Max-Forwards: 70\r\nTo: <sip:p%d@example.test>%s\r\n"
        "From: <sip:w@example.test>;tag=f%d\r\nCall-ID: c%d\r\nCSeq: 1 SUBSCRIBE\r\n"
        "Event: presence\r\nContact: <sip:w@192.0.2.10>\r\nContent-Length: 0\r\n\r\n"
        % (n, n, n, ";tag=t%d" % (n,) if toTag else "", n, n)
    ).encode()


class Served:
    """
    A SUBSCRIBE handler that records what reached it and answers 200.
    """

    def __init__(self, core: SIPCore) -> None:
        self.core = core
        self.seen: list = []

    def __call__(self, request: Any, tx: Any) -> None:
        self.seen.append(request.header("call-id"))
        self.core.respond(tx, 200)


def _intake(burst: int = 100) -> Any:
    clock = Clock()
    clock.advance(1000.0)
    core = SIPCore(clock)
    network = FakeNetwork()
    core.udp = network  # type: ignore[assignment]
    core.retryAfter = 9
    served = Served(core)
    core.addHandler("SUBSCRIBE", served)
    shedder = Shedder(clock, 0.2, 0.5, burst)
    # Waits have been above maxDelay for an interval: shedding.
    shedder.decide(clock.seconds() - 1.0)
    clock.advance(1.0)
    protocol = SIPDatagramProtocol(core, DEFAULT_LIMITS, shedder)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    return clock, core, Sent(network, transport), served, protocol


class Sent:
    """
    What the core sent (through its network) and what the intake sent
    itself (unparsed 503s, through the protocol's transport), parsed.
    """

    def __init__(self, network: FakeNetwork, transport: FakeDatagramTransport) -> None:
        self.network = network
        self.transport = transport

    @property
    def sent(self) -> list:
        raw = [(parseMessage(data), addr[0], addr[1]) for data, addr in self.transport.written]
        return self.network.sent + raw


def test_intakeTurnPrecedence() -> None:
    """
    In one turn an in-dialog request is served before the new ones read
    with it, whatever their order; a new request that waited too long
    gets 503 with Retry-After, a fresh one is served.
    """
    clock, core, network, served, protocol = _intake()
    source = ("192.0.2.10", 5060)
    now = clock.seconds()
    protocol.datagramsReceived([
        (_subscribe(1), source, now - 1.0),
        (_subscribe(2), source, now),
        (_subscribe(3, toTag="t"), source, now - 1.0),
    ])
    assert served.seen == ["c3", "c2"]
    answers = {m.header("call-id"): m for m, _, _ in network.sent}
    assert (answers["c1"].code, answers["c1"].header("retry-after"), answers["c3"].code) == (503, "9", 200)


def test_intakeRetransmissionNotRefused() -> None:
    """
    The retransmission of a request already served, read after a long
    wait, is answered by its transaction (the same 200), not refused.
    """
    clock, core, network, served, protocol = _intake()
    source = ("192.0.2.10", 5060)
    protocol.datagramsReceived([(_subscribe(1), source, clock.seconds())])
    protocol.datagramsReceived([(_subscribe(1), source, clock.seconds() - 2.0)])
    assert [m.code for m, _, _ in network.sent] == [200, 200]
    assert served.seen == ["c1"] and core.counters["retransmissions"] == 1


def test_intakeDropsUnparsedPastTheRefusals() -> None:
    """
    Refusals are answered without parsing, and once there are more of
    them than the shedder allows per request served, the waiting new
    requests are dropped: no answer, no request parsed either way.
    """
    clock, core, network, served, protocol = _intake(burst=1)
    source = ("192.0.2.10", 5060)
    old = clock.seconds() - 1.0
    protocol.datagramsReceived([(_subscribe(n), source, old) for n in range(5)])
    assert [m.code for m, _, _ in network.sent] == [503]
    assert core.counters["requests"] == 0 and core.counters["overloadRefused"] == 1
    assert protocol.shedder is not None and protocol.shedder.counters["dropped"] == 4


def test_refusalUnparsed() -> None:
    """
    The 503 built from the raw request answers it as a parsed one would:
    Via stamped with received and rport and sent to the source port,
    From, Call-ID and CSeq copied, a To tag added, Retry-After.
    """
    data = _subscribe(7).replace(b"branch=", b"rport;branch=")
    key, response, where = refusal(data, "198.51.100.1", 40000, 9, "totag")
    assert key == ("z9hG4bK-7", "192.0.2.10", 5060, "SUBSCRIBE") and where == ("198.51.100.1", 40000)
    message = parseMessage(response)
    via = message.topVia()
    assert (message.code, via.params["rport"], via.params["received"], via.branch) == (
        503, "40000", "198.51.100.1", "z9hG4bK-7")
    assert message.toAddr().tag == "totag" and message.header("retry-after") == "9"
    assert message.header("call-id") == "c7" and message.header("cseq") == "1 SUBSCRIBE"
    # Without rport: to the Via's sent-by port.
    assert refusal(_subscribe(7), "198.51.100.1", 40000, 9, "t")[2] == ("198.51.100.1", 5060)


@pytest.mark.parametrize(
    "old, new",
    [
        (b"branch=z9hG4bK-7", b"branch=2543"),
        (b"192.0.2.10:5060", b"[2001:db8::1]:5060"),
        (b"branch=z9hG4bK-7", b"branch=z9hG4bK-7, SIP/2.0/UDP 192.0.2.11"),
        (b"\r\n\r\n", b"\r\n"),
    ],
)
def test_refusalLeavesTheUnusualToTheParser(old: bytes, new: bytes) -> None:
    assert refusal(_subscribe(7).replace(old, new), "198.51.100.1", 40000, 9, "t") is None


def test_intakeWithoutShedderServesAll() -> None:
    clock, core, network, served, protocol = _intake()
    protocol.shedder = None
    protocol.datagramsReceived([(_subscribe(n), ("192.0.2.10", 5060), 0.0) for n in range(3)])
    assert served.seen == ["c0", "c1", "c2"]


# A real server under a burst of several times its capacity.

BURST = 12000
# Seconds within which, after the burst, a refresh of every existing
# subscription and a new SUBSCRIBE must be answered.  Without shedding,
# the burst's requests queued in the 4 MiB receive buffer are each served
# in full (with a NOTIFY that is never answered) before them: 11 s on a
# loaded 2-core machine, against 1.6 to 2.5 s with it.
SERVED_WITHIN = 6.0


def _burst(port: int, count: int) -> None:
    """
    Send C{count} new SUBSCRIBEs as fast as one socket can, from a socket
    that never reads (its watchers answer no NOTIFY): several times what
    the server can serve in the time.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    local = sock.getsockname()[1]
    template = (
        "SUBSCRIBE sip:b%%d@example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKburst%%d;rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:b%%d@example.test>\r\n"
        "From: <sip:bw%%d@example.test>;tag=b%%d\r\nCall-ID: burst%%d@127.0.0.1\r\n"
        "CSeq: 1 SUBSCRIBE\r\nEvent: presence\r\nExpires: 600\r\n"
        "Contact: <sip:bw@127.0.0.1:%d>\r\nContent-Length: 0\r\n\r\n" % (local, local)
    )
    try:
        for n in range(count):
            data = (template % (n, n, n, n, n, n)).encode()
            while True:
                try:
                    sock.sendto(data, ("127.0.0.1", port))
                    break
                except BlockingIOError:
                    continue
    finally:
        sock.close()


def _until(client: UDPClient, pending: Dict[str, Any], deadline: float) -> Dict[str, Any]:
    """
    Read what the server sends until every request of C{pending} (by
    Call-ID) has its final response or C{deadline} passes, answering each
    NOTIFY 200 as a watcher does.
    """
    answers: Dict[str, Any] = {}
    while len(answers) < len(pending) and time.monotonic() < deadline:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = client.sock.recvfrom(65535)[0]
        except socket.timeout:
            break
        message = parseMessage(data)
        if isinstance(message, Request):
            client.send(answer(message))
        elif message.code >= 200 and message.header("call-id") in pending:
            answers[message.header("call-id")] = message
    return answers


def _answered(client: UDPClient, pending: Dict[str, Any], deadline: float) -> Dict[str, int]:
    """
    Send each request of C{pending} and retransmit it every T1 (0.5 s),
    as a user agent does, until all are answered or C{deadline}: their
    final status codes by Call-ID.
    """
    answers: Dict[str, Any] = {}
    while len(answers) < len(pending) and time.monotonic() < deadline:
        for callId, request in pending.items():
            if callId not in answers:
                client.send(request)
        waiting = {k: v for k, v in pending.items() if k not in answers}
        answers.update(_until(client, waiting, min(deadline, time.monotonic() + 0.5)))
    return {k: r.code for k, r in answers.items()}


def _inDialog(client: UDPClient, initial: Request, ok: Any, cseq: int, expires: str) -> Request:
    request = newRequest("SUBSCRIBE", initial.uri, client.port, Event="presence", Expires=expires)
    request.setHeader("From", initial.header("from"))
    request.setHeader("To", ok.header("to"))
    request.setHeader("Call-ID", initial.header("call-id"))
    request.setHeader("CSeq", "%d SUBSCRIBE" % (cseq,))
    return request


def test_burstServedAfterwardsNoSubscriptionLost(tmp_path: Any) -> None:
    """
    After a burst of new SUBSCRIBEs at several times the capacity, a
    refresh of every subscription acknowledged before it and a new
    SUBSCRIBE are answered 200 within seconds, and every un-SUBSCRIBE
    afterwards finds its subscription.
    """
    workdir = str(tmp_path)
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        f.write("[billing]\nno_auth_domains = example.test\n")
    server = ServerProcess(
        workdir,
        ["--config", config, "--listen", "udp:0:interface=127.0.0.1", "--domain", "example.test",
         "--database", "sqlite:///" + os.path.join(workdir, "presence.sqlite")],
    ).start("Subscription manager")
    client = UDPClient(server.ports["UDP"])
    try:
        dialogs = []
        for n in range(5):
            initial = newRequest("SUBSCRIBE", "sip:kept%d@example.test" % (n,), client.port,
                                 Event="presence", Expires="600")
            client.send(initial)
            ok = _until(client, {initial.header("call-id"): initial}, time.monotonic() + 10)
            assert [r.code for r in ok.values()] == [200], server.log()
            dialogs.append((initial, list(ok.values())[0]))

        _burst(server.ports["UDP"], BURST)
        ended = time.monotonic()
        pending = {}
        for initial, ok in dialogs:
            pending[initial.header("call-id")] = _inDialog(client, initial, ok, 2, "600")
        assert _answered(client, pending, ended + SERVED_WITHIN) == {k: 200 for k in pending}
        # The queue is drained: the next new SUBSCRIBE is served too.
        fresh = newRequest("SUBSCRIBE", "sip:after@example.test", client.port, Event="presence", Expires="600")
        pending = {fresh.header("call-id"): fresh}
        assert _answered(client, pending, time.monotonic() + SERVED_WITHIN) == {k: 200 for k in pending}

        # No acknowledged subscription was lost: each un-SUBSCRIBE finds it.
        pending = {i.header("call-id"): _inDialog(client, i, ok, 3, "0") for i, ok in dialogs}
        assert _answered(client, pending, time.monotonic() + 30) == {k: 200 for k in pending}
    finally:
        client.close()
        server.stopCleanly()
