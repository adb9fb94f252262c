"""
SIP over WebSocket (RFC 7118) on fake transports: the opening handshake and
its refusals, one SIP message per WebSocket message, fragments, control
frames, keep-alives, size limits and hostile bytes.

The client side is wsproto in client mode, so the frames are real masked
client frames; the hostile ones are written by hand.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from presence.sip.core import SIPCore
from presence.sip.message import Request as SIPRequest, Response
from presence.sip.parser import Limits, parseMessage
from presence.sip.target import TransportError
from presence.sip.websocket import HANDSHAKE_TIMEOUT, SIPWebSocketFactory

PEER = ("192.0.2.7", 50000)


def options(callId: str = "c1", body: str = "", extra: str = "") -> bytes:
    """
    An OPTIONS as SIP.js sends it: an C{.invalid} Via host, no
    Content-Length when there is no body.
    """
    text = (
        "OPTIONS sip:192.0.2.1 SIP/2.0\r\n"
        "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK%s\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=1\r\n"
        "To: <sip:192.0.2.1>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\n%s"
        % (callId, callId, extra)
    )
    if body:
        text += "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body.encode()), body)
    else:
        text += "\r\n"
    return text.encode("utf-8")


class Client:
    """
    A WebSocket client (wsproto) connected to one server protocol over a
    StringTransport.
    """

    def __init__(
        self,
        transportName: str = "WS",
        origins: Sequence[str] = (),
        limits: Optional[Limits] = None,
        core: Optional[SIPCore] = None,
        peer: Tuple[str, int] = PEER,
    ) -> None:
        """
        @param core: the core to connect to; a new one on a Clock if
            L{None}.
        """
        if core is None:
            core = SIPCore(Clock(), limits or Limits(), advertisedHost="192.0.2.1")
        self.core = core
        self.clock = core.reactor
        self.core.ports[transportName] = 8080
        factory = SIPWebSocketFactory(self.core, transportName, self.core.limits, frozenset(origins))
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))
        self.protocol.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, event) -> None:
        self.feed(self.ws.send(event))

    def received(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def events(self) -> List[object]:
        self.ws.receive_data(self.received())
        return list(self.ws.events())

    def handshake(self, subprotocols: Sequence[str] = ("sip",), **headers: str) -> List[object]:
        extra = [(name.replace("_", "-"), value) for name, value in headers.items()]
        self.send(Request(host="192.0.2.1", target="/", subprotocols=list(subprotocols), extra_headers=extra))
        return self.events()

    def open(self, **headers: str) -> Client:
        events = self.handshake(**headers)
        assert [type(e) for e in events] == [AcceptConnection], events
        return self

    def sip(self) -> List[object]:
        """
        The SIP messages received since the last call, parsed.
        """
        messages = []
        for event in self.events():
            assert isinstance(event, (TextMessage, BytesMessage)), event
            data = event.data.encode("utf-8") if isinstance(event, TextMessage) else bytes(event.data)
            messages.append(parseMessage(data))
        return messages

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected


def refusal(data: bytes) -> Tuple[int, str]:
    """
    The status code and body of a plain HTTP refusal.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert length and int(length[0].split(b":")[1]) == len(body)
    return status, body.decode("utf-8")


def rawFrame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, length: Optional[int] = None) -> bytes:
    """
    A client frame written by hand, possibly lying about its length or
    unmasked (which a server must refuse, RFC 6455 §5.1).
    """
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    maskBit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, maskBit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, maskBit | 126, n)
    else:
        head = struct.pack("!BBQ", first, maskBit | 127, n)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# The opening handshake.


def test_handshakeAnswersTheSipSubprotocol():
    client = Client()
    assert len(client.core.flows) == 0
    data = client.handshake(subprotocols=("chat", "sip"))
    assert [(type(e), e.subprotocol) for e in data] == [(AcceptConnection, "sip")]
    assert len(client.core.flows) == 1
    flow = client.core.flows.all()[0]
    assert flow.source().transport == "WS"
    assert (flow.source().host, flow.source().port) == PEER


def test_handshakeWithoutSipRefused():
    for offered in ((), ("chat",)):
        client = Client()
        client.send(Request(host="192.0.2.1", target="/", subprotocols=list(offered)))
        status, body = refusal(client.received())
        assert status == 400
        assert "subprotocol 'sip'" in body and "RFC 7118" in body
        assert client.closed
        assert len(client.core.flows) == 0


@pytest.mark.parametrize(
    "data, status",
    [
        # A browser loading the page of the WebSocket port.
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", 400),
        # SIP spoken straight to the WebSocket port.
        (options(), 400),
        # Not HTTP at all: a TLS ClientHello on the plain port.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
        # A wrong WebSocket version.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"
            b"Sec-WebSocket-Protocol: sip\r\n\r\n",
            426,
        ),
        # POST is no upgrade.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: sip\r\nContent-Length: 0\r\n\r\n",
            400,
        ),
    ],
)
def test_badHandshakeRefused(data, status):
    client = Client()
    client.feed(data)
    got, body = refusal(client.received())
    assert got == status
    assert body.startswith("Not a WebSocket handshake")
    assert client.closed
    assert len(client.core.flows) == 0
    assert client.core.counters["malformed"] == 1
    # Whatever follows is ignored.
    client.feed(b"more")
    assert client.received() == b""


UPGRADE = (
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    "headers",
    [
        b"Host: a\r\nSec-WebSocket-Protocol: sip, \xff\xfe\r\n",
        b"Host: \xff\xfe.example\r\nSec-WebSocket-Protocol: sip\r\n",
        b"Host: a\r\nSec-WebSocket-Protocol: sip\r\nSec-WebSocket-Extensions: \xc3\x28\r\n",
    ],
)
def test_undecodableHandshakeRefused(headers):
    """
    Bytes wsproto cannot decode (it raises UnicodeDecodeError, not its own
    error) get a 400 too, and no traceback in the log.
    """
    client = Client()
    failures = watchFailures(client)
    client.feed(UPGRADE + headers + b"\r\n")
    status, body = refusal(client.received())
    assert status == 400 and "undecodable header" in body
    assert client.closed and failures == []


def watchFailures(client: Client) -> List[dict]:
    """
    The failures the client's server protocol logs from now on.
    """
    from twisted.logger import Logger

    failures: List[dict] = []
    client.protocol.log = Logger(observer=lambda event: failures.append(event) if "log_failure" in event else None)
    return failures


def test_wrongVersionNamesTheRightOne():
    client = Client()
    client.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in client.received()


def test_hugeHandshakeHeadRefusedWithoutBuffering():
    """
    At most 16 KiB of an incomplete handshake are kept: a peer sending an
    endless header is refused, not buffered.
    """
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ")
    for _ in range(40):
        client.feed(b"a" * 1024)
        if client.closed:
            break
    assert client.closed
    assert refusal(client.received())[0] == 431


def test_originList():
    allowed = ("https://phone.example.test",)
    assert Client(origins=allowed).handshake(origin="https://PHONE.example.test")[0].subprotocol == "sip"
    # No Origin: not a browser, let in.
    assert isinstance(Client(origins=allowed).handshake()[0], AcceptConnection)
    client = Client(origins=allowed)
    client.send(Request(host="a", target="/", subprotocols=["sip"], extra_headers=[("Origin", "https://evil.test")]))
    status, body = refusal(client.received())
    assert status == 403 and "https://evil.test" in body
    assert len(client.core.flows) == 0
    # Without a list, any page may connect.
    assert isinstance(Client().handshake(origin="https://evil.test")[0], AcceptConnection)


def test_handshakeTimesOut():
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\n")
    client.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
    assert not client.closed
    client.clock.advance(0.2)
    assert client.transport.disconnecting
    assert client.clock.getDelayedCalls() == []


def test_handshakeDoneCancelsTheTimeout():
    client = Client().open()
    assert client.clock.getDelayedCalls() == []
    client.clock.advance(HANDSHAKE_TIMEOUT * 2)
    assert not client.closed


# SIP messages.


@pytest.mark.parametrize("binary", [False, True])
def test_requestAnsweredOverTheSameConnection(binary):
    client = Client().open()
    data = options()
    client.send(BytesMessage(data=data) if binary else TextMessage(data=data.decode()))
    events = client.events()
    # Our answers are UTF-8 text, whatever the request came as.
    assert [type(e) for e in events] == [TextMessage]
    response = parseMessage(events[0].data.encode())
    assert response.code == 200
    via = response.header("via")
    assert via.startswith("SIP/2.0/WS df7jal23ls0d.invalid;")
    assert "received=192.0.2.7" in via


def test_oneMessagePerWebSocketMessage():
    """
    The WebSocket frames the message: no Content-Length is needed, and a
    body runs to the end of the WebSocket message.
    """
    client = Client().open()
    client.send(TextMessage(data=options("a").decode()))
    client.send(TextMessage(data=options("b", body="héllo").decode()))
    assert [r.callId for r in client.sip()] == ["a", "b"]


def test_fragmentsReassembled():
    client = Client().open()
    data = options("frag").decode()
    client.send(TextMessage(data=data[:10], message_finished=False))
    client.send(TextMessage(data=data[10:50], message_finished=False))
    # A ping between fragments is answered at once (RFC 6455 §5.4).
    client.send(Ping(payload=b"between"))
    assert [type(e) for e in client.events()] == [Pong]
    client.send(TextMessage(data=data[50:], message_finished=True))
    assert [r.callId for r in client.sip()] == ["frag"]


def test_utf8SplitAcrossFragments():
    client = Client().open()
    text = options("utf", body="ü€𝄞").decode()
    raw = text.encode()
    # Cut inside the three bytes of the euro sign.
    cut = len(text[: text.index("€")].encode()) + 1
    client.feed(rawFrame(0x1, raw[:cut], fin=False) + rawFrame(0x0, raw[cut:]))
    (response,) = client.sip()
    assert response.callId == "utf"


def test_keepAliveAnswered():
    client = Client().open()
    client.send(TextMessage(data="\r\n\r\n"))
    assert [(type(e), e.data) for e in client.events()] == [(TextMessage, "\r\n")]
    assert client.core.counters["keepalives"] == 1
    # Stray CRLFs alone are dropped quietly.
    client.send(TextMessage(data="\r\n"))
    assert client.events() == []
    assert client.core.counters["malformed"] == 0


def test_pingAnswered():
    client = Client().open()
    client.send(Ping(payload=b"x1"))
    assert [(type(e), e.payload) for e in client.events()] == [(Pong, b"x1")]
    client.send(Pong(payload=b"unasked"))
    assert client.events() == []


def test_malformedSipAnsweredAndConnectionKept():
    client = Client().open()
    client.send(TextMessage(data=options(extra="Content-Length: zz\r\n").decode()))
    (response,) = client.sip()
    assert response.code == 400
    assert not client.closed
    client.send(TextMessage(data=options("again").decode()))
    assert [r.code for r in client.sip()] == [200]


def test_requestSentOverTheFlowWithAWebSocketVia():
    client = Client("WSS").open()
    flow = client.core.flows.all()[0]
    notify = SIPRequest("NOTIFY", "sip:alice@df7jal23ls0d.invalid;transport=ws")
    for name, value in [("From", "<sip:bob@example.test>;tag=x"), ("To", "<sip:alice@example.test>;tag=y"),
                        ("Call-ID", "n1"), ("CSeq", "1 NOTIFY"), ("Max-Forwards", "70")]:
        notify.addHeader(name, value)
    client.core.sendRequest(notify, flow.source())
    (sent,) = client.sip()
    assert sent.method == "NOTIFY"
    assert sent.header("via").startswith("SIP/2.0/WSS 192.0.2.1:8080;branch=")
    assert client.core.contactFor(flow.source()) == "<sip:192.0.2.1:8080;transport=wss>"
    client.core.transactions.stop()


# Limits and hostile frames.


def small() -> Limits:
    return Limits(maxMessageSize=2000, maxBodySize=1000)


def test_oversizeBodyAnswered413AndClosed1009():
    client = Client(limits=small()).open()
    client.send(TextMessage(data=options("big", body="x" * 3000).decode()))
    events = client.events()
    assert [type(e) for e in events] == [TextMessage, CloseConnection]
    response = parseMessage(events[0].data.encode())
    assert (response.code, response.callId) == (413, "big")
    assert events[1].code == 1009
    assert client.transport.disconnecting


def test_oversizeHeadAnswered513():
    client = Client(limits=Limits(maxMessageSize=2000, maxBodySize=1900)).open()
    client.send(TextMessage(data=options("big", extra="X-Pad: %s\r\n" % ("p" * 1500,), body="y" * 400).decode()))
    events = client.events()
    assert parseMessage(events[0].data.encode()).code == 513
    assert events[1].code == 1009


def test_oversizeFragmentsStopEarly():
    """
    Fragments over the limit close the connection as soon as the limit is
    passed, whatever the message would have grown to; nothing is answered
    when no head was seen.
    """
    client = Client(limits=small()).open()
    for _ in range(5):
        client.send(BytesMessage(data=b"z" * 600, message_finished=False))
        if client.closed:
            break
    assert client.closed
    events = client.events()
    assert [type(e) for e in events] == [CloseConnection]
    assert events[0].code == 1009


def test_hugeDeclaredFrameNotBuffered():
    """
    A frame announcing 2**40 bytes is cut off once the limit is passed.
    """
    client = Client(limits=small()).open()
    client.feed(rawFrame(0x2, b"", length=1 << 40)[: 2 + 8 + 4])
    assert not client.closed
    for _ in range(10):
        client.feed(b"\x00" * 512)
        if client.closed:
            break
    assert client.closed
    assert [e.code for e in client.events()] == [1009]


def test_badUtf8TextClosed1007():
    client = Client().open()
    client.feed(rawFrame(0x1, options("bad") + b"\xff\xfe"))
    events = client.events()
    assert [(type(e), e.code) for e in events] == [(CloseConnection, 1007)]
    assert client.closed
    assert client.core.counters["requests"] == 0


def test_unmaskedFrameClosed1002():
    client = Client().open()
    client.feed(rawFrame(0x1, options(), mask=False))
    assert [e.code for e in client.events()] == [1002]
    assert client.closed


def test_oversizeControlFrameClosed1002():
    client = Client().open()
    client.feed(rawFrame(0x9, b"p" * 126))
    assert [e.code for e in client.events()] == [1002]


def test_peerCloseEchoedAndFlowRemoved():
    client = Client().open()
    closed = []
    client.core.flows.addCloseListener(closed.append)
    token = client.protocol.token
    client.send(CloseConnection(code=1001, reason="bye"))
    assert [(type(e), e.code) for e in client.events()] == [(CloseConnection, 1001)]
    assert client.transport.disconnecting
    with pytest.raises(TransportError):
        client.protocol.write(b"too late")
    client.protocol.connectionLost(None)
    assert closed == [token]
    assert len(client.core.flows) == 0


def test_closeOnStopSaysGoingAway():
    client = Client().open()
    client.protocol.close()
    assert [(type(e), e.code) for e in client.events()] == [(CloseConnection, 1001)]
    assert client.transport.disconnecting
    with pytest.raises(TransportError):
        client.protocol.write(options())


def test_connectionLostMidHandshakeLeavesNothing():
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\n")
    client.protocol.connectionLost(None)
    assert client.clock.getDelayedCalls() == []
    assert len(client.core.flows) == 0


# Properties over arbitrary input.


def _segments(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted(set(c % (len(data) + 1) for c in cuts))
    out, last = [], 0
    for point in points + [len(data)]:
        out.append(data[last:point])
        last = point
    return [part for part in out if part]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10000), max_size=12), st.integers(min_value=1, max_value=5))
def test_anySegmentationGivesTheSameAnswers(cuts, count):
    """
    However TCP cuts the handshake and the frames, every request is
    answered once, in order.
    """
    client = Client()
    # A client that sends its first frames without waiting for the 101.
    data = client.ws.send(Request(host="192.0.2.1", target="/ws", subprotocols=["sip"]))
    for i in range(count):
        raw = options("m%d" % i)
        half = len(raw) // 2
        data += rawFrame(0x1, raw[:half], fin=False) + rawFrame(0x0, raw[half:])
    for segment in _segments(data, cuts):
        client.feed(segment)
    events = client.events()
    assert isinstance(events[0], AcceptConnection)
    ids = [parseMessage(e.data.encode()).callId for e in events[1:]]
    assert ids == ["m%d" % i for i in range(count)]
    client.core.transactions.stop()


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        # A well-formed upgrade with arbitrary header bytes.
        st.binary(max_size=80).map(lambda b: UPGRADE + b"Host: a\r\nSec-WebSocket-Protocol: sip\r\nX: " + b + b"\r\n\r\n"),
        st.binary(max_size=80).map(lambda b: UPGRADE + b"Host: " + b + b"\r\nSec-WebSocket-Protocol: " + b + b"\r\n\r\n"),
    ),
    st.booleans(),
)
def test_arbitraryBytesNeverRaise(data, afterHandshake):
    """
    Any bytes, as a handshake or as frames, leave the protocol answering,
    closing or waiting, never raising, and never with a flow left behind
    by a connection that did not upgrade.
    """
    client = Client()
    failures = watchFailures(client)
    if afterHandshake:
        client.open()
    client.feed(data)
    client.feed(data)
    if client.protocol.token is None:
        assert len(client.core.flows) == 0
    assert failures == []
    client.protocol.connectionLost(None)
    assert len(client.core.flows) == 0
    client.core.transactions.stop()


# Listen specs, configuration and the service's listeners.


def test_listenSpecs():
    from presence.sip.listen import ListenError, ListenSpec

    spec = ListenSpec.fromString("ws:8080:interface=127.0.0.1:backlog=64")
    assert (spec.transport, spec.port, spec.interface, spec.options) == ("WS", 8080, "127.0.0.1", {"backlog": "64"})
    spec = ListenSpec.fromString("wss:8443:privateKey=k.pem:certKey=c.pem")
    assert spec.transport == "WSS" and spec.options == {"privateKey": "k.pem", "certKey": "c.pem"}
    assert ListenSpec.fromString(str(spec)) == spec
    for bad, complaint in [
        ("wss:8443", "wss: needs privateKey= and certKey="),
        ("ws:8080:privateKey=k.pem", "unknown option 'privateKey=k.pem'"),
        ("ws:http", "bad port"),
    ]:
        with pytest.raises(ListenError) as raised:
            ListenSpec.fromString(bad)
        assert complaint in str(raised.value)


def test_originsSetting():
    from presence.config import Config

    config = Config.fromString(
        "[server]\nlisten = udp:5060 ws:8080\n"
        "websocket_origins = https://Phone.example.test, http://localhost:8000\n"
    )
    assert [s.transport for s in config.listen] == ["UDP", "WS"]
    assert config.websocketOrigins == ("https://phone.example.test", "http://localhost:8000")
    assert Config().websocketOrigins == ()


def test_serviceListensOnItsOwnPort():
    """
    A ws: listener on port 0 gets a free port of its own (TCP's is taken
    by the SIP TCP listener), and serves WebSocket with the origin list.
    """
    from twisted.internet.testing import MemoryReactorClock

    from presence.config import Config
    from presence.sip.listen import ListenSpec
    from presence.sip.service import SIPService

    class Reactor(MemoryReactorClock):
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            from tests.test_sipservice import FakeUDPPort

            return FakeUDPPort(interface or "0.0.0.0", 40000)

    reactor = Reactor()
    config = Config(
        listen=(ListenSpec("UDP", 0, "127.0.0.1"), ListenSpec("TCP", 0, "127.0.0.1"), ListenSpec("WS", 0, "127.0.0.1")),
        websocketOrigins=("https://phone.example.test",),
    )
    sip = SIPService(config, reactor)
    sip.startService()
    (tcp, ws) = reactor.tcpServers
    assert tcp[0] == 40000 and ws[0] == 0
    factory = ws[1]
    assert isinstance(factory, SIPWebSocketFactory)
    assert factory.transportName == "WS" and factory.origins == frozenset(["https://phone.example.test"])
    sip.stopService()


def test_dispatcherRouteNamesAWebSocketFlow():
    """
    The dispatcher's signed Record-Route names a WS flow like a TCP one,
    and decodes back to it.
    """
    from presence.dispatcher.route import RouteCodec
    from presence.sip.target import Target

    codec = RouteCodec(b"secret", "0a1b2c3d")
    params = codec.params("m1", Target("WSS", "192.0.2.7", 50000, "f1a"))
    assert ";t=wss;f=0a1b2c3d.f1a;" in params
    decoded = dict(p.split("=") for p in params.strip(";").split(";"))
    info = codec.decode(decoded)
    assert (info.manager, info.transport, info.boot, info.token) == ("m1", "WSS", "0a1b2c3d", "f1a")


# Registrations and subscriptions over WebSocket, at a manager with its
# registrar (tests.registrarharness).


def test_registrationOverWebSocketEndsWithTheConnection():
    """
    A browser registers an C{.invalid} contact over its WebSocket: its
    watcher sees it open, and closed the moment the connection closes,
    as for TCP.
    """
    import re

    from tests.registrarharness import BOB, RegistrarHarness, register

    h = RegistrarHarness()
    try:
        h.subscribed(uri=BOB)
        bob = Client(core=h.core).open()
        source = bob.protocol.source()
        bob.send(TextMessage(data=register(contacts=["<sip:k3l9a@x7u1mm4v.invalid;transport=ws>"], source=source).toBytes().decode()))
        (ok,) = bob.sip()
        assert ok.code == 200
        assert ok.header("contact").startswith("<sip:k3l9a@x7u1mm4v.invalid;transport=ws>")
        _, (notify,) = h.split()
        assert re.findall(rb"<basic>(\w+)</basic>", notify.body) == [b"open"]
        h.answer(notify)
        bob.send(CloseConnection(code=1001))
        bob.protocol.connectionLost(None)
        _, (notify,) = h.split()
        assert re.findall(rb"<basic>(\w+)</basic>", notify.body) == [b"closed"]
        assert h.registrar.counters["flowClosed"] == 1
    finally:
        h.stop()


def test_watcherOverWebSocketNotifiedOverIt():
    """
    A watcher subscribing over WebSocket gets its NOTIFYs down the same
    connection, addressed to its C{.invalid} contact.
    """
    from tests.harness import publish, subscribe
    from tests.registrarharness import BOB, RegistrarHarness

    h = RegistrarHarness()
    try:
        alice = Client(core=h.core).open()
        sub = subscribe(uri=BOB, source=alice.protocol.source())
        sub.setHeader("Contact", "<sip:q8w2@df7jal23ls0d.invalid;transport=ws;ob>")
        alice.send(TextMessage(data=sub.toBytes().decode()))
        ok, notify = alice.sip()
        assert ok.code == 200 and notify.method == "NOTIFY"
        assert notify.uri == "sip:q8w2@df7jal23ls0d.invalid;transport=ws;ob"
        assert notify.header("via").startswith("SIP/2.0/WS ")
        assert h.split() == ([], [])
        alice.send(TextMessage(data=Response.forRequest(notify, 200).toBytes().decode()))
        h.receive(publish(BOB))
        (published,) = h.responses()
        assert published.code == 200
        (update,) = alice.sip()
        assert update.method == "NOTIFY" and b"<basic>open</basic>" in update.body
        alice.send(TextMessage(data=Response.forRequest(update, 200).toBytes().decode()))
    finally:
        h.stop()


def test_factoryNamesHTTP11ForALPN():
    """
    Over WSS a browser offers ALPN (http/1.1): the factory must name it,
    or Twisted's TLS refuses the handshake (an internal-error alert).
    """
    from twisted.internet.interfaces import IProtocolNegotiationFactory

    factory = SIPWebSocketFactory(SIPCore(Clock(), Limits()), "WSS", Limits())
    assert IProtocolNegotiationFactory.providedBy(factory)
    assert factory.acceptableProtocols() == [b"http/1.1"]


# Through a dispatcher (tests.test_dispatcher's node: managers over a
# fake UDP network).


def test_dispatcherRecordRoutesAWebSocketFlowAndNotifiesDownIt():
    """
    A SUBSCRIBE from a browser gets the dispatcher's signed Record-Route
    naming its WebSocket flow (transport=ws); the manager's NOTIFY comes
    back down that connection, and once it has closed is answered 430.
    """
    from tests.test_dispatcher import BOOT, ADDRESS, Node, answerFrom, forwardedOnce, notify, routeParams, subscribe

    node = Node()
    browser = Client(core=node.core).open()
    request = subscribe(transport="WS")
    request.setHeader("Contact", "<sip:q8w2@df7jal23ls0d.invalid;transport=ws>")
    browser.send(TextMessage(data=request.toBytes().decode()))
    forwarded, owner = forwardedOnce(node)
    recordRoute = forwarded.header("record-route") or ""
    assert routeParams(recordRoute)["transport"] == "ws"
    assert recordRoute.startswith("<sip:192.0.2.1:8080;transport=ws;lr;")
    info = node.dispatcher.routes.decode(routeParams(recordRoute))
    assert (info.transport, info.boot, info.token) == ("WS", BOOT, browser.protocol.token)
    answerFrom(node, owner, forwarded, 200)
    (ok,) = browser.sip()
    assert ok.code == 200

    node.receive(notify([recordRoute], uri="sip:q8w2@df7jal23ls0d.invalid;transport=ws"), node.fromManager(owner))
    (relayed,) = browser.sip()
    assert relayed.method == "NOTIFY" and relayed.header("via").startswith("SIP/2.0/WS 192.0.2.1:8080;")
    browser.send(TextMessage(data=Response.forRequest(relayed, 200).toBytes().decode()))
    [(answered, host, port)] = node.takeNonPing()
    assert answered.code == 200 and (host, port) == ADDRESS[owner]

    browser.protocol.connectionLost(None)
    node.receive(notify([recordRoute]), node.fromManager(owner))
    [(failed, _, _)] = node.takeNonPing()
    assert failed.code == 430
    node.dispatcher.stop()
    node.core.transactions.stop()
