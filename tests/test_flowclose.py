"""
Unit tests of ending registrations when a connection held by a dispatcher
closes: the dispatcher's Path on a REGISTER and its signed notice on
close (L{presence.dispatcher.closing}), and the registrar that drops
exactly the bindings of that flow and refuses a forged notice
(L{presence.registrar.flownotice}).
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import pytest

from presence.dispatcher import RouteCodec
from presence.registrar.flownotice import (
    AUTH_HEADER,
    FLOWS_HEADER,
    MAX_FLOWS,
    METHOD,
    NoticeError,
    NoticeSigner,
    pathFlow,
)
from presence.sip.message import Request, Response
from presence.sip.target import Target
from tests.registrarharness import ALICE, BOB, StreamPeer as RegistrarPeer, register
from tests.harness import WATCHER
from tests.test_dispatcher import (
    ADDRESS,
    BOOT,
    SECRET,
    Node,
    StreamPeer,
    answerFrom,
    forwardedOnce,
    routeParams,
    subscribe,
)
from tests.test_registrar import HeldBindings, basics, make, watched  # noqa: F401  (make: the fixture)

DISPATCHER_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdisp%s"


# The dispatcher.


def registerOver(node: Node, peer: StreamPeer, aor: str = "sip:bob@example.test") -> Tuple[Request, str]:
    """
    C{peer} registers C{aor} through the dispatcher; the manager answers
    200.  Return the REGISTER as the manager got it, and which manager.
    """
    peer.send(subscribe(aor, method="REGISTER", transport="TCP", callId="reg-" + aor))
    forwarded, owner = forwardedOnce(node)
    answerFrom(node, owner, forwarded, 200)
    assert [r.code for r in peer.received()] == [200]  # type: ignore[attr-defined]
    return forwarded, owner


def notices(node: Node) -> List[tuple]:
    """
    The notices the dispatcher sent since the last look, as (request,
    manager name).
    """
    found = []
    for message, host, port in node.takeNonPing():
        assert isinstance(message, Request) and message.method == METHOD, message
        [name] = [n for n, address in ADDRESS.items() if address == (host, port)]
        found.append((message, name))
    return found


def test_registerOverAConnectionGetsOurSignedPath():
    """
    The Path names the manager and the user agent's connection, signed as
    a Record-Route is; the manager reads that flow from it.
    """
    node = Node()
    peer = StreamPeer(node.core)
    forwarded, _ = registerOver(node, peer)
    [path] = forwarded.headerValues("path")
    info = node.dispatcher.routes.decode(routeParams(path))
    assert (info.transport, info.boot, info.token) == ("TCP", BOOT, peer.protocol.token)
    assert pathFlow(forwarded) == BOOT + "." + peer.protocol.token


def test_registerOverUDPGetsNoPath():
    node = Node()
    node.receive(subscribe(method="REGISTER", callId="reg-udp"), Target("UDP", "10.9.9.9", 5070))
    forwarded, _ = forwardedOnce(node)
    assert forwarded.headerValues("path") == []


def test_closedConnectionNoticeGoesToItsManagerOnly():
    """
    When a connection that carried a REGISTER closes, the manager that got
    it (and no other) is sent a notice naming the flow, signed with the
    secret; the notices of connections closing together go in one request.
    """
    node = Node(policy="round_robin")
    first, second, third = (StreamPeer(node.core, port=port) for port in (41001, 41002, 41003))
    watcher = StreamPeer(node.core, port=41004)
    # Round robin: m1, m2, m3, then m1 again.
    homes = [registerOver(node, peer, "sip:u%d@example.test" % (i,))[1] for i, peer in enumerate((first, second))]
    watcher.send(subscribe(transport="TCP", callId="sub-3"))
    forwardedOnce(node)
    assert registerOver(node, third, "sip:u3@example.test")[1] == homes[0] == "m1" and homes[1] == "m2"

    flow = {peer: BOOT + "." + peer.protocol.token for peer in (first, second, third)}
    for peer in (first, second, third, watcher):
        peer.close()
    assert notices(node) == []  # Sent on the next reactor turn, together.
    node.clock.advance(0)
    signer = NoticeSigner(SECRET)
    sent = notices(node)
    assert {name: signer.read(request) for request, name in sent} == {
        "m1": [flow[first], flow[third]],
        "m2": [flow[second]],
    }
    for request, name in sent:
        answerFrom(node, name, request, 200)
    node.clock.advance(0)
    assert notices(node) == []
    assert node.dispatcher.closing.counters["lost"] == 0


def test_noticesAreSentInBoundedRequests():
    node = Node(managers="m1=udp:10.0.0.1:5060")
    peers = [StreamPeer(node.core, port=42000 + i) for i in range(MAX_FLOWS + 3)]
    for i, peer in enumerate(peers):
        registerOver(node, peer, "sip:u%d@example.test" % (i,))
    for peer in peers:
        peer.close()
    node.clock.advance(0)
    sent = notices(node)
    assert [len(NoticeSigner(SECRET).read(r)) for r, _ in sent] == [MAX_FLOWS, 3]


def test_noticeRefusedIsCountedAsLost():
    node = Node(managers="m1=udp:10.0.0.1:5060")
    peer = StreamPeer(node.core)
    registerOver(node, peer)
    peer.close()
    node.clock.advance(0)
    [(request, name)] = notices(node)
    answerFrom(node, name, request, 403)
    assert node.dispatcher.closing.counters == {"notices": 1, "flows": 1, "lost": 1}


def test_aUserAgentCannotSendANotice():
    """
    The dispatcher relays no notice method: a user agent gets 501.
    """
    node = Node()
    peer = StreamPeer(node.core)
    request = NoticeSigner(SECRET).notice("sip:192.0.2.1", [BOOT + ".f1"])
    for header, value in subscribe(transport="TCP").headers.items():
        if header in ("via", "from", "to", "call-id"):
            request.headers[header] = value
    request.setHeader("CSeq", "1 " + METHOD)
    peer.send(request)
    [response] = peer.received()
    assert response.code == 501  # type: ignore[attr-defined]
    assert node.takeNonPing() == []


# The registrar.


ROUTES = RouteCodec(SECRET, BOOT)


def relayed(
    aor: str = BOB, token: str = "f1a", contact: str = "sip:bob@198.51.100.9:41000;transport=tcp", **kw: str
) -> Request:
    """
    A REGISTER as a dispatcher relays it: its Via and Path on top.
    """
    request = register(aor, contacts=["<%s>" % (contact,)], source=Target("TCP", "198.51.100.9", 41000), **kw)
    request.insertHeader("Via", DISPATCHER_VIA % (token,))
    flow = Target("TCP", "198.51.100.9", 41000, token)
    request.insertHeader("Path", "<sip:192.0.2.1:5060;transport=tcp;lr%s>" % (ROUTES.params("m1", flow),))
    return request


_notices = itertools.count(1)


def notice(flows: List[str], secret: bytes = SECRET) -> Request:
    """
    A notice as a dispatcher sends it, each in a transaction of its own.
    """
    number = next(_notices)
    request = NoticeSigner(secret).notice("sip:192.0.2.1:5060", flows)
    request.insertHeader("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnotice%d" % (number,))
    request.setHeader("From", "<sip:dispatcher@192.0.2.1>;tag=d1")
    request.setHeader("To", "<sip:192.0.2.1:5060>")
    request.setHeader("Call-ID", "notice-%d" % (number,))
    request.setHeader("CSeq", "1 " + METHOD)
    return request


FROM_DISPATCHER = Target("UDP", "192.0.2.1", 5060)


def sendNotice(h, request: Request) -> Response:
    """
    The answer to a notice; the NOTIFYs it caused stay for C{h.split}.
    """
    h.receive(request, FROM_DISPATCHER)
    sent = h.network.sent
    [response] = [m for m, _, _ in sent if isinstance(m, Response) and m.callId == request.callId]
    h.network.sent = [item for item in sent if item[0] is not response]
    return response


def test_noticeDropsExactlyTheBindingsOfThatFlow(make) -> None:
    """
    Bob's binding through one dispatcher connection, Alice's through
    another, Carol's over UDP: the notice of the first connection ends
    Bob's binding only, and his watcher is notified at once.
    """
    h = make(noticeSecret=SECRET)
    watched(h)
    _, notifies = h.registered(relayed(token="f1a"))
    h.answerAll(notifies, WATCHER)
    h.registered(relayed(ALICE, token="f2b", contact="sip:alice@198.51.100.9:41001;transport=tcp"))
    h.registered(register("sip:carol@example.test", contacts=["<sip:carol@192.0.2.20>"]))
    [record] = [b for b in h.registrar.bindingsOf(BOB)]
    assert record.flowToken == BOOT + ".f1a"
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 200
    assert h.registrar.bindingsOf(BOB) == []
    assert [b.contact for b in h.registrar.bindingsOf(ALICE)] == ["sip:alice@198.51.100.9:41001;transport=tcp"]
    assert len(h.registrar.bindingsOf("sip:carol@example.test")) == 1
    assert len(h.store.bindings) == 2
    _, (closed,) = h.split()
    assert basics(closed) == ["closed"]
    assert h.registrar.counters["flowClosed"] == 1 and h.registrar.counters["flowNotices"] == 1


@pytest.mark.parametrize(
    "forge, code",
    [
        (lambda r: r.setHeader(AUTH_HEADER, "0" * 24), 403),
        (lambda r: r.setHeader(FLOWS_HEADER, BOOT + ".f2b"), 403),
        (lambda r: r.headers.pop("closed-flow-auth"), 403),
        (lambda r: r.setHeader(FLOWS_HEADER, "not-a-flow"), 400),
        (lambda r: r.setHeader(FLOWS_HEADER, ", ".join([BOOT + ".f1"] * (MAX_FLOWS + 1))), 400),
    ],
)
def test_forgedOrMalformedNoticeRefused(make, forge, code) -> None:
    """
    A notice not signed with the secret (made up, or another flow under a
    signature seen once) ends nothing.
    """
    h = make(noticeSecret=SECRET)
    h.registered(relayed(token="f1a"))
    h.registered(relayed(ALICE, token="f2b", contact="sip:alice@198.51.100.9:41001;transport=tcp"))
    request = notice([BOOT + ".f1a"])
    forge(request)
    assert sendNotice(h, request).code == code
    assert len(h.registrar.bindingsOf(BOB)) == 1 and len(h.registrar.bindingsOf(ALICE)) == 1
    assert h.registrar.counters["badFlowNotices"] == 1


def test_noticeOfAnotherSecretRefused(make) -> None:
    h = make(noticeSecret=SECRET)
    h.registered(relayed(token="f1a"))
    assert sendNotice(h, notice([BOOT + ".f1a"], secret=b"another cluster's secret")).code == 403
    assert len(h.registrar.bindingsOf(BOB)) == 1


def test_withoutSecretEveryNoticeRefused(make) -> None:
    h = make()
    h.registered(relayed(token="f1a"))
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 403
    assert len(h.registrar.bindingsOf(BOB)) == 1


def test_noticeBeforeTheRegisterCommits(make) -> None:
    """
    The connection closes while its REGISTER is being written: the
    binding does not outlive the notice.
    """
    store = HeldBindings()
    store.start()
    h = make(store=store, noticeSecret=SECRET)
    h.receive(relayed(token="f1a"), FROM_DISPATCHER)
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 200
    store.commitAll()
    store.commitAll()
    assert h.registrar.bindings == {} and store.bindings == {}


def test_closedFlowIsForgottenInTime(make) -> None:
    h = make(noticeSecret=SECRET)
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 200
    h.clock.advance(65)
    sendNotice(h, notice([BOOT + ".f9"]))
    assert list(h.registrar._closedRelayed) == [BOOT + ".f9"]


def test_relayedBindingsSurviveARestart(make) -> None:
    """
    The dispatcher's connection outlives a restart of the manager: its
    bindings are reloaded, and its notice still ends them.
    """
    h = make(noticeSecret=SECRET)
    h.registered(relayed(token="f1a"))
    local = RegistrarPeer(h.core)
    local.send(register(ALICE, contacts=["<sip:alice@192.0.2.30:40000;transport=tcp>"], source=local.source))
    h.restart()
    assert [b.flowToken for b in h.registrar.bindingsOf(BOB)] == [BOOT + ".f1a"]
    assert h.registrar.bindingsOf(ALICE) == []
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 200
    assert h.registrar.bindings == {}


def test_pathFlowIgnoresWhatIsNotADispatcherFlow() -> None:
    def withPath(value: str) -> Request:
        request = Request("REGISTER", "sip:example.test")
        request.addHeader("Path", value)
        return request

    assert pathFlow(Request("REGISTER", "sip:example.test")) == ""
    assert pathFlow(withPath("<sip:p.example;lr>")) == ""
    assert pathFlow(withPath("<sip:p.example;lr;t=udp;f=198.51.100.7~5060>")) == ""
    assert pathFlow(withPath("<sip:p.example;lr;t=ws;f=%s.f3c>" % (BOOT,))) == BOOT + ".f3c"
    assert pathFlow(withPath("not a uri <")) == ""


def test_signerRefusesEmptySecret() -> None:
    with pytest.raises(ValueError):
        NoticeSigner(b"")
    with pytest.raises(NoticeError):
        NoticeSigner(SECRET).read(Request(METHOD, "sip:x"))


def test_closedFlowMemoryIsBounded(make, monkeypatch) -> None:
    from presence.registrar import registrar

    monkeypatch.setattr(registrar, "CLOSED_MEMORY_MAX", 3)
    h = make(noticeSecret=SECRET)
    for i in range(5):
        assert sendNotice(h, notice([BOOT + ".f%d" % (i,)])).code == 200
    assert list(h.registrar._closedRelayed) == [BOOT + ".f%d" % (i,) for i in (2, 3, 4)]


def test_stoppingDispatcherTellsTheManagersAtOnce():
    """
    A dispatcher that stops closes every connection: the managers hear of
    those that registered before it lets go of its links.
    """
    node = Node(managers="m1=udp:10.0.0.1:5060")
    peer = StreamPeer(node.core)
    registerOver(node, peer)
    flow = BOOT + "." + peer.protocol.token
    node.dispatcher.stop()
    [(request, name)] = notices(node)
    assert (NoticeSigner(SECRET).read(request), name) == ([flow], "m1")
    peer.close()
    node.clock.advance(0)
    assert notices(node) == []


@pytest.mark.parametrize("transport", ["TLS", "WS", "WSS"])
def test_everyConnectionTransportGetsAPathAndANotice(transport):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from presence.sip.transport import SIPStreamProtocol

    node = Node(managers="m1=udp:10.0.0.1:5060")
    protocol = SIPStreamProtocol(node.core, transport, node.core.limits)
    protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 41000)))
    protocol.dataReceived(subscribe(method="REGISTER", transport=transport, callId="reg-" + transport).toBytes())
    forwarded, _ = forwardedOnce(node)
    assert routeParams(forwarded.header("path") or "")["t"] == transport.lower()
    assert pathFlow(forwarded) == BOOT + "." + protocol.token
    protocol.connectionLost(None)
    node.clock.advance(0)
    [(request, _)] = notices(node)
    assert NoticeSigner(SECRET).read(request) == [pathFlow(forwarded)]
