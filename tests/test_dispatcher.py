"""
Unit tests of the dispatching node: routing, the signed Record-Route,
Max-Forwards, response relay, 430 for a closed flow, failover and the
health check, on a SIP core with a fake network and a clock.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from presence.config import Config, ConfigError
from presence.dispatcher import Dispatcher, ManagerSpec, RouteCodec, RouteError, parseManagers
from presence.dispatcher.policy import rendezvous
from presence.sip.core import SIPCore
from presence.sip.headers import NameAddr
from presence.sip.message import Message, Request, Response
from presence.sip.parser import StreamFramer, parseMessage
from presence.sip.target import Target
from presence.sip.transport import SIPDatagramProtocol, SIPStreamProtocol
from presence.sip.uri import SipURI
from tests.harness import FakeNetwork

ME = "192.0.2.1"
UA = Target("UDP", "198.51.100.7", 40000)
MANAGERS = "m1=udp:10.0.0.1:5060 m2=udp:10.0.0.2:5060 m3=udp:10.0.0.3:5060"
ADDRESS = {"m1": ("10.0.0.1", 5060), "m2": ("10.0.0.2", 5060), "m3": ("10.0.0.3", 5060)}
SECRET = b"test secret"
BOOT = "0badcafe"


class Node:
    """
    A dispatcher on a core whose UDP goes to a L{FakeNetwork}, with a
    L{MemoryReactorClock} for timers and TCP connections.
    """

    def __init__(self, policy: str = "hash", managers: str = MANAGERS, up: bool = True) -> None:
        self.clock = MemoryReactorClock()
        self.core = SIPCore(self.clock, advertisedHost=ME)
        self.network = FakeNetwork()
        self.core.udp = self.network  # type: ignore[assignment]
        self.core.ports = {"UDP": 5060, "TCP": 5060}
        self.datagrams = SIPDatagramProtocol(self.core, self.core.limits)
        self.changes: List[Tuple[str, bool]] = []
        self.dispatcher = Dispatcher(
            self.core, parseManagers(managers), self.clock, SECRET, policy=policy, boot=BOOT
        )
        original = self.dispatcher._changed

        def changed(manager: Any, isUp: bool) -> None:
            self.changes.append((manager.name, isUp))
            original(manager, isUp)

        self.dispatcher.health.changed = changed
        self.dispatcher.install()
        self.dispatcher.start()
        if up:
            self.answerPings()
            assert self.dispatcher.live() == [m.name for m in self.dispatcher.managers]

    # The network.

    def take(self) -> List[Tuple[Message, str, int]]:
        sent, self.network.sent = self.network.sent, []
        return sent

    def takeNonPing(self) -> List[Tuple[Message, str, int]]:
        return [item for item in self.take() if not _isPing(item[0])]

    def receive(self, message: Message, source: Target) -> None:
        """
        Deliver C{message} as the UDP listener would: parsed, or refused
        by the parser.
        """
        self.datagrams.datagramReceived(message.toBytes(), (source.host, source.port))

    def answerPings(self, names: Optional[List[str]] = None) -> None:
        """
        Answer every OPTIONS sent so far to the managers C{names} (all by
        default); other messages stay.
        """
        keep = []
        for message, host, port in self.take():
            name = _nameAt(host, port)
            if _isPing(message) and (names is None or name in names):
                self.receive(Response.forRequest(message, 200, toTag="pong"), Target("UDP", host, port))  # type: ignore[arg-type]
            else:
                keep.append((message, host, port))
        self.network.sent = keep + self.network.sent

    def advance(self, seconds: float, answering: Optional[List[str]] = None, step: float = 0.05) -> None:
        """
        Let time pass, managers C{answering} answering every ping at once.
        """
        steps = int(round(seconds / step))
        for _ in range(steps):
            self.clock.advance(step)
            if answering is not None:
                self.answerPings(answering)

    def fromManager(self, name: str) -> Target:
        host, port = ADDRESS[name]
        return Target("UDP", host, port)


def _nameAt(host: str, port: int) -> Optional[str]:
    for name, address in ADDRESS.items():
        if address == (host, port):
            return name
    return None


def _isPing(message: Message) -> bool:
    return isinstance(message, Request) and message.method == "OPTIONS"


_counter = [0]


def subscribe(
    aor: str = "sip:bob@example.test",
    toTag: Optional[str] = None,
    route: Optional[List[str]] = None,
    maxForwards: Optional[str] = "70",
    method: str = "SUBSCRIBE",
    transport: str = "UDP",
    callId: str = "call-1",
) -> Request:
    _counter[0] += 1
    request = Request(method, aor)
    request.addHeader("Via", "SIP/2.0/%s 10.9.9.9:5070;branch=z9hG4bKua%d;rport" % (transport, _counter[0]))
    if maxForwards is not None:
        request.addHeader("Max-Forwards", maxForwards)
    request.addHeader("From", "<sip:alice@example.test>;tag=a1")
    request.addHeader("To", "<%s>%s" % (aor, ";tag=" + toTag if toTag else ""))
    request.addHeader("Call-ID", callId)
    request.addHeader("CSeq", "%d %s" % (_counter[0], method))
    request.addHeader("Contact", "<sip:alice@10.9.9.9:5070>")
    request.addHeader("Event", "presence")
    for value in route or []:
        request.addHeader("Route", value)
    return request


def notify(route: List[str], uri: str = "sip:alice@10.9.9.9:5070") -> Request:
    _counter[0] += 1
    request = Request("NOTIFY", uri)
    request.addHeader("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKmgr%d;rport" % (_counter[0],))
    request.addHeader("Max-Forwards", "70")
    request.addHeader("From", "<sip:bob@example.test>;tag=b1")
    request.addHeader("To", "<sip:alice@example.test>;tag=a1")
    request.addHeader("Call-ID", "call-1")
    request.addHeader("CSeq", "%d NOTIFY" % (_counter[0],))
    request.addHeader("Event", "presence")
    request.addHeader("Subscription-State", "active;expires=60")
    for value in route:
        request.addHeader("Route", value)
    return request


def routeParams(value: str) -> dict:
    return SipURI.fromString(NameAddr.fromString(value).uri).params


def forwardedOnce(node: Node) -> Tuple[Request, str]:
    """
    The one request the dispatcher sent to a manager, and which.
    """
    sent = node.takeNonPing()
    assert len(sent) == 1, sent
    message, host, port = sent[0]
    assert isinstance(message, Request)
    name = _nameAt(host, port)
    assert name is not None, (host, port)
    return message, name


def answerFrom(node: Node, name: str, request: Request, code: int = 200, **extra: str) -> None:
    response = Response.forRequest(request, code, toTag="mgrtag")
    for key, value in extra.items():
        response.addHeader(key.replace("_", "-"), value)
    node.receive(response, node.fromManager(name))


class StreamPeer:
    """
    A user agent connected over TCP: a real L{SIPStreamProtocol} on a
    L{StringTransport}.
    """

    def __init__(self, core: SIPCore, host: str = "198.51.100.9", port: int = 41000) -> None:
        self.protocol = SIPStreamProtocol(core, "TCP", core.limits)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.protocol.makeConnection(self.transport)

    def send(self, message: Message) -> None:
        self.protocol.dataReceived(message.toBytes())

    def received(self) -> List[Message]:
        data = self.transport.value()
        self.transport.clear()
        return [parseMessage(item, stream=True) for item in StreamFramer().dataReceived(data)]  # type: ignore[arg-type]

    def close(self) -> None:
        self.protocol.connectionLost(None)


# The Record-Route codec.


def test_routeRoundTripUDP():
    codec = RouteCodec(SECRET, BOOT)
    params = SipURI.fromString("sip:x;lr" + codec.params("m2", UA)).params
    info = codec.decode(params)
    assert (info.manager, info.transport, info.host, info.port) == ("m2", "UDP", "198.51.100.7", 40000)


def test_routeRoundTripIPv6AndStream():
    codec = RouteCodec(SECRET, BOOT)
    info = codec.decode(SipURI.fromString("sip:x;lr" + codec.params("m1", Target("UDP", "2001:db8::7", 5062))).params)
    assert (info.host, info.port) == ("2001:db8::7", 5062)
    info = codec.decode(SipURI.fromString("sip:x;lr" + codec.params("m1", Target("TLS", "h", 1, "f1a"))).params)
    assert (info.transport, info.boot, info.token) == ("TLS", BOOT, "f1a")


@pytest.mark.parametrize(
    "param, value",
    [("m", "m3"), ("t", "tcp"), ("f", "203.0.113.66~5060"), ("s", "0" * 24)],
)
def test_routeTamperingRefused(param, value):
    """
    Changing any signed parameter (aiming NOTIFYs at another address, or
    requests at another manager) breaks the signature.
    """
    codec = RouteCodec(SECRET, BOOT)
    params = SipURI.fromString("sip:x;lr" + codec.params("m2", UA)).params
    params[param] = value
    with pytest.raises(RouteError):
        codec.decode(params)


def test_routeFromAnotherSecretRefused():
    params = SipURI.fromString("sip:x;lr" + RouteCodec(b"other", BOOT).params("m2", UA)).params
    with pytest.raises(RouteError):
        RouteCodec(SECRET, BOOT).decode(params)


@pytest.mark.parametrize(
    "flow, transport",
    [("nohost", "udp"), ("1.2.3.4~0", "udp"), ("1.2.3.4~99999", "udp"), ("evil.example~5060", "udp"),
     ("f1", "tcp"), ("0badcafe.x1", "tcp")],
)
def test_routeMalformedFlowRefusedEvenIfSigned(flow, transport):
    codec = RouteCodec(SECRET, BOOT)
    params = {"m": "m1", "t": transport, "f": flow, "s": codec._mac("m1", transport, flow)}
    with pytest.raises(RouteError):
        codec.decode(params)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["m", "t", "f", "s", "lr", "x"]), st.one_of(st.none(), st.text(max_size=40))))
def test_routeDecodeOnlyRaisesRouteError(params):
    try:
        RouteCodec(SECRET, BOOT).decode(params)
    except RouteError:
        pass


# Configuration.


def test_managerSpecs():
    specs = parseManagers("a=udp:127.0.0.3:5060, b=TCP:[::1]:5070")
    assert specs == (ManagerSpec("a", "UDP", "127.0.0.3", 5060), ManagerSpec("b", "TCP", "::1", 5070))
    assert str(specs[1]) == "b=tcp:[::1]:5070"
    for bad in ["a", "a=udp:host.example:5060", "a=sctp:1.2.3.4:5060", "a=udp:1.2.3.4:0", "a b=udp:1.2.3.4:1",
                "a=udp:1.2.3.4:1 a=udp:1.2.3.5:1", "a=udp:1.2.3.4:1 b=udp:1.2.3.4:1", "a=udp:[::1:5060"]:
        with pytest.raises(ValueError):
            parseManagers(bad)


def test_configSection():
    config = Config.fromString(
        "[dispatcher]\nmanagers = m1=udp:127.0.0.3:5060 m2=tcp:127.0.0.4:5060\npolicy = least_loaded\n"
        "ping_interval = 0.25\ndead_after = 1\nsecret = s3cret\n"
    )
    assert [m.name for m in config.dispatcherManagers] == ["m1", "m2"]
    assert config.dispatcherPolicy == "least_loaded"
    assert (config.dispatcherPingInterval, config.dispatcherDeadAfter) == (0.25, 1.0)
    assert config.dispatcherSecret == "s3cret"
    default = Config()
    assert (default.dispatcherPolicy, default.dispatcherPingInterval, default.dispatcherDeadAfter) == ("hash", 0.5, 1.5)
    with pytest.raises(ConfigError, match=r"\[dispatcher\] policy"):
        Config.fromString("[dispatcher]\npolicy = random\n")
    with pytest.raises(ConfigError, match=r"\[dispatcher\] managers"):
        Config.fromString("[dispatcher]\nmanagers = m1=udp:nowhere:5060\n")


# Forwarding new requests.


def test_newSubscribeForwardedWithRecordRoute():
    node = Node()
    node.receive(subscribe(), UA)
    forwarded, name = forwardedOnce(node)
    assert name == rendezvous(["m1", "m2", "m3"], "sip:bob@example.test")
    vias = forwarded.vias()
    assert len(vias) == 2 and vias[0].host == ME and vias[0].branch.startswith("z9hG4bK")
    assert vias[1].params["received"] == UA.host and vias[1].params["rport"] == "40000"
    assert forwarded.header("max-forwards") == "69"
    assert not forwarded.hasHeader("route")
    [recordRoute] = forwarded.headerValues("record-route")
    uri = SipURI.fromString(NameAddr.fromString(recordRoute).uri)
    assert (uri.host, uri.port) == (ME, 5060)
    assert "lr" in uri.params and "transport" not in uri.params
    info = node.dispatcher.routes.decode(uri.params)
    assert (info.manager, info.transport, info.host, info.port) == (name, "UDP", UA.host, UA.port)


def test_responseRelayedWithoutOurVia():
    node = Node()
    node.receive(subscribe(), UA)
    forwarded, name = forwardedOnce(node)
    answerFrom(node, name, forwarded, 200, Expires="600", Record_Route=forwarded.header("record-route"))
    [(response, host, port)] = node.takeNonPing()
    assert isinstance(response, Response) and response.code == 200
    assert (host, port) == (UA.host, UA.port)
    assert [v.host for v in response.vias()] == ["10.9.9.9"]
    assert response.header("record-route") == forwarded.header("record-route")
    assert response.toAddr().tag == "mgrtag"
    # A retransmission of the SUBSCRIBE is answered by our transaction.
    node.receive(_retransmission(forwarded), UA)
    [(again, _, _)] = node.takeNonPing()
    assert again.code == 200  # type: ignore[attr-defined]


def _retransmission(forwarded: Request) -> Request:
    """
    The user agent's request again, as it sent it (without our Via and
    Record-Route, with its Max-Forwards).
    """
    copy = Request(forwarded.method, forwarded.uri, {k: list(v) for k, v in forwarded.headers.items()})
    copy.headers["via"] = copy.headers["via"][1:]
    copy.headers.pop("record-route", None)
    copy.setHeader("Max-Forwards", "70")
    return copy


def test_publishNotRecordRouted():
    node = Node()
    node.receive(subscribe(method="PUBLISH"), UA)
    forwarded, name = forwardedOnce(node)
    assert name == rendezvous(["m1", "m2", "m3"], "sip:bob@example.test")
    assert not forwarded.hasHeader("record-route")


def test_watcherAndPublisherMeetWithHash():
    node = Node()
    for aor in ["sip:u%d@example.test" % (i,) for i in range(20)]:
        node.receive(subscribe(aor), UA)
        _, watcherManager = forwardedOnce(node)
        node.receive(subscribe(aor, method="PUBLISH", callId="p"), Target("UDP", "203.0.113.5", 5060))
        _, publisherManager = forwardedOnce(node)
        assert watcherManager == publisherManager


def test_roundRobin():
    node = Node("round_robin")
    names = []
    for i in range(6):
        node.receive(subscribe(callId="c%d" % (i,)), UA)
        names.append(forwardedOnce(node)[1])
    assert names == ["m1", "m2", "m3", "m1", "m2", "m3"]


def test_roundRobinKeepsItsTurnsThroughFailoverAndDeath():
    node = Node("round_robin")
    node.receive(subscribe(callId="a"), UA)
    first, name = forwardedOnce(node)
    answerFrom(node, name, first, 503)
    retried = forwardedOnce(node)[1]
    node.receive(subscribe(callId="b"), UA)
    following = forwardedOnce(node)[1]
    assert (name, retried, following) == ("m1", "m2", "m3")
    node.dispatcher.health.down(node.dispatcher._byName["m1"])
    names = []
    for i in range(4):
        node.receive(subscribe(callId="c%d" % (i,)), UA)
        names.append(forwardedOnce(node)[1])
    assert names == ["m2", "m3", "m2", "m3"]


def test_leastLoaded():
    node = Node("least_loaded")
    node.receive(subscribe(callId="a"), UA)
    first, firstName = forwardedOnce(node)
    node.receive(subscribe(callId="b"), UA)
    _, second = forwardedOnce(node)
    node.receive(subscribe(callId="c"), UA)
    _, third = forwardedOnce(node)
    assert len({firstName, second, third}) == 3
    answerFrom(node, firstName, first)
    node.take()
    node.receive(subscribe(callId="d"), UA)
    assert forwardedOnce(node)[1] == firstName


def test_hashMovesOnlyTheDeadManagersPresentities():
    aors = ["sip:p%d@example.test" % (i,) for i in range(60)]
    before = {aor: rendezvous(["m1", "m2", "m3"], aor) for aor in aors}
    node = Node()
    node.dispatcher.health.down(node.dispatcher._byName["m2"])
    for aor in aors:
        node.receive(subscribe(aor, callId=aor), UA)
        _, name = forwardedOnce(node)
        if before[aor] != "m2":
            assert name == before[aor]
        else:
            assert name in ("m1", "m3")


# Max-Forwards (RFC 3261 §16.3 step 3, §16.6 step 3).


def test_maxForwardsDecremented():
    node = Node()
    node.receive(subscribe(maxForwards="1"), UA)
    forwarded, _ = forwardedOnce(node)
    assert forwarded.header("max-forwards") == "0"


def test_maxForwardsAddedWhenMissing():
    node = Node()
    node.receive(subscribe(maxForwards=None), UA)
    forwarded, _ = forwardedOnce(node)
    assert forwarded.header("max-forwards") == "69"


@pytest.mark.parametrize("value, code", [("0", 483), ("00", 483), ("x", 400), ("-1", 400)])
def test_maxForwardsRefused(value, code):
    node = Node()
    node.receive(subscribe(maxForwards=value), UA)
    [(response, host, port)] = node.takeNonPing()
    assert response.code == code  # type: ignore[attr-defined]
    assert (host, port) == (UA.host, UA.port)


# In-dialog requests.


def _dialog(node: Node, aor: str = "sip:bob@example.test") -> Tuple[str, str]:
    """
    Set up a dialog through the dispatcher: our Record-Route and its owner.
    """
    node.receive(subscribe(aor), UA)
    forwarded, name = forwardedOnce(node)
    answerFrom(node, name, forwarded, 200, Expires="600")
    node.take()
    return forwarded.header("record-route") or "", name


def test_inDialogRequestGoesToTheOwner():
    """
    With round robin, an unrouted request would go elsewhere; the Route
    takes a refresh to the manager that owns the dialog, without our Route
    and with the others kept.
    """
    node = Node("round_robin")
    recordRoute, owner = _dialog(node)
    for i in range(4):
        node.receive(subscribe(toTag="mgrtag", route=[recordRoute, "<sip:other.example;lr>"]), UA)
        forwarded, name = forwardedOnce(node)
        assert name == owner
        assert forwarded.headerValues("route") == ["<sip:other.example;lr>"]
        assert not forwarded.hasHeader("record-route")


def test_inDialogRequestForADeadOwnerGoesToALiveManagerWithTheRoute():
    node = Node("round_robin")
    recordRoute, owner = _dialog(node)
    node.dispatcher.health.down(node.dispatcher._byName[owner])
    node.receive(subscribe(toTag="mgrtag", route=[recordRoute]), UA)
    forwarded, name = forwardedOnce(node)
    assert name != owner
    assert forwarded.headerValues("route") == [recordRoute]
    answerFrom(node, name, forwarded, 481)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 481  # type: ignore[attr-defined]


def test_drainingManagerOutOfRotation():
    """
    A manager answering its ping 503 drains (presence-admin live drain):
    it is alive, but gets no new request, and its dialogs go to a manager
    in rotation; a request it already has is still answered by it, not
    failed over.  Its next 200 puts it back.
    """
    node = Node("round_robin")
    recordRoute, owner = _dialog(node)
    node.receive(subscribe(callId="in-flight"), UA)
    waiting, waitingAt = forwardedOnce(node)
    drainer = node.dispatcher._byName[owner]

    def answerPings(code: int) -> None:
        for message, host, port in node.take():
            if not _isPing(message):
                continue  # The waiting request, retransmitted.
            answered = code if _nameAt(host, port) == owner else 200
            node.receive(Response.forRequest(message, answered, toTag="pong"), Target("UDP", host, port))

    node.clock.advance(0.5)
    answerPings(503)
    assert drainer.up and drainer.draining and (owner, False) not in node.changes
    for i in range(6):
        node.receive(subscribe(callId="new-%d" % (i,)), UA)
        forwarded, name = forwardedOnce(node)
        assert name != owner
        answerFrom(node, name, forwarded, 200)
        node.takeNonPing()
    node.receive(subscribe(toTag="mgrtag", route=[recordRoute]), UA)
    forwarded, name = forwardedOnce(node)
    assert name != owner and forwarded.headerValues("route") == [recordRoute]
    answerFrom(node, name, forwarded, 200)
    node.takeNonPing()
    answerFrom(node, waitingAt, waiting, 200)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 200 and response.callId == "in-flight"  # type: ignore[attr-defined]

    node.clock.advance(0.5)
    answerPings(200)
    assert not drainer.draining
    node.receive(subscribe(toTag="mgrtag", route=[recordRoute]), UA)
    assert forwardedOnce(node)[1] == owner


def test_forgedRouteRefused():
    node = Node()
    recordRoute, owner = _dialog(node)
    forged = recordRoute.replace("m=" + owner, "m=" + ("m1" if owner != "m1" else "m2"))
    node.receive(subscribe(toTag="mgrtag", route=[forged]), UA)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 403  # type: ignore[attr-defined]
    assert node.dispatcher.counters["forged"] == 1


def test_preloadedRouteToUsRemovedForeignKept():
    node = Node()
    node.receive(subscribe(route=["<sip:%s:5060;lr>" % (ME,), "<sip:proxy.example;lr>"]), UA)
    forwarded, _ = forwardedOnce(node)
    assert forwarded.headerValues("route") == ["<sip:proxy.example;lr>"]
    node.receive(subscribe(route=["<sip:proxy.example;lr>"], callId="x"), UA)
    forwarded, _ = forwardedOnce(node)
    assert forwarded.headerValues("route") == ["<sip:proxy.example;lr>"]


# NOTIFYs from managers.


def test_notifyRelayedToTheUDPFlow():
    node = Node()
    recordRoute, owner = _dialog(node)
    request = notify([recordRoute])
    node.receive(request, node.fromManager(owner))
    [(relayed, host, port)] = node.takeNonPing()
    assert isinstance(relayed, Request) and relayed.method == "NOTIFY"
    assert (host, port) == (UA.host, UA.port)
    assert not relayed.hasHeader("route")
    assert relayed.header("max-forwards") == "69"
    assert relayed.topVia().host == ME and len(relayed.vias()) == 2
    # The watcher's 200 goes back to the manager without our Via.
    node.receive(Response.forRequest(relayed, 200), UA)
    [(response, host, port)] = node.takeNonPing()
    assert response.code == 200 and (host, port) == ADDRESS[owner]  # type: ignore[attr-defined]
    assert [v.host for v in response.vias()] == ["10.0.0.1"]  # type: ignore[attr-defined]


def test_notifyFromAUserAgentIsNotRelayedToAFlow():
    """
    Only managers may send down a flow; a user agent's NOTIFY with our
    route goes to a manager like any request of its dialog.
    """
    node = Node()
    recordRoute, owner = _dialog(node)
    node.receive(notify([recordRoute]), Target("UDP", "203.0.113.66", 5060))
    forwarded, name = forwardedOnce(node)
    assert name == owner


def test_notifyWithoutOurRouteRefused():
    node = Node()
    node.receive(notify([]), node.fromManager("m1"))
    [(response, host, port)] = node.takeNonPing()
    assert response.code == 403 and (host, port) == ADDRESS["m1"]  # type: ignore[attr-defined]


def test_notifyForAClosedTCPFlowFailsAtOnce():
    """
    The watcher subscribed over TCP and went away: the NOTIFY is answered
    430 at once, with no transaction left waiting 32 seconds.
    """
    node = Node()
    peer = StreamPeer(node.core)
    peer.send(subscribe(transport="TCP"))
    forwarded, owner = forwardedOnce(node)
    info = node.dispatcher.routes.decode(routeParams(forwarded.header("record-route") or ""))
    assert (info.transport, info.boot, info.token) == ("TCP", BOOT, peer.protocol.token)
    assert routeParams(forwarded.header("record-route") or "")["transport"] == "tcp"
    answerFrom(node, owner, forwarded, 200)
    [response] = peer.received()
    assert response.code == 200  # type: ignore[attr-defined]

    node.receive(notify([forwarded.header("record-route") or ""]), node.fromManager(owner))
    [relayed] = peer.received()
    assert relayed.method == "NOTIFY"  # type: ignore[attr-defined]
    peer.send(Response.forRequest(relayed, 200))  # type: ignore[arg-type]
    [(ok, _, _)] = node.takeNonPing()
    assert ok.code == 200  # type: ignore[attr-defined]

    peer.close()
    relayed = dict(node.dispatcher.requestsRelayed)
    before = len(node.core.transactions)
    node.receive(notify([forwarded.header("record-route") or ""]), node.fromManager(owner))
    [(failed, host, port)] = node.takeNonPing()
    assert failed.code == 430 and (host, port) == ADDRESS[owner]  # type: ignore[attr-defined]
    assert node.dispatcher.counters["flowFailed"] == 1
    # Nothing waits: only the answered server transaction, lingering for
    # Timer J, was added; no client transaction was started.
    assert node.dispatcher.requestsRelayed == relayed
    assert len(node.core.transactions) == before + 1


def test_notifyForAFlowThatFailsWhileSendingGets430():
    """
    The connection is found but the write fails and closes it: 430, with
    the manager's own Via on top (not ours).
    """
    from presence.sip.target import TransportError

    node = Node()
    peer = StreamPeer(node.core)
    token = peer.protocol.token

    def broken(data: bytes) -> None:
        node.core.flows.remove(token)  # type: ignore[arg-type]
        raise TransportError("connection reset")

    peer.protocol.write = broken  # type: ignore[assignment]
    stream = Target("TCP", "198.51.100.9", 41000, token)
    route = "<sip:%s:5060;transport=tcp;lr%s>" % (ME, node.dispatcher.routes.params("m1", stream))
    node.receive(notify([route]), node.fromManager("m1"))
    [(failed, host, port)] = node.takeNonPing()
    assert failed.code == 430 and (host, port) == ADDRESS["m1"]  # type: ignore[attr-defined]
    assert [v.host for v in failed.vias()] == ["10.0.0.1"]  # type: ignore[attr-defined]


def test_notifyForAFlowOfAnEarlierRunFails():
    """
    Flow tokens restart at f1 with each run: a route from an earlier run
    must not reach whoever holds that token now.
    """
    node = Node()
    peer = StreamPeer(node.core)
    earlier = RouteCodec(SECRET, "12345678")
    stream = Target("TCP", "198.51.100.9", 41000, peer.protocol.token)
    route = "<sip:%s:5060;transport=tcp;lr%s>" % (ME, earlier.params("m1", stream))
    node.receive(notify([route]), node.fromManager("m1"))
    [(failed, _, _)] = node.takeNonPing()
    assert failed.code == 430  # type: ignore[attr-defined]
    assert peer.received() == []


# Failover, unavailability, timeouts.


def test_503FailsOverToAnotherManager():
    node = Node()
    node.receive(subscribe(), UA)
    first, firstName = forwardedOnce(node)
    answerFrom(node, firstName, first, 503, Retry_After="1")
    second, secondName = forwardedOnce(node)
    assert secondName != firstName
    assert node.dispatcher.routes.decode(routeParams(second.header("record-route") or "")).manager == secondName
    assert second.topVia().branch != first.topVia().branch
    answerFrom(node, secondName, second, 200)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 200  # type: ignore[attr-defined]


def test_503RelayedWhenNoManagerIsLeft():
    node = Node(managers="m1=udp:10.0.0.1:5060")
    node.receive(subscribe(), UA)
    first, name = forwardedOnce(node)
    answerFrom(node, name, first, 503, Retry_After="7")
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 503 and response.header("retry-after") == "7"  # type: ignore[attr-defined]


def test_noLiveManager():
    node = Node(up=False)
    node.receive(subscribe(), UA)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 503 and response.header("retry-after") == "5"  # type: ignore[attr-defined]
    assert node.dispatcher.counters["unavailable"] == 1


def test_managerDyingWithARequestInFlightFailsOver():
    node = Node()
    node.receive(subscribe(), UA)
    first, firstName = forwardedOnce(node)
    others = [n for n in ("m1", "m2", "m3") if n != firstName]
    node.advance(1.6, answering=others)
    assert node.dispatcher.live() == others
    sent = node.takeNonPing()
    # Until it is declared dead, the dying manager got retransmissions
    # of the same request; then one other manager got it anew.
    retransmitted = [m for m, h, p in sent if _nameAt(h, p) == firstName]
    assert all(m.topVia().branch == first.topVia().branch for m in retransmitted)  # type: ignore[attr-defined]
    anew = [(m, _nameAt(h, p)) for m, h, p in sent if _nameAt(h, p) != firstName]
    assert len({m.topVia().branch for m, _ in anew}) == 1  # type: ignore[attr-defined]
    second, secondName = anew[0]
    assert secondName in others
    # The dead manager's late answer is ignored; the live one's relayed.
    answerFrom(node, firstName, first, 200)
    assert node.takeNonPing() == []
    answerFrom(node, secondName, second, 200)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 200  # type: ignore[attr-defined]
    assert all(m.inFlight == 0 and not m.pending for m in node.dispatcher.managers)


def test_timeoutNotAnsweredUpstream():
    """
    RFC 4320: no 408 to a non-INVITE.  The server transaction is ended,
    not left behind.
    """
    node = Node(managers="m1=udp:10.0.0.1:5060")
    request = subscribe()
    node.receive(request, UA)
    forwardedOnce(node)
    for _ in range(70):
        node.clock.advance(0.5)
        node.answerPings()
        relayed = node.takeNonPing()
        assert all(isinstance(m, Request) for m, _, _ in relayed), relayed
    assert node.dispatcher.counters["timeouts"] == 1
    # Our server transaction is gone: the request again is a new one,
    # forwarded again, where a live transaction would have absorbed it.
    node.receive(request, UA)
    forwardedOnce(node)
    assert node.dispatcher.requestsRelayed[("manager", "SUBSCRIBE")] == 2


def test_provisionalRelayedButNot100():
    node = Node()
    node.receive(subscribe(), UA)
    forwarded, name = forwardedOnce(node)
    answerFrom(node, name, forwarded, 100)
    assert node.takeNonPing() == []
    answerFrom(node, name, forwarded, 183)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 183 and len(response.vias()) == 1  # type: ignore[attr-defined]


# Health checks.


def test_managersStartDownAndComeUpOnTheirFirstAnswer():
    node = Node(up=False)
    pings = [(host, port) for message, host, port in node.network.sent if _isPing(message)]
    assert sorted(pings) == sorted(ADDRESS.values())
    assert node.dispatcher.live() == []
    node.answerPings(["m2"])
    assert node.dispatcher.live() == ["m2"] and node.changes == [("m2", True)]


def test_deadManagerOutWithinDeadAfterAndBackWhenItAnswers():
    node = Node()
    node.advance(3.0, answering=["m1", "m2", "m3"])
    assert node.dispatcher.live() == ["m1", "m2", "m3"]
    lastAnswer = node.dispatcher._byName["m2"].lastAnswer
    # m2 stops answering: it is out 1.5 s after its last answer (to the
    # 0.05 s step of this loop), hence within 2 s of its death.
    for _ in range(100):
        if not node.dispatcher._byName["m2"].up:
            break
        node.advance(0.05, answering=["m1", "m3"])
    assert 1.5 - 1e-6 <= node.clock.seconds() - lastAnswer <= 1.55 + 1e-6
    assert ("m2", False) in node.changes
    assert node.dispatcher.live() == ["m1", "m3"]
    # It keeps being pinged, one OPTIONS at a time, and comes back.
    node.advance(5.0, answering=["m1", "m3"])
    assert not node.dispatcher._byName["m2"].up
    node.advance(0.5, answering=["m1", "m2", "m3"])
    assert node.dispatcher.live() == ["m1", "m2", "m3"] and node.changes[-1] == ("m2", True)


def test_oneOutstandingPingPerManager():
    node = Node()
    before = node.dispatcher._byName["m1"].pings
    node.advance(1.3, answering=["m2", "m3"])
    sent = [(host, port) for message, host, port in node.take() if _isPing(message)]
    # Over UDP the transaction retransmits the one OPTIONS (Timer E);
    # no new OPTIONS is started while it waits.
    assert node.dispatcher._byName["m1"].pings - before == 1
    assert sent.count(ADDRESS["m1"]) >= 2


def test_madeUpAnswersDoNotCount():
    """
    A 503 the transaction makes up when it cannot send is no answer.
    """
    node = Node(up=False)
    node.take()

    class Broken:
        def write(self, data: bytes, host: str, port: int) -> None:
            from presence.sip.target import TransportError

            raise TransportError("no route")

    node.core.udp = Broken()  # type: ignore[assignment]
    node.clock.advance(0.5)
    assert node.dispatcher.live() == []


def test_stopLeavesNoTimers():
    node = Node()
    node.dispatcher.stop()
    node.core.transactions.stop()
    assert node.clock.getDelayedCalls() == []


# TCP links to managers.


def test_tcpManagerLink():
    clock = MemoryReactorClock()
    core = SIPCore(clock, advertisedHost=ME)
    core.udp = FakeNetwork()  # type: ignore[assignment]
    core.ports = {"UDP": 5060, "TCP": 5060}
    dispatcher = Dispatcher(core, parseManagers("t1=tcp:10.0.0.9:5070"), clock, SECRET, boot=BOOT)
    dispatcher.install()
    dispatcher.start()
    [(host, port, factory, timeout, _)] = clock.tcpClients
    assert (host, port) == ("10.0.0.9", 5070)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5070))
    protocol.makeConnection(transport)
    clock.advance(0.5)
    [ping] = [parseMessage(item, stream=True) for item in StreamFramer().dataReceived(transport.value())]
    assert ping.method == "OPTIONS"  # type: ignore[attr-defined]
    transport.clear()
    protocol.dataReceived(Response.forRequest(ping, 200, toTag="x").toBytes())  # type: ignore[arg-type]
    assert dispatcher.live() == ["t1"]

    # A SUBSCRIBE goes down the connection; the manager's NOTIFY comes up it.
    core.messageReceived(parseMessage(subscribe().toBytes()), UA)
    [forwarded] = [parseMessage(i, stream=True) for i in StreamFramer().dataReceived(transport.value())]
    transport.clear()
    assert forwarded.topVia().transport == "TCP"
    request = notify([forwarded.header("record-route") or ""])
    request.setHeader("Via", "SIP/2.0/TCP 10.0.0.9:5070;branch=z9hG4bKtcpnotify")
    protocol.dataReceived(request.toBytes())
    sent = core.udp.sent  # type: ignore[attr-defined]
    assert [(m.method, h, p) for m, h, p in sent if isinstance(m, Request) and m.method == "NOTIFY"] == [
        ("NOTIFY", UA.host, UA.port)
    ]

    # The connection closes: the manager is out at once, and reconnected.
    protocol.connectionLost(None)
    assert dispatcher.live() == []
    clock.advance(0.5)
    assert len(clock.tcpClients) == 2
    dispatcher.stop()
    core.transactions.stop()
    assert clock.getDelayedCalls() == []


# The manager's side: where its NOTIFYs go when its SUBSCRIBEs came
# through a dispatcher over TCP.


def _managerWithDispatcherFlow(recordRoute: bool) -> Tuple[Any, StreamPeer, Request]:
    """
    A manager (the manager tests' harness) given a SUBSCRIBE over a TCP
    connection from 192.0.2.50, as a dispatcher sends it; the 200 and
    first NOTIFY go back over that connection.
    """
    from tests.harness import Harness

    harness = Harness()
    link = StreamPeer(harness.core, "192.0.2.50", 40001)
    request = subscribe(transport="TCP", callId="via-dispatcher")
    request.insertHeader("Via", "SIP/2.0/TCP 192.0.2.50:5060;branch=z9hG4bKdisp1;rport")
    if recordRoute:
        request.addHeader("Record-Route", "<sip:192.0.2.50:5060;transport=tcp;lr;m=m1>")
    request.setHeader("Expires", "600")
    link.send(request)
    sent = link.received()
    assert [getattr(m, "code", getattr(m, "method", None)) for m in sent] == [200, "NOTIFY"], sent
    link.send(Response.forRequest(sent[1], 200))  # type: ignore[arg-type]
    return harness, link, request


def test_managerNotifiesOverTheDispatchersNewConnection():
    """
    The dispatcher's connection was replaced: a subscription with a route
    set is notified over the new connection from the same host (the
    Route takes it on), instead of failing on the closed one.
    """
    from tests.harness import publish

    harness, link, _ = _managerWithDispatcherFlow(recordRoute=True)
    link.close()
    other = StreamPeer(harness.core, "203.0.113.1", 40002)
    again = StreamPeer(harness.core, "192.0.2.50", 40003)
    harness.receive(publish())
    [notified] = [m for m in again.received() if isinstance(m, Request)]
    assert notified.method == "NOTIFY" and b"<basic>open</basic>" in notified.body
    assert notified.header("route") == "<sip:192.0.2.50:5060;transport=tcp;lr;m=m1>"
    assert other.received() == []
    harness.stop()


def test_managerWithoutRouteSetDoesNotSwitchConnections():
    """
    Without a route set the connection leads to the watcher itself: a
    closed one is not replaced by another from the same address.
    """
    from tests.harness import publish

    harness, link, _ = _managerWithDispatcherFlow(recordRoute=False)
    link.close()
    again = StreamPeer(harness.core, "192.0.2.50", 40003)
    harness.receive(publish())
    assert again.received() == []
    harness.stop()


# twistd presence --role.


def _options(tmp_path: Any, *args: str, config: str = "") -> Any:
    from presence.tap import Options

    path = tmp_path / "presence.ini"
    path.write_text(config)
    options = Options()
    options.parseOptions(["--config", str(path)] + list(args))
    return options


def test_roleDispatcherBuildsSipAndDispatcherOnly(tmp_path):
    import pickle

    from presence.tap import makeService

    options = _options(
        tmp_path, "--role=dispatcher",
        config="[dispatcher]\nmanagers = m1=udp:127.0.0.3:5060\n[server]\ndatabase = bad://\n",
    )
    root = makeService(options)
    assert [child.name for child in root] == ["sip", "dispatcher"]
    # Only configuration is pickled into a .tap file.
    restored = pickle.loads(pickle.dumps(root))
    assert restored.getServiceNamed("dispatcher").config == options.config


def test_roleManagerBuildsNoDispatcher(tmp_path):
    from presence.tap import makeService

    database = "sqlite:///" + str(tmp_path / "m.sqlite")
    names = [child.name for child in makeService(_options(tmp_path, "--role=manager", "--database", database))]
    assert {"store", "sip", "manager"} <= set(names) and "dispatcher" not in names


@pytest.mark.parametrize(
    "args, config, complaint",
    [
        (["--role=dispatcher"], "", "[dispatcher] managers = NAME=udp:HOST:PORT ... is needed"),
        (["--role=dispatcher"], "[dispatcher]\nmanagers = m=udp:127.0.0.3:5060\nsecret = short\n",
         "at least 16 bytes"),
        (["--role=dispatcher"], "[dispatcher]\nmanagers = m=udp:127.0.0.3:5060\nping_interval = 1\n",
         "dead_after must be at least twice ping_interval"),
        (["--role=nonsense"], "", "--role: 'nonsense' is not one of"),
    ],
)
def test_roleMistakes(tmp_path, capsys, args, config, complaint):
    with pytest.raises(SystemExit):
        _options(tmp_path, *args, config=config)
    assert complaint in capsys.readouterr().err


def test_routeSecretFromAFile(tmp_path):
    from presence.dispatcher.service import dispatcherProblem, routeSecret

    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdef0123\n")
    path.chmod(0o600)
    managers = parseManagers("m=udp:127.0.0.3:5060")
    config = Config(dispatcherManagers=managers, dispatcherSecretFile=str(path))
    assert routeSecret(config) == b"0123456789abcdef0123"
    assert dispatcherProblem(config) is None
    path.chmod(0o644)
    assert "chmod 600" in (dispatcherProblem(config) or "")
    both = config.replace(dispatcherSecret="0123456789abcdef")
    assert "not both" in (dispatcherProblem(both) or "")
    assert "cannot read" in (dispatcherProblem(config.replace(dispatcherSecretFile=str(tmp_path / "no"))) or "")
    assert routeSecret(Config(dispatcherManagers=managers)) == b""


def test_setManagersOnReload():
    """
    [dispatcher] managers changed on SIGHUP: a removed manager is dropped
    at once, the request waiting at it fails over, and a new one joins the
    rotation on its first answer.
    """
    node = Node(policy="round_robin")
    node.receive(subscribe(), UA)
    _, first = forwardedOnce(node)
    kept = [name for name in ("m1", "m2", "m3") if name != first]
    specs = parseManagers(" ".join("%s=udp:%s:%d" % ((name,) + ADDRESS[name]) for name in kept) + " m4=udp:10.0.0.4:5060")
    added, removed = node.dispatcher.setManagers(specs)
    assert (added, removed) == (["m4"], [first])
    (failedOver, host, port) = node.takeNonPing()[0]
    assert _nameAt(host, port) in kept
    assert [m.name for m in node.dispatcher.managers] == kept + ["m4"]
    assert node.dispatcher.live() == kept
    node.advance(0.6)
    pinged = {(host, port) for message, host, port in node.network.sent if _isPing(message)}
    assert ("10.0.0.4", 5060) in pinged and ADDRESS[first] not in pinged
    node.answerPings()
    assert node.dispatcher.live() == kept + ["m4"]
    with pytest.raises(ValueError):
        node.dispatcher.setManagers(())
