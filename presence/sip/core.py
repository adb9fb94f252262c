"""
The SIP core: the one controller behind every transport.

It stamps incoming requests with where they really came from (RFC 3261
§18.2.1, RFC 3581), runs them through the transaction layer, answers what
this server answers itself (OPTIONS, unsupported methods, hop-limit and
URI-scheme errors) and hands the rest to the handler registered for the
method.  Outgoing messages go back per §18.2.2: responses over the flow or
to the C{received}/C{rport} address, requests to their L{Target}.
"""

from __future__ import annotations

import socket
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from twisted.logger import Logger

from presence.sip.headers import HeaderError, NameAddr
from presence.sip.message import Message, Request, Response
from presence.sip.parser import DEFAULT_LIMITS, Limits, ParseError
from presence.sip.randomness import randomBytes
from presence.sip.target import Target, TransportError
from presence.sip.transaction import ClientTransaction, ServerTransaction, TimerSettings, TransactionLayer
from presence.sip.transport import FlowTable, SIPDatagramProtocol
from presence.sip.uri import SipURI, URIError, parseURI
from presence.version import version

Handler = Callable[[Request, ServerTransaction], None]

# Methods RFC 3261 and its extensions define: a request for one of these that
# we do not serve gets 405; any other method, 501.
KNOWN_METHODS = frozenset(
    ["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO", "PRACK", "UPDATE",
     "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER"]
)

SERVER_NAME = "presence/" + version


def newTag() -> str:
    """
    A random tag for To and From headers (RFC 3261 §19.3: 32 bits at least).
    """
    return randomBytes(6).hex()


class SIPCore:
    """
    Routes SIP messages between transports, the transaction layer and the
    method handlers.

    @ivar flows: the live TCP and TLS connections.
    @ivar transactions: the non-INVITE transaction layer.
    @ivar counters: message counts by kind, for the admin console and metrics.
    @ivar requestsByMethod: requests received (retransmissions and ACKs
        included), by method; unknown methods count as C{"other"}.
    @ivar responsesSent: responses given through L{respond}, by C{(request
        method, status class)}, e.g. C{("SUBSCRIBE", 2)}.  The 400s sent
        for unusable messages before a transaction exists are counted in
        C{counters["malformed"]} only.
    @ivar responsesReceived: responses received (to our NOTIFYs), by status
        class.
    @ivar removeOwnRoute: remove a top Route naming this server before a
        request reaches its handler, as a UAS reached through a preloaded
        outbound-proxy route must (loose routing, RFC 3261 §16.4).  On by
        default; the dispatching node turns it off, its Routes carry
        routing state that it reads itself.
    @ivar localNames: host names that name this server in a Route besides
        its addresses (the domains it serves).
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        limits: Limits = DEFAULT_LIMITS,
        timers: Optional[TimerSettings] = None,
        advertisedHost: Optional[str] = None,
    ) -> None:
        self.reactor = reactor
        self.limits = limits
        self.flows = FlowTable()
        self.transactions = TransactionLayer(reactor, self.send, timers)
        self.handlers: Dict[str, Handler] = {}
        self.acceptTypes: List[str] = []
        self.allowEvents: List[str] = []
        self.udp: Optional[SIPDatagramProtocol] = None
        self.ports: Dict[str, int] = {}
        self.advertisedHost = advertisedHost
        self.logRequests = False
        # The Retry-After of a 503 for a request the UDP intake sheds, and
        # its L{presence.sip.intake.Shedder} (counters), if any.
        self.retryAfter = 5
        self.intake: Optional[object] = None
        self.removeOwnRoute = True
        self.localNames: Set[str] = set()
        self._localHosts: Dict[str, str] = {}
        self.counters: Dict[str, int] = {
            "requests": 0,
            "responses": 0,
            "retransmissions": 0,
            "malformed": 0,
            "sendErrors": 0,
            "keepalives": 0,
        }
        # For the metrics endpoint: a dict increment per message.  Methods
        # outside KNOWN_METHODS share the key "other", so what a peer sends
        # cannot grow these dicts (nor the metrics' label sets).
        self.requestsByMethod: Dict[str, int] = {}
        self.responsesSent: Dict[Tuple[str, int], int] = {}
        self.responsesReceived: Dict[int, int] = {}

    # Registration of what this server serves.

    def addHandler(self, method: str, handler: Handler) -> None:
        """
        Serve C{method} with C{handler(request, serverTransaction)}, which
        must answer through C{serverTransaction.respond}.
        """
        self.handlers[method] = handler

    def removeHandler(self, method: str) -> None:
        """
        Stop serving C{method} with a handler (OPTIONS is then answered
        by the core again).
        """
        self.handlers.pop(method, None)

    def allowed(self) -> List[str]:
        return ["OPTIONS"] + sorted(m for m in self.handlers if m != "OPTIONS")

    # Incoming.

    def badMessage(self, error: ParseError, source: Target) -> None:
        """
        A transport could not parse what C{source} sent: answer it when
        possible, otherwise log and drop it.
        """
        self.counters["malformed"] += 1
        response = error.errorResponse()
        if response is None:
            if error.reason != "Empty message":
                self.log.info(
                    "Dropped malformed message from {source}: {reason}",
                    source=source,
                    reason=error.reason,
                )
            return
        self.log.info(
            "Malformed request from {source}: {code} {reason}",
            source=source,
            code=error.code,
            reason=error.reason,
        )
        self._stamp(response, source)
        self._addTag(response)
        self.sendQuietly(response, source)

    def messageReceived(self, message: Message, source: Target, refuse: bool = False) -> None:
        """
        Take a parsed message from a transport.  Never raises.

        @param refuse: answer a new request 503 with Retry-After (the
            intake sheds it, L{presence.sip.intake}); a retransmission is
            still answered by its transaction.
        """
        try:
            if isinstance(message, Request):
                self.counters["requests"] += 1
                method = message.method if message.method in KNOWN_METHODS else "other"
                byMethod = self.requestsByMethod
                byMethod[method] = byMethod.get(method, 0) + 1
                self._requestReceived(message, source, refuse)
            else:
                self.counters["responses"] += 1
                byClass = self.responsesReceived
                kind = message.code // 100  # type: ignore[attr-defined]
                byClass[kind] = byClass.get(kind, 0) + 1
                self.transactions.responseReceived(message, source)  # type: ignore[arg-type]
        except Exception:
            self.log.failure("Error handling a message from {source}", source=source)

    def _requestReceived(self, request: Request, source: Target, refuse: bool = False) -> None:
        if not self._stampRequest(request, source):
            return
        method = request.method
        if method == "ACK":
            return
        try:
            tx = self.transactions.requestReceived(request, source)
        except HeaderError as e:
            self.counters["malformed"] += 1
            response = Response.forRequest(request, 400, str(e) or "Bad Request")
            self._addTag(response)
            self.sendQuietly(response, source)
            return
        if tx is None:
            self.counters["retransmissions"] += 1
            return
        if refuse:
            self.respond(tx, 503, "Overloaded", [("Retry-After", str(self.retryAfter))])
            return
        refusal = self._refusal(request)
        if refusal is not None:
            code, reason, extra = refusal
            self.respond(tx, code, reason, extra)
            return
        handler = self.handlers.get(method)
        if handler is not None:
            if self.removeOwnRoute and "route" in request.headers:
                self._removeOwnRoutes(request, source)
            handler(request, tx)
        elif method == "OPTIONS":
            self.respond(tx, 200, None, self.capabilities())
        elif method == "CANCEL":
            self.respond(tx, 481)
        elif method in KNOWN_METHODS:
            self.respond(tx, 405, None, [("Allow", ", ".join(self.allowed()))])
        else:
            self.respond(tx, 501, None, [("Allow", ", ".join(self.allowed()))])

    def _stampRequest(self, request: Request, source: Target) -> bool:
        """
        Add C{received} and C{rport} to the top Via (RFC 3261 §18.2.1,
        RFC 3581 §4).  A request whose Via is unusable is answered 400 here.
        """
        try:
            via = request.topVia()
        except HeaderError:
            self.counters["malformed"] += 1
            response = Response.forRequest(request, 400, "Bad Via")
            self._addTag(response)
            self.sendQuietly(response, source)
            return False
        changed = False
        if "rport" in via.params and via.params["rport"] is None:
            via.params["rport"] = str(source.port)
            changed = True
        if via.host != source.host or changed:
            via.params["received"] = source.host
            changed = True
        if changed:
            request.replaceTopVia(via)
        return True

    def _removeOwnRoutes(self, request: Request, source: Target) -> None:
        """
        Remove the top Route values that name this server: a user agent
        with an outbound proxy preloads one (RFC 3261 §8.1.2), and a UAS
        strips it as a loose-routing proxy would (§16.4).  A Route naming
        someone else is left alone: this server is no proxy, and serves
        the request as it would without it.
        """
        routes = request.headers["route"]
        while routes:
            try:
                uri = parseURI(NameAddr.fromString(routes[0]).uri)
            except (HeaderError, URIError):
                return
            if not isinstance(uri, SipURI) or not self.namesUs(uri, source):
                return
            del routes[0]
        del request.headers["route"]

    def namesUs(self, uri: SipURI, source: Target) -> bool:
        """
        Whether C{uri} (a Route, typically) names this server: its host is
        our advertised host, one of L{localNames}, or the address
        C{source} reaches us at; and its port, if any, one we listen on.
        """
        host = uri.host.strip("[]").lower()
        port = uri.port
        if host in self.localNames:
            return port is None or port in self.ports.values()
        ours = {self.localHost(source).strip("[]").lower()}
        if self.advertisedHost:
            ours.add(self.advertisedHost.strip("[]").lower())
        if host not in ours:
            return False
        if port is None:
            secure = uri.scheme == "sips" or (uri.params.get("transport") or "").lower() == "tls"
            port = 5061 if secure else 5060
        return port in self.ports.values()

    def _refusal(self, request: Request) -> Optional[Tuple[int, Optional[str], List[Tuple[str, str]]]]:
        """
        Checks every request must pass whatever its method: hop limit,
        Request-URI scheme, required extensions.
        """
        maxForwards = request.header("max-forwards")
        if maxForwards == "0" and request.method != "OPTIONS":
            return 483, None, []
        try:
            uri = parseURI(request.uri)
        except URIError as e:
            return 400, "Bad Request-URI: %s" % (e,), []
        if not isinstance(uri, SipURI):
            return 416, None, []
        required = [tag for tag in request.headerValues("require") if tag]
        if required and request.method not in ("CANCEL", "ACK"):
            return 420, None, [("Unsupported", ", ".join(required))]
        return None

    def capabilities(self) -> List[Tuple[str, str]]:
        """
        What OPTIONS reports: methods, body types, event packages, and
        extensions.
        """
        return [
            ("Allow", ", ".join(self.allowed())),
            ("Accept", ", ".join(self.acceptTypes or ["application/sdp"])),
            ("Allow-Events", ", ".join(self.allowEvents)),
            ("Supported", ""),
        ]

    # Outgoing.

    def respond(
        self,
        tx: ServerTransaction,
        code: int,
        reason: Optional[str] = None,
        headers: Iterable[Tuple[str, str]] = (),
        toTag: Optional[str] = None,
        body: bytes = b"",
    ) -> Response:
        """
        Answer the request of C{tx}, adding a To tag to a non-100 response
        when the request had none (RFC 3261 §8.2.6.2) and a Server header.
        """
        method = tx.request.method
        key = (method if method in KNOWN_METHODS else "other", code // 100)
        self.responsesSent[key] = self.responsesSent.get(key, 0) + 1
        response = Response.forRequest(tx.request, code, reason, toTag, headers)
        if toTag is None:
            self._addTag(response)
        response.setHeader("Server", SERVER_NAME)
        if body:
            response.body = body
        tx.respond(response)
        # A 503 is a refusal whose cause (overload, draining, start-up) is
        # logged once per episode: one line per request would add the cost
        # of logging to every request refused under overload.
        if code >= 200 and (self.logRequests or (code >= 500 and code != 503) or code == 403):
            self._logOutcome(tx, code)
        return response

    def _logOutcome(self, tx: ServerTransaction, code: int) -> None:
        """
        One event per answered request, with fields: at debug level when
        request logging is on, and as a warning for refused (403) and failed
        (5xx) work.
        """
        request = tx.request
        emit = self.log.warn if code >= 500 or code == 403 else self.log.debug
        emit(
            "{method} {aor} from {source} -> {code} in {elapsed:.1f} ms",
            method=request.method,
            aor=request.uri,
            source="%s:%s:%d" % (tx.source.transport, tx.source.host, tx.source.port),
            code=code,
            elapsed=(self.reactor.seconds() - tx.started) * 1000.0,  # type: ignore[attr-defined]
        )

    def _addTag(self, response: Response) -> None:
        to = response.headers.get("to")
        if response.code > 100 and to and ";tag=" not in to[0].replace(" ", "").lower():
            to[0] = to[0] + ";tag=" + newTag()

    def _stamp(self, response: Response, source: Target) -> None:
        response.setHeader("Server", SERVER_NAME)

    def serialise(self, message: Message) -> bytes:
        return message.toBytes()

    def send(self, message: Message, target: Target) -> None:
        """
        Send C{message}: a response per RFC 3261 §18.2.2 (over its flow, or
        to the C{received} address and C{rport} of its top Via), a request to
        C{target}.

        @raise TransportError: when it cannot be sent.
        """
        data = message.toBytes()
        if target.transport == "UDP":
            host, port = target.host, target.port
            if isinstance(message, Response):
                host, port = _responseAddress(message, target)
            if self.udp is None:
                raise TransportError("No UDP listener")
            self.udp.write(data, host, port)
            return
        flow = self.flows.get(target.flow) if target.flow is not None else None
        if flow is None:
            raise TransportError("Flow %s to %s:%d is closed" % (target.flow, target.host, target.port))
        flow.write(data)

    def sendQuietly(self, message: Message, target: Target) -> None:
        """
        Send, logging instead of raising: for answers that have no
        transaction to report a failure to.
        """
        try:
            self.send(message, target)
        except TransportError as e:
            self.counters["sendErrors"] += 1
            self.log.info("Could not send to {target}: {error}", target=target, error=str(e))

    def sendRequest(self, request: Request, target: Target) -> ClientTransaction:
        """
        Start a client transaction for C{request}, adding our Via (with a new
        branch and C{rport}) on top.
        """
        from presence.sip.transaction import newBranch

        host = self.localHost(target)
        port = self.ports.get(target.transport, 5060)
        request.insertHeader(
            "Via", "SIP/2.0/%s %s:%d;branch=%s;rport" % (target.transport, host, port, newBranch())
        )
        return self.transactions.sendRequest(request, target)

    def contactFor(self, target: Target, user: Optional[str] = None) -> str:
        """
        A Contact header value naming this server as C{target} reaches it.
        """
        host = self.localHost(target)
        port = self.ports.get(target.transport, 5060)
        userPart = user + "@" if user else ""
        suffix = "" if target.transport == "UDP" else ";transport=" + target.transport.lower()
        return "<sip:%s%s:%d%s>" % (userPart, host, port, suffix)

    def localHost(self, target: Target) -> str:
        """
        Our address as C{target} sees it: the advertised host if one is
        configured, else the source address the kernel would pick for it.
        """
        if self.advertisedHost:
            return self.advertisedHost
        host = self._localHosts.get(target.host)
        if host is None:
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.connect((target.host.strip("[]"), target.port or 5060))
                host = probe.getsockname()[0]
            except OSError:
                host = "127.0.0.1"
            finally:
                probe.close()
            if ":" in host:
                host = "[" + host + "]"
            if len(self._localHosts) < 10000:
                self._localHosts[target.host] = host
        return host


def _responseAddress(response: Response, target: Target) -> Tuple[str, int]:
    """
    Where a UDP response goes (RFC 3261 §18.2.2, RFC 3581 §4): the address
    the request came from, and its source port when the client asked for
    C{rport}, else the Via port (else 5060).

    A C{received} parameter is never trusted: the request's real source is
    known, and believing a client's C{received} would let it aim our
    responses at a third party.
    """
    try:
        via = response.topVia()
    except HeaderError:
        return target.host, target.port
    if "rport" in via.params:
        rport = via.params["rport"]
        return target.host, int(rport) if rport and rport.isdigit() else target.port
    return target.host, via.port or 5060
