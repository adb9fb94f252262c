"""
Twisted protocols that move SIP bytes: one for datagrams (UDP), one for
streams (TCP and TLS).

They only frame, parse and hand each message to the L{SIPCore} they were
made for, which is shared by every transport (as Twisted Names shares one
controller between its UDP and TCP servers).  Nothing a peer sends may raise
out of them.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from presence.sip.intake import DROP, REFUSE, Datagram, Shedder, isNewWork, refusal
from presence.sip.parser import PING, FramingError, Limits, ParseError, StreamFramer, parseMessage
from presence.sip.randomness import randomBytes
from presence.sip.stun import bindingResponse
from presence.sip.target import Target, TransportError

if TYPE_CHECKING:
    from presence.sip.core import SIPCore


_log = Logger()


def deliver(
    core: SIPCore, data: bytes, limits: Limits, source: Target, stream: bool = False, refuse: bool = False
) -> None:
    """
    Parse one framed message (a datagram, a message cut from a stream, a
    WebSocket message) and hand it to C{core}, or tell the core it was
    malformed.  Never raises.

    @param stream: C{True} when Content-Length framed C{data} (TCP, TLS),
        where a body without it is an error; C{False} when the transport's
        own framing did (UDP, WebSocket).
    @param refuse: answer a new request 503 (overload, L{presence.sip.intake}).
    """
    try:
        message = parseMessage(data, limits, stream)
    except ParseError as e:
        core.badMessage(e, source)
        return
    except Exception:
        _log.failure("Unexpected error parsing a message from {source}", source=source)
        return
    core.messageReceived(message, source, refuse)


class SIPDatagramProtocol(DatagramProtocol):
    """
    SIP over UDP: one message per datagram (RFC 3261 §18.3).  STUN Binding
    requests on the same port, the keep-alives of SIP Outbound over UDP
    (RFC 5626 §4.4.2), are answered here; CRLF keep-alives parse as empty
    messages and are dropped quietly by the core.
    """

    log = Logger()
    noisy = False

    def __init__(self, core: SIPCore, limits: Limits, shedder: Optional[Shedder] = None) -> None:
        """
        @param shedder: decides which new requests a turn serves (see
            L{presence.sip.intake}); without one, all are.
        """
        self.core = core
        self.limits = limits
        self.shedder = shedder

    def datagramReceived(self, data: bytes, addr: Tuple[str, int]) -> None:
        if data[:1] in (b"\x00", b"\x01"):
            # No SIP message starts with these bytes: STUN (RFC 7983 §7).
            self._stunReceived(data, addr)
            return
        deliver(self.core, data, self.limits, Target("UDP", addr[0], addr[1]))

    def datagramsReceived(self, batch: List[Datagram]) -> None:
        """
        The datagrams of one reactor turn (an L{IntakePort}'s): all but new
        SUBSCRIBEs and PUBLISHes first, in order; then those, each served,
        refused 503 or dropped unparsed as the shedder decides by how long
        it waited.
        """
        shedder = self.shedder
        if shedder is None:
            for data, addr, _ in batch:
                self.datagramReceived(data, addr)
            return
        later: List[Datagram] = []
        for item in batch:
            if isNewWork(item[0]):
                later.append(item)
            else:
                self.datagramReceived(item[0], item[1])
        for data, addr, arrival in later:
            decision = shedder.decide(arrival)
            if decision is REFUSE:
                self._refuse(data, addr)
            elif decision is not DROP:
                deliver(self.core, data, self.limits, Target("UDP", addr[0], addr[1]))

    def _refuse(self, data: bytes, addr: Tuple[str, int]) -> None:
        """
        Answer a shed request 503 without parsing it, unless it is the
        retransmission of a request whose transaction exists (its answer
        is that transaction's) or too unusual to answer unparsed.
        """
        core = self.core
        try:
            quick = refusal(data, addr[0], addr[1], core.retryAfter, randomBytes(6).hex())
        except Exception:
            self.log.failure("Unexpected error refusing a request from {addr}", addr=addr)
            return
        if quick is None or core.transactions.hasServer(*quick[0]):
            deliver(core, data, self.limits, Target("UDP", addr[0], addr[1]), refuse=True)
            return
        counters = core.counters
        counters["overloadRefused"] = counters.get("overloadRefused", 0) + 1
        if self.transport is not None:
            try:
                self.transport.write(quick[1], quick[2])
            except Exception as e:
                counters["sendErrors"] += 1
                self.log.info("503 to {addr} failed: {error}", addr=quick[2], error=str(e))

    def _stunReceived(self, data: bytes, addr: Tuple[str, int]) -> None:
        """
        Answer a STUN Binding request (a keep-alive); drop anything else.
        """
        response = bindingResponse(data, addr[0], addr[1])
        counters = self.core.counters
        if response is None:
            counters["malformed"] += 1
            return
        counters["keepalives"] = counters.get("keepalives", 0) + 1
        if self.core.logRequests:
            self.log.debug("STUN keep-alive from {host}:{port}", host=addr[0], port=addr[1])
        if self.transport is not None:
            try:
                self.transport.write(response, addr)
            except Exception as e:
                self.log.info("STUN answer to {addr} failed: {error}", addr=addr, error=str(e))

    def write(self, data: bytes, host: str, port: int) -> None:
        """
        Send one datagram.

        @raise TransportError: if the socket refuses it.
        """
        if self.transport is None:
            raise TransportError("UDP transport not listening")
        try:
            self.transport.write(data, (host, port))
        except Exception as e:
            raise TransportError("UDP send to %s:%d failed: %s" % (host, port, e))


class SIPStreamProtocol(Protocol):
    """
    SIP over one TCP or TLS connection: messages framed by Content-Length,
    CRLF CRLF keep-alives answered with CRLF (RFC 5626 §4.4.1).

    Each connection is a I{flow} registered with the core under a token, so
    that responses and later requests (NOTIFYs) reuse it.
    """

    log = Logger()

    def __init__(self, core: SIPCore, transportName: str, limits: Limits) -> None:
        self.core = core
        self.transportName = transportName
        self.framer = StreamFramer(limits)
        self.limits = limits
        self.token: Optional[str] = None
        self.peer: Tuple[str, int] = ("", 0)

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = (address.host, address.port)
        self.token = self.core.flows.add(self)

    def connectionLost(self, reason: object = None) -> None:
        if self.token is not None:
            self.core.flows.remove(self.token)

    def source(self) -> Target:
        return Target(self.transportName, self.peer[0], self.peer[1], self.token)

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self.framer.dataReceived(data)
        except FramingError as e:
            for item in e.messages:
                self._deliver(item)
            self.log.warn(
                "Closing {transport} flow from {peer}: {reason}",
                transport=self.transportName,
                peer=self.peer,
                reason=e.reason,
            )
            response = e.errorResponse(self.limits)
            if response is not None:
                self.transport.write(self.core.serialise(response))
            self.transport.loseConnection()
            return
        for item in items:
            self._deliver(item)

    def _deliver(self, item: object) -> None:
        """
        Answer a keep-alive, or parse a framed message and hand it on.
        """
        if item is PING:
            counters = self.core.counters
            counters["keepalives"] = counters.get("keepalives", 0) + 1
            self.transport.write(b"\r\n")
            return
        deliver(self.core, item, self.limits, self.source(), stream=True)  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        """
        Drop the connection, after what was written (the server stops).
        """
        self.transport.loseConnection()


class SIPStreamFactory(Factory):
    """
    Makes a L{SIPStreamProtocol} for each accepted TCP or TLS connection.
    """

    noisy = False

    def __init__(self, core: SIPCore, transportName: str, limits: Limits) -> None:
        self.core = core
        self.transportName = transportName
        self.limits = limits

    def buildProtocol(self, addr: object) -> SIPStreamProtocol:
        return SIPStreamProtocol(self.core, self.transportName, self.limits)


class FlowTable:
    """
    The live TCP, TLS and WebSocket connections, by flow token.

    Tokens are never reused, so a message addressed to a flow that has
    closed fails instead of reaching whoever connected next; nor are they
    reused across runs (each table starts its counter at a random 32-bit
    run number times 2**32), so a token stored by an earlier run, of a
    subscription reloaded from the store, names no connection of this one.  Whoever holds
    state tied to a flow (the registrar: bindings registered over it) asks
    to be told when it closes with L{addCloseListener}; whoever waits for
    a connection (the notifier: NOTIFYs for a proxy that has not connected
    since a restart) asks to be told when one opens, L{addOpenListener}.
    """

    log = Logger()

    def __init__(self) -> None:
        self._flows: Dict[str, SIPStreamProtocol] = {}
        self._counter = itertools.count((int.from_bytes(randomBytes(4), "big") << 32) + 1)
        self._closeListeners: List[Callable[[str], None]] = []
        self._openListeners: List[Callable[[str], None]] = []

    def addOpenListener(self, listener: Callable[[str], None]) -> None:
        """
        Call C{listener(token)} whenever a flow opens (it is in the table
        by then, but its protocol does not know its token yet: send
        nothing over it from the listener itself).
        """
        self._openListeners.append(listener)

    def removeOpenListener(self, listener: Callable[[str], None]) -> None:
        """
        Stop calling C{listener}; removing an unknown one is a no-op.
        """
        if listener in self._openListeners:
            self._openListeners.remove(listener)

    def addCloseListener(self, listener: Callable[[str], None]) -> None:
        """
        Call C{listener(token)} whenever a flow closes.
        """
        self._closeListeners.append(listener)

    def removeCloseListener(self, listener: Callable[[str], None]) -> None:
        """
        Stop calling C{listener}; removing an unknown one is a no-op.
        """
        if listener in self._closeListeners:
            self._closeListeners.remove(listener)

    def add(self, protocol: SIPStreamProtocol) -> str:
        """
        Give C{protocol} a token and tell the open listeners; never raises.
        """
        token = "f%x" % (next(self._counter),)
        self._flows[token] = protocol
        self._tell(self._openListeners, token, "open")
        return token

    def remove(self, token: str) -> None:
        """
        Forget a closed flow and tell the close listeners; never raises.
        """
        if self._flows.pop(token, None) is None:
            return
        self._tell(self._closeListeners, token, "close")

    def _tell(self, listeners: List[Callable[[str], None]], token: str, event: str) -> None:
        for listener in list(listeners):
            try:
                listener(token)
            except Exception:
                self.log.failure("Error in a flow {event} listener for {token}", event=event, token=token)

    def get(self, token: str) -> Optional[SIPStreamProtocol]:
        return self._flows.get(token)

    def all(self) -> List[SIPStreamProtocol]:
        return list(self._flows.values())

    def __len__(self) -> int:
        return len(self._flows)
