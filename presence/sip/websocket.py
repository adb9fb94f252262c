"""
SIP over WebSocket and secure WebSocket (RFC 7118): what browser
softphones (SIP.js, JsSIP) speak.

The WebSocket protocol itself, the HTTP/1.1 upgrade handshake and the
framing (masking, fragments, control frames, UTF-8 checks of text frames),
is wsproto's: a sans-IO library, so this protocol only moves bytes between
the socket and it, as the TCP transport does with L{StreamFramer}.
Twisted's own C{twisted.web.websocket} negotiates no subprotocol (browsers
refuse a 101 without C{Sec-WebSocket-Protocol: sip}) and, in the 26.4
release that PyPy 3.9 runs, hands fragments to the application; autobahn
needs Python 3.11.

What RFC 7118 adds on top is here:

 - the handshake must offer the C{sip} subprotocol (§4), and is refused
   with a plain HTTP error naming what is missing otherwise; an optional
   list of allowed C{Origin}s refuses other web pages (403);
 - each WebSocket message, text or binary, carries exactly one SIP message
   (§5.1), framed by the WebSocket and not by Content-Length, within the
   size limits of every other transport: a message over them is answered
   413 or 513 when its head is readable, and the connection closed with
   1009 (Message Too Big);
 - a message of CRLF CRLF is a keep-alive, answered with CRLF as on TCP
   (RFC 5626 §4.4.1), which is what SIP.js and JsSIP send;
 - each connection is a flow of the core, registered once the handshake is
   done, so that responses and NOTIFYs go back over it: the client's Via
   and Contact name C{.invalid} hosts that nothing could connect to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, FrozenSet, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError
from zope.interface import implementer

from presence.sip.parser import FramingError, Limits
from presence.sip.target import Target, TransportError
from presence.sip.transport import deliver

if TYPE_CHECKING:
    from presence.sip.core import SIPCore

#: The subprotocol RFC 7118 §4 registers.
SUBPROTOCOL = "sip"

#: Seconds a connection may take to complete its opening handshake.
HANDSHAKE_TIMEOUT = 10.0

#: The largest opening handshake taken, in bytes (h11's own limit).
MAX_HANDSHAKE = 16384


class SIPWebSocketProtocol(Protocol):
    """
    SIP over one WebSocket connection (plain, or inside TLS for WSS).

    It offers what the core and its users expect of a flow, as
    L{presence.sip.transport.SIPStreamProtocol} does: C{transportName},
    C{peer}, C{token}, L{source} and L{write}.

    @ivar factory: the L{SIPWebSocketFactory} of its listener.
    @ivar transportName: C{"WS"} or C{"WSS"}.
    @ivar token: the flow token, once the handshake is done.
    """

    log = Logger()

    def __init__(self, factory: SIPWebSocketFactory) -> None:
        self.factory = factory
        self.core = factory.core
        self.transportName = factory.transportName
        self.limits = factory.limits
        self.token: Optional[str] = None
        self.peer: Tuple[str, int] = ("", 0)
        self._ws = WSConnection(ConnectionType.SERVER)
        # The opening handshake until its end (CRLF CRLF) has arrived.
        self._head: Optional[bytearray] = bytearray()
        # The parts of the WebSocket message being received, and their size.
        self._parts: List[bytes] = []
        self._size = 0
        # Set once we close or refuse: what the peer sends then is ignored.
        self._done = False
        self._timer: Any = None

    # Connection events.

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = (address.host, address.port)
        self._timer = self.core.reactor.callLater(HANDSHAKE_TIMEOUT, self._handshakeTimedOut)  # type: ignore[attr-defined]

    def connectionLost(self, reason: object = None) -> None:
        self._done = True
        self._cancelTimer()
        if self.token is not None:
            self.core.flows.remove(self.token)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.log.info("WebSocket handshake from {peer} timed out", peer=self.peer)
        self._done = True
        self.transport.abortConnection()

    def source(self) -> Target:
        return Target(self.transportName, self.peer[0], self.peer[1], self.token)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        head = self._head
        if head is not None:
            # wsproto would drop whatever follows the handshake in the same
            # segment, so it is given the handshake alone, the frames once
            # the connection is open.
            scanned = max(0, len(head) - 3)
            head += data
            end = head.find(b"\r\n\r\n", scanned)
            if end < 0:
                if len(head) > MAX_HANDSHAKE:
                    self._refuse(431, "The WebSocket handshake is over %d bytes" % (MAX_HANDSHAKE,))
                return
            self._head = None
            self._receive(bytes(head[: end + 4]))
            data = bytes(head[end + 4 :])
            if self._done or not data:
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        ws = self._ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                self._event(event)
                if self._done:
                    return
        except RemoteProtocolError as e:
            # Only the handshake raises it: not HTTP, or not an upgrade.
            hint = e.event_hint
            status = getattr(hint, "status_code", 400)
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in getattr(hint, "headers", [])]
            self._refuse(status, "Not a WebSocket handshake: %s" % (e,), headers)
        except Exception as e:
            if self.token is None and isinstance(e, (UnicodeError, ValueError)):
                # wsproto decodes the Host, the subprotocols and the path
                # without catching what is not ASCII (or IDNA).
                self._refuse(400, "Not a WebSocket handshake: undecodable header (%s)" % (type(e).__name__,))
                return
            self.log.failure("Unexpected error on the WebSocket from {peer}", peer=self.peer)
            self._done = True
            self.transport.abortConnection()

    def _event(self, event: Event) -> None:
        if isinstance(event, TextMessage):
            self._part(event.data.encode("utf-8"), event.message_finished)
        elif isinstance(event, BytesMessage):
            self._part(bytes(event.data), event.message_finished)
        elif isinstance(event, Request):
            self._handshake(event)
        elif isinstance(event, Ping):
            self.transport.write(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._closed(event)
        # Pongs need no answer.

    # The opening handshake (RFC 6455 §4.2, RFC 7118 §4).

    def _handshake(self, request: Request) -> None:
        offered = [p for p in request.subprotocols if p.lower() == SUBPROTOCOL]
        if not offered:
            self._refuse(
                400,
                "SIP over WebSocket needs the subprotocol %r (Sec-WebSocket-Protocol: sip, RFC 7118); "
                "offered: %s" % (SUBPROTOCOL, ", ".join(request.subprotocols) or "none"),
            )
            return
        origins = self.factory.origins
        if origins:
            origin = _header(request, b"origin")
            # A client without an Origin is no browser, and one that is not
            # a browser can send any Origin it likes: the list keeps other
            # web pages from using their visitors' browsers, nothing more.
            if origin is not None and origin.lower() not in origins:
                self._refuse(403, "Origin %s is not allowed" % (origin,))
                return
        self.transport.write(self._ws.send(AcceptConnection(subprotocol=offered[0])))
        self._cancelTimer()
        self.token = self.core.flows.add(self)
        if self.core.logRequests:
            self.log.debug(
                "{transport} connection {token} from {peer} upgraded (path {path})",
                transport=self.transportName,
                token=self.token,
                peer=self.peer,
                path=request.target,
            )

    def _refuse(self, status: int, reason: str, headers: Sequence[Tuple[str, str]] = ()) -> None:
        """
        Answer the handshake with a plain-text HTTP error and close.

        The response is written here rather than through wsproto: after a
        malformed request its HTTP state machine may refuse to send one.
        """
        self._done = True
        self._cancelTimer()
        self.core.counters["malformed"] += 1
        self.log.info(
            "Refused a WebSocket handshake from {peer}: {status} {reason}",
            peer=self.peer,
            status=status,
            reason=reason,
        )
        body = (reason + "\r\n").encode("utf-8")
        lines = ["HTTP/1.1 %d %s" % (status, _HTTP_REASONS.get(status, "Bad Request"))]
        lines += ["%s: %s" % (name, value) for name, value in headers if name.lower() != "content-length"]
        lines += [
            "Content-Type: text/plain; charset=utf-8",
            "Content-Length: %d" % (len(body),),
            "Connection: close",
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.transport.loseConnection()

    # Messages.

    def _part(self, data: bytes, finished: bool) -> None:
        """
        Gather one WebSocket message (its fragments, and each fragment as
        it arrives), never holding more than the message size limit.
        """
        self._size += len(data)
        if self._size > self.limits.maxMessageSize:
            self._tooLarge(data)
            return
        if not finished:
            self._parts.append(data)
            return
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
        self._size = 0
        self._message(data)

    def _message(self, data: bytes) -> None:
        if not data.strip(b"\r\n"):
            if b"\r\n\r\n" in data:
                counters = self.core.counters
                counters["keepalives"] = counters.get("keepalives", 0) + 1
                self.write(b"\r\n")
            return
        deliver(self.core, data, self.limits, self.source())

    def _tooLarge(self, data: bytes) -> None:
        """
        A message over C{[sip] max_message_size}: answer a request whose
        head has arrived 413 (its body is too large) or 513, then close
        with 1009 (RFC 6455 §7.4.1).
        """
        received = b"".join(self._parts) + data
        self._parts = []
        end = received.find(b"\r\n\r\n")
        if end >= 0:
            bodySize = self._size - end - 4
            code, reason = (413, "Request Entity Too Large") if bodySize > self.limits.maxBodySize else (513, "Message Too Large")
            response = FramingError(code, reason, received[:end]).errorResponse(self.limits)
            if response is not None:
                self.write(self.core.serialise(response))
        self.log.warn(
            "Closing {transport} flow from {peer}: a message of more than {limit} bytes",
            transport=self.transportName,
            peer=self.peer,
            limit=self.limits.maxMessageSize,
        )
        self.close(CloseReason.MESSAGE_TOO_BIG, "SIP message too large")

    def _closed(self, event: CloseConnection) -> None:
        """
        The peer closed, or sent what wsproto cannot accept (a protocol
        error, bad UTF-8 in a text message: wsproto reports those as a close
        with the code to answer, while the connection is still open).
        """
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            self.transport.write(self._ws.send(event.response()))
            self._done = True
            self.transport.loseConnection()
            return
        self.log.info(
            "Closing {transport} flow from {peer}: {code} {reason}",
            transport=self.transportName,
            peer=self.peer,
            code=int(event.code),
            reason=event.reason,
        )
        self.close(event.code, event.reason or "")

    # Sending.

    def write(self, data: bytes) -> None:
        """
        Send one SIP message as one WebSocket message: text when it is
        UTF-8 (as every message we make is), else binary (RFC 7118 §5.1).

        @raise TransportError: when the connection is not open.
        """
        if self._ws.state is not ConnectionState.OPEN or self._done:
            raise TransportError("%s flow %s to %s:%d is closing" % (self.transportName, self.token, self.peer[0], self.peer[1]))
        try:
            event: Event = TextMessage(data=data.decode("utf-8"))
        except UnicodeDecodeError:
            event = BytesMessage(data=data)
        self.transport.write(self._ws.send(event))

    def close(self, code: int = CloseReason.GOING_AWAY, reason: str = "") -> None:
        """
        Send a close frame and drop the connection (a server closes the
        TCP connection first, RFC 6455 §7.1.1).  Without a code: 1001,
        the server is going away (it stops).
        """
        if self._ws.state is ConnectionState.OPEN:
            self.transport.write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._done = True
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class SIPWebSocketFactory(Factory):
    """
    Makes a L{SIPWebSocketProtocol} for each accepted WS or WSS connection.

    @ivar origins: the lower-case C{Origin} values allowed; empty for any.
    """

    noisy = False

    def __init__(
        self, core: SIPCore, transportName: str, limits: Limits, origins: FrozenSet[str] = frozenset()
    ) -> None:
        self.core = core
        self.transportName = transportName
        self.limits = limits
        self.origins = origins

    def buildProtocol(self, addr: object) -> SIPWebSocketProtocol:
        return SIPWebSocketProtocol(self)

    def acceptableProtocols(self) -> List[bytes]:
        """
        The ALPN protocol of WSS: the WebSocket handshake is HTTP/1.1.
        Over TLS, Twisted fails the handshake of a client offering ALPN
        (every browser does) when the factory names no protocol.
        """
        return [b"http/1.1"]


_HTTP_REASONS = {400: "Bad Request", 403: "Forbidden", 426: "Upgrade Required", 431: "Request Header Fields Too Large"}


def _header(request: Request, name: bytes) -> Optional[str]:
    """
    The value of the handshake header C{name} (lower case), or L{None}.
    """
    for key, value in request.extra_headers:
        if key == name:
            return bytes(value).decode("latin-1").strip()
    return None
