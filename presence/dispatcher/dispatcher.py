"""
The dispatching node's proxy logic (RFC 3261 §16, transaction-stateful,
non-INVITE only).

For each request the SIP core hands it (with a server transaction), the
dispatcher decides which way it goes:

 - From a user agent, toward a manager: an in-dialog request whose top
   Route is one of our signed Record-Routes goes to the manager named in
   it; anything else to a live manager picked by the policy.  A SUBSCRIBE
   that creates a dialog gets our Record-Route, naming that manager and
   the flow the SUBSCRIBE came in on.
 - From a manager, toward a user agent (NOTIFY): the top Route must be
   one of our signed Record-Routes; the request goes down the flow it
   names, or is answered 430 (Flow Failed, RFC 5626 §11.5) at once when
   that TCP or TLS connection has closed.

A REGISTER from a user agent's TCP, TLS or WebSocket connection gets our
Path (RFC 3327), the same signed URI as a Record-Route: the manager keeps
the flow it names with the bindings, and when that connection closes the
managers that got its REGISTERs are told (L{ClosedFlowNotifier}), so its
registration-derived presence ends at once.

Each forwarded request is a new client transaction (the core adds our
Via); its responses come back through the server transaction with our
Via removed.  Max-Forwards is decremented, and a request that arrives with
none left is answered 483.

Failover: a new request that a manager answers 503, or whose manager
goes down while it waits, is sent to another live manager.  An in-dialog
request whose owner is down goes to a live manager with our Route left
in, so that a manager adopting the dead one's dialogs can serve it.

A client transaction that times out is not answered upstream: RFC 4320
§4.2 forbids a 408 to a non-INVITE, whose sender has timed out too.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.dispatcher.closing import ClosedFlowNotifier
from presence.dispatcher.health import HealthChecker, ManagerState
from presence.dispatcher.links import ManagerLink
from presence.dispatcher.managers import ManagerSpec
from presence.dispatcher.policy import POLICIES
from presence.dispatcher.route import RouteCodec, RouteError, RouteInfo
from presence.packages import defaultPackages
from presence.sip.core import SIPCore
from presence.sip.headers import HeaderError, NameAddr
from presence.sip.message import Request, Response
from presence.sip.transaction import COMPLETED, TERMINATED, ServerTransaction
from presence.sip.target import Target
from presence.sip.uri import SipURI, URIError, normaliseAOR, parseURI

FORWARDED_METHODS = ("SUBSCRIBE", "PUBLISH", "NOTIFY", "REGISTER")


_WILDCARD = frozenset(["", "0.0.0.0", "::", "[::]"])


class _Relay:
    """
    One request being proxied: the server transaction it came in on, and
    the state of its forwarding.

    @ivar request: the request as it is forwarded (Max-Forwards already
        decremented), without our Via or Record-Route.
    @ivar routes: its Route values as received.
    @ivar rest: its Route values without our own top one.
    @ivar info: what our signed top Route said, or L{None}.
    @ivar key: the presentity AOR, for the hash policy.
    @ivar creating: it creates a dialog: record-route it.
    @ivar retryable: out of dialog: another manager may serve it.
    @ivar tried: names of the managers it was sent to.
    @ivar client: the current client transaction.
    @ivar done: a final response has been sent upstream (or never will).
    """

    __slots__ = (
        "server", "request", "routes", "rest", "info", "key", "creating", "retryable",
        "tried", "client", "done",
    )

    def __init__(
        self,
        server: ServerTransaction,
        request: Request,
        routes: List[str],
        rest: List[str],
        info: Optional[RouteInfo],
    ) -> None:
        self.server = server
        self.request = request
        self.routes = routes
        self.rest = rest
        self.info = info
        self.key = ""
        self.creating = False
        self.retryable = False
        self.tried: Set[str] = set()
        self.client: Any = None
        self.done = False


class Dispatcher:
    """
    Serves SUBSCRIBE, PUBLISH, NOTIFY and REGISTER on a L{SIPCore} by
    proxying them between user agents and managers.

    @ivar managers: the managers' states, in configured order.
    @ivar counters: what it did, for the admin console and metrics.
    """

    log = Logger()

    def __init__(
        self,
        core: SIPCore,
        managers: Sequence[ManagerSpec],
        reactor: Any,
        secret: bytes,
        policy: str = "hash",
        pingInterval: float = 0.5,
        deadAfter: float = 1.5,
        addresses: Iterable[Tuple[str, str, int]] = (),
        boot: Optional[str] = None,
    ) -> None:
        """
        @param reactor: an C{IReactorTime}, and C{IReactorTCP} when a
            manager is reached over TCP.
        @param secret: the key that signs our Record-Routes.
        @param addresses: what the SIP service listens on, as
            C{(transport, host, port)}: a Record-Route names the address
            the request came in to.
        @param boot: the boot id (8 hex digits); random when L{None}.
        """
        if policy not in POLICIES:
            raise ValueError("unknown policy %r" % (policy,))
        if not managers:
            raise ValueError("a dispatcher needs at least one manager")
        self.core = core
        self.reactor = reactor
        self.policyName = policy
        self.policy: Any = POLICIES[policy]()
        self.routes = RouteCodec(secret, boot or os.urandom(4).hex())
        self._listening: Dict[str, str] = {}
        for transport, host, _port in addresses:
            self._listening.setdefault(transport, host)
        bindHost = self._listening.get("TCP")
        self._bindHost = None if bindHost in _WILDCARD else bindHost
        self._pingInterval = pingInterval
        self._started = False
        self.managers: List[ManagerState] = []
        self._byName: Dict[str, ManagerState] = {}
        self._byUDP: Dict[Tuple[str, int], ManagerState] = {}
        for spec in managers:
            self._addManager(spec)
        self.health = HealthChecker(core, reactor, self.managers, pingInterval, deadAfter, self._changed)
        self.closing = ClosedFlowNotifier(core, reactor, secret, self.routes.boot, self._byName.get)
        self.counters: Dict[str, int] = {
            "flowFailed": 0,
            "forged": 0,
            "unavailable": 0,
            "failovers": 0,
            "timeouts": 0,
        }
        # For the metrics: each request sent on, by direction ("manager"
        # or "user_agent") and method (one of FORWARDED_METHODS), every
        # attempt counted; and each response relayed back, by status
        # class (1 to 6).
        self.requestsRelayed: Dict[Tuple[str, str], int] = {}
        self.responsesRelayed: Dict[int, int] = {}

    # Set-up.

    def _addManager(self, spec: ManagerSpec) -> ManagerState:
        link = None
        bindHost = self._bindHost
        if spec.transport == "TCP":
            sameFamily = bindHost is not None and (":" in bindHost) == (":" in spec.host)
            link = ManagerLink(
                self.core,
                self.reactor,
                spec.host,
                spec.port,
                retryDelay=self._pingInterval,
                bindHost=bindHost.strip("[]") if sameFamily and bindHost else None,
            )
        state = ManagerState(spec, link, len(self.managers))
        if link is not None:
            link.onLost = partial(self._linkLost, state)
        self.managers.append(state)
        self._byName[spec.name] = state
        if spec.transport == "UDP":
            self._byUDP[(spec.host, spec.port)] = state
        return state

    def setManagers(self, specs: Sequence[ManagerSpec]) -> Tuple[List[str], List[str]]:
        """
        Serve the managers of C{specs} from now on (C{[dispatcher]
        managers} changed, on SIGHUP).  A new manager is pinged and taken
        into rotation on its first answer; a removed one, or one whose
        address changed (removed, then added again), is dropped at once,
        and the requests waiting at it fail over as when a manager dies.
        In-dialog requests for a removed manager go to a live one, which
        adopts the dialog.

        @return: the names added and the names removed.
        """
        if not specs:
            raise ValueError("a dispatcher needs at least one manager")
        wanted = {spec.name: spec for spec in specs}
        removed = [manager for manager in self.managers if wanted.get(manager.name) != manager.spec]
        for manager in removed:
            self.managers.remove(manager)
            del self._byName[manager.name]
            self._byUDP.pop((manager.spec.host, manager.spec.port), None)
            # Cancels its ping and deadline; if it was up, its requests
            # fail over to the managers that remain.
            self.health.down(manager)
            if manager.link is not None:
                manager.link.stop()
        added = []
        for spec in specs:
            if spec.name not in self._byName:
                state = self._addManager(spec)
                added.append(spec.name)
                if self._started and state.link is not None:
                    state.link.start()
        order = {spec.name: index for index, spec in enumerate(specs)}
        self.managers.sort(key=lambda manager: order[manager.name])
        for index, manager in enumerate(self.managers):
            manager.index = index
        self.health.managers = list(self.managers)
        return added, [manager.name for manager in removed]

    def install(self) -> None:
        """
        Register with the SIP core.
        """
        for method in FORWARDED_METHODS:
            self.core.addHandler(method, self.requestReceived)
        # Our Routes carry the dialog's manager and flow: _route reads
        # them, so the core must leave them in.
        self.core.removeOwnRoute = False
        # What the managers behind it serve (OPTIONS answers for them).
        packages = defaultPackages()
        self.core.acceptTypes = packages.bodyTypes()
        self.core.allowEvents = packages.names()

    def start(self) -> None:
        """
        Connect to the TCP managers and start pinging.
        """
        self._started = True
        for manager in self.managers:
            if manager.link is not None:
                manager.link.start()
        self.health.start()
        self.closing.start()

    def stop(self) -> None:
        self._started = False
        self.health.stop()
        self.closing.stop()
        for manager in self.managers:
            if manager.link is not None:
                manager.link.stop()

    def live(self) -> List[str]:
        """
        The names of the managers that are up.
        """
        return [manager.name for manager in self.managers if manager.up]

    # Manager state.

    def _changed(self, manager: ManagerState, up: bool) -> None:
        if up:
            self.log.info("Manager {name} is up ({spec})", name=manager.name, spec=str(manager.spec))
            return
        self.log.warn(
            "Manager {name} is down: {pending} requests in flight fail over",
            name=manager.name,
            pending=len(manager.pending),
        )
        for relay in list(manager.pending):
            client = relay.client
            if relay.done or client is None:
                continue
            relay.client = None
            if not client.deferred.called:
                client.deferred.cancel()
            self.counters["failovers"] += 1
            self._toManager(relay)

    def _linkLost(self, manager: ManagerState) -> None:
        self.health.down(manager)

    def _managerOf(self, source: Target) -> Optional[ManagerState]:
        """
        The manager C{source} is, if it is one: the address of a UDP
        manager, or the connection to a TCP one.
        """
        if source.transport == "UDP":
            return self._byUDP.get((source.host, source.port))
        if source.flow is not None:
            for manager in self.managers:
                link = manager.link
                if link is not None and link.protocol is not None and link.protocol.token == source.flow:
                    return manager
        return None

    # Requests.

    def requestReceived(self, request: Request, tx: ServerTransaction) -> None:
        """
        The core's handler for every method we proxy.  Never raises.
        """
        try:
            self._route(request, tx)
        except Exception:
            self.log.failure("Error proxying {method}", method=request.method)
            if tx.state not in (COMPLETED, TERMINATED):
                self.core.respond(tx, 500)

    def _route(self, request: Request, tx: ServerTransaction) -> None:
        core = self.core
        # RFC 3261 §16.3 step 3 and §16.6 step 3.  The parser has refused
        # a value that is not digits, and the core answered "0" with 483;
        # "00" comes here.
        text = request.header("max-forwards")
        if text is None:
            hops = 70
        else:
            text = text.strip()
            if not text.isdigit() or not text.isascii():
                core.respond(tx, 400, "Bad Max-Forwards")
                return
            hops = int(text)
            if hops == 0:
                core.respond(tx, 483)
                return
        request.setHeader("Max-Forwards", str(hops - 1))

        routes = request.headerValues("route")
        rest = routes
        info: Optional[RouteInfo] = None
        if routes:
            try:
                uri = parseURI(NameAddr.fromString(routes[0]).uri)
            except (HeaderError, URIError):
                core.respond(tx, 400, "Bad Route")
                return
            if isinstance(uri, SipURI) and "s" in uri.params:
                try:
                    info = self.routes.decode(uri.params)
                except RouteError as e:
                    self.counters["forged"] += 1
                    self.log.info(
                        "Refused {method} from {source}: {error}",
                        method=request.method,
                        source=tx.source,
                        error=str(e),
                    )
                    core.respond(tx, 403, str(e))
                    return
                rest = routes[1:]
            elif isinstance(uri, SipURI) and self._isUs(uri):
                rest = routes[1:]

        if self._managerOf(tx.source) is not None:
            if info is None:
                core.respond(tx, 403, "No Route To User Agent")
                return
            self._toUserAgent(request, tx, info, rest)
            return

        relay = _Relay(tx, request, routes, rest, info)
        toTag = _toTag(request)
        relay.creating = request.method == "SUBSCRIBE" and not toTag
        relay.retryable = not toTag
        relay.key = _presentityKey(request, toTag)
        self._toManager(relay)

    def _isUs(self, uri: SipURI) -> bool:
        """
        Whether an unsigned Route names this node (an outbound-proxy route
        a user agent preloaded): then it is ours to remove.
        """
        host = uri.host.strip("[]").lower()
        hosts = set(h.strip("[]") for h in self._listening.values() if h not in _WILDCARD)
        if self.core.advertisedHost:
            hosts.add(self.core.advertisedHost.strip("[]").lower())
        port = uri.port or 5060
        return host in hosts and port in self.core.ports.values()

    # Toward a manager.

    def _choose(self, relay: _Relay) -> Optional[ManagerState]:
        info = relay.info
        if info is not None:
            owner = self._byName.get(info.manager)
            if owner is not None and owner.up and not owner.draining and owner.name not in relay.tried:
                return owner
        candidates = [m for m in self.managers if m.up and not m.draining and m.name not in relay.tried]
        if not candidates:
            return None
        return self.policy.choose(candidates, relay.key)

    def _untried(self, relay: _Relay) -> bool:
        """
        Whether a live manager is left that C{relay} was not sent to (a
        check that, unlike L{_choose}, takes no policy turn).
        """
        return any(m.up and not m.draining and m.name not in relay.tried for m in self.managers)

    def _toManager(self, relay: _Relay) -> None:
        """
        Forward C{relay}'s request to the best manager not yet tried, or
        answer 503 when there is none.
        """
        while True:
            manager = self._choose(relay)
            if manager is None:
                relay.done = True
                self.counters["unavailable"] += 1
                self.core.respond(relay.server, 503, "No Manager Available", [("Retry-After", "5")])
                return
            relay.tried.add(manager.name)
            target = manager.target()
            if target is not None:
                break
        request = _copy(relay.request)
        info = relay.info
        # The owner gets the request without our Route; any other manager
        # with it, so that it can tell whose dialog it is serving.
        routes = relay.rest if info is None or info.manager == manager.name else relay.routes
        if routes:
            request.headers["route"] = list(routes)
        else:
            request.headers.pop("route", None)
        source = relay.server.source
        if relay.creating:
            request.insertHeader("Record-Route", self.recordRoute(manager.name, source))
        if request.method == "REGISTER" and source.transport != "UDP" and source.flow is not None:
            request.insertHeader("Path", self.recordRoute(manager.name, source))
            self.closing.registered(source.flow, manager.name)
        self._countRequest("manager", request.method)
        client = self.core.sendRequest(request, target)
        relay.client = client
        manager.inFlight += 1
        manager.pending.add(relay)
        client.onProvisional = partial(self._provisional, relay, client)
        client.deferred.addCallbacks(
            self._managerAnswered,
            self._abandoned,
            (relay, manager, client),
            None,
            (relay, manager),
        )

    def recordRoute(self, manager: str, source: Target) -> str:
        """
        Our Record-Route for a dialog owned by C{manager} whose user agent
        is reached over the flow of C{source}.
        """
        transport = source.transport
        host = self.core.advertisedHost
        if not host:
            bound = self._listening.get(transport, "")
            host = bound if bound not in _WILDCARD else self.core.localHost(source)
        if ":" in host and not host.startswith("["):
            host = "[" + host + "]"
        port = self.core.ports.get(transport, 5060)
        suffix = "" if transport == "UDP" else ";transport=" + transport.lower()
        return "<sip:%s:%d%s;lr%s>" % (host, port, suffix, self.routes.params(manager, source))

    def _managerAnswered(
        self, response: Response, relay: _Relay, manager: ManagerState, client: Any
    ) -> None:
        self._settle(relay, manager)
        if relay.client is not client or relay.done:
            return
        if response.code == 503 and relay.retryable and self._untried(relay):
            self.counters["failovers"] += 1
            self.log.info(
                "Manager {name} answered 503 ({reason}); trying another",
                name=manager.name,
                reason=response.reason,
            )
            self._toManager(relay)
            return
        self._finish(relay, response)

    def _abandoned(self, failure: Failure, relay: _Relay, manager: ManagerState) -> None:
        failure.trap(CancelledError)
        self._settle(relay, manager)

    def _settle(self, relay: _Relay, manager: ManagerState) -> None:
        if relay in manager.pending:
            manager.pending.discard(relay)
            manager.inFlight -= 1

    # Toward a user agent.

    def _toUserAgent(
        self, request: Request, tx: ServerTransaction, info: RouteInfo, rest: List[str]
    ) -> None:
        target = self._flowTarget(info)
        if target is None:
            self.counters["flowFailed"] += 1
            self.core.respond(tx, 430)
            return
        # A copy: the server transaction's request must keep its own Vias
        # for the responses we make (430) from it.
        request = _copy(request)
        if rest:
            request.headers["route"] = list(rest)
        else:
            request.headers.pop("route", None)
        relay = _Relay(tx, request, [], rest, info)
        self._countRequest("user_agent", request.method)
        client = self.core.sendRequest(request, target)
        relay.client = client
        client.onProvisional = partial(self._provisional, relay, client)
        client.deferred.addCallback(self._userAgentAnswered, relay, target)

    def _flowTarget(self, info: RouteInfo) -> Optional[Target]:
        """
        The flow a verified route names, or L{None} when that connection is
        closed (or belonged to an earlier run of this dispatcher).
        """
        if info.transport == "UDP":
            return Target("UDP", info.host, info.port)
        if info.boot != self.routes.boot:
            return None
        flow = self.core.flows.get(info.token)
        if flow is None or flow.transportName != info.transport:
            return None
        return flow.source()

    def _userAgentAnswered(self, response: Response, relay: _Relay, target: Target) -> None:
        if (
            response.code == 503
            and target.flow is not None
            and self.core.flows.get(target.flow) is None
        ):
            # The transaction could not write to the connection: it closed.
            relay.done = True
            self.counters["flowFailed"] += 1
            self.core.respond(relay.server, 430)
            return
        self._finish(relay, response)

    # Responses.

    def _provisional(self, relay: _Relay, client: Any, response: Response) -> None:
        """
        Relay a provisional response, but not a 100: it is hop by hop
        (RFC 3261 §16.7 step 3).
        """
        if response.code == 100 or relay.done or relay.client is not client:
            return
        if _popVia(response):
            self._countResponse(response)
            relay.server.respond(response)

    def _finish(self, relay: _Relay, response: Response) -> None:
        relay.done = True
        if response.code == 408:
            # RFC 4320 §4.2: no 408 to a non-INVITE.  Whoever sent it has
            # timed out as well; end our server transaction silently.
            self.counters["timeouts"] += 1
            _abandon(relay.server)
            return
        if _popVia(response):
            self._countResponse(response)
            relay.server.respond(response)
        else:
            _abandon(relay.server)

    # Counters.

    def _countRequest(self, direction: str, method: str) -> None:
        key = (direction, method)
        self.requestsRelayed[key] = self.requestsRelayed.get(key, 0) + 1

    def _countResponse(self, response: Response) -> None:
        kind = response.code // 100
        self.responsesRelayed[kind] = self.responsesRelayed.get(kind, 0) + 1


def _abandon(server: ServerTransaction) -> None:
    """
    End a server transaction that will get no response, so that the
    transaction layer does not keep it forever.  The sip package has no
    public call for this yet; L{ServerTransaction._terminate} is what its
    own transport-error path uses.
    """
    server._terminate()


def _copy(request: Request) -> Request:
    """
    A copy to forward: each attempt gets its own Via and Record-Route.
    """
    headers = {key: list(values) for key, values in request.headers.items()}
    return Request(request.method, request.uri, headers, request.body)


def _popVia(response: Response) -> bool:
    """
    Remove our Via (the top one; the response matched our transaction by
    its branch).  Return whether one is left to send the response by.
    """
    vias = response.headers.get("via")
    if not vias or len(vias) < 2:
        return False
    del vias[0]
    return True


def _toTag(request: Request) -> Optional[str]:
    try:
        return request.toAddr().tag
    except HeaderError:
        return None


def _presentityKey(request: Request, toTag: Optional[str]) -> str:
    """
    The AOR to hash: the Request-URI of a new request (what the manager
    takes as the presentity), the To of an in-dialog one (the same AOR:
    the Request-URI is then the manager's Contact) and of a REGISTER (whose
    Request-URI names only the domain), so that an AOR's registrations and
    its watchers meet on the same manager.
    """
    try:
        uri = request.toAddr().uri if toTag or request.method == "REGISTER" else request.uri
        return normaliseAOR(uri)
    except (HeaderError, URIError):
        return request.uri
