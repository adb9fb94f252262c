"""
The registrar: REGISTER per RFC 3261 §10.3, with SIP Outbound's instance
and reg-id (RFC 5626 §6), at a subscription manager.

A presence server keeps registrations for what they say about presence:
an AOR with a live binding and no publication is open, and closed once its
last binding is gone (DESIGN.md, composition policy).  So the registrar
tells its listeners (the subscription manager) whenever an AOR's bindings
change: a REGISTER, an expiry, or the TCP/TLS connection a binding was
registered over closing.

Like the manager, memory serves and the store keeps: a REGISTER's writes
are issued together (one group commit), memory changes and the 200 goes
out only once they are committed, and a restarted registrar reloads its
bindings.  Bindings tied to a connection of the previous run are dropped
on reload: that connection died with the process.

Behind a dispatcher, a binding's flow is the dispatcher's connection,
named by the Path it puts on the REGISTER; the dispatcher tells the
registrar when that connection closes with a signed notice
(L{presence.registrar.flownotice}), and the bindings go as they do when a
connection of our own closes.  They outlive a restart of the registrar,
as the dispatcher's connections do.

Authentication is the manager's L{AuthGate}: the same digest nonces serve
REGISTER, SUBSCRIBE and PUBLISH, so a user agent may send credentials
pre-emptively with the nonce of an earlier challenge.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.config import Config
from presence.manager.admission import Admission
from presence.manager.expiry import ExpiryWheel, expiresAtIn
from presence.registrar.binding import (
    ContactError,
    bindingId,
    canonicalContact,
    formatContact,
    parseContacts,
)
from presence.registrar.flownotice import METHOD as NOTICE_METHOD
from presence.registrar.flownotice import NoticeError, NoticeSigner, isRelayedFlow, pathFlow
from presence.sip.headers import HeaderError, Via
from presence.sip.message import Request
from presence.sip.target import Target
from presence.sip.transaction import COMPLETED, TERMINATED, ServerTransaction
from presence.sip.uri import URIError, normaliseAOR
from presence.store.records import BindingRecord

Listener = Callable[[str], None]

#: How long a dispatcher's closed connection is remembered: a REGISTER
#: relayed over it before it closed may commit after the notice (its
#: write was in flight, or its UDP retransmission came late), and must
#: not leave a binding behind.  Timer F's 32 s, twice over.
CLOSED_MEMORY = 64.0
#: At most this many are remembered (a mass disconnect): the oldest go.
CLOSED_MEMORY_MAX = 8192


class Registrar:
    """
    Serves REGISTER and holds the bindings of the AORs it serves.

    @ivar bindings: AOR to its bindings, binding id to record.
    @ivar counters: what it did, for the admin console and metrics.
    @ivar admission: takes each REGISTER through the gate shared with the
        subscription manager, and its later steps (L{Admission}).
    """

    log = Logger()

    def __init__(
        self,
        core: Any,
        store: Any,
        config: Config,
        clock: Any,
        gate: Any = None,
        noticeSecret: bytes = b"",
    ) -> None:
        """
        @param core: the L{presence.sip.core.SIPCore}.
        @param store: an L{presence.interfaces.IBindingStore}.
        @param gate: the L{presence.billing.gate.AuthGate} of the manager
            (sharing its nonces), or L{None} to register anyone (tests and
            tools only).
        @param noticeSecret: the cluster's C{[dispatcher] secret}, which
            signs the dispatchers' notices of closed connections; without
            it none is accepted.
        """
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.gate = gate
        self.node = config.node
        self.domains = frozenset(config.domains)
        self.bindings: Dict[str, Dict[str, BindingRecord]] = {}
        self._byId: Dict[str, BindingRecord] = {}
        self._byFlow: Dict[str, Set[str]] = {}
        self._signer = NoticeSigner(noticeSecret) if noticeSecret else None
        self._closedRelayed: Dict[str, float] = {}
        self._listeners: List[Listener] = []
        self.expiry = ExpiryWheel(clock, self._expired, expiresAtIn(self._byId))
        self.counters = {
            "registers": 0,
            "added": 0,
            "refreshed": 0,
            "removed": 0,
            "expired": 0,
            "flowClosed": 0,
            "flowNotices": 0,
            "badFlowNotices": 0,
            "storeErrors": 0,
            "billingErrors": 0,
        }
        self.admission = Admission(core, gate, clock, self.counters, self.log)
        self._installed = False

    # Wiring.

    def install(self) -> None:
        """
        Serve REGISTER on the core, and follow its connections closing.
        """
        self.core.addHandler("REGISTER", self._guarded)
        self.core.addHandler(NOTICE_METHOD, self.noticeReceived)
        self.core.flows.addCloseListener(self.flowClosed)
        # A Route naming one of our domains names us (RFC 3261 §16.4).
        self.core.localNames.update(self.domains)
        self._installed = True

    def addListener(self, listener: Listener) -> None:
        """
        Call C{listener(aor)} whenever the bindings of C{aor} change in
        memory (added, refreshed with another contact, removed, expired,
        their connection closed).
        """
        self._listeners.append(listener)

    def removeListener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _tell(self, aors: Any) -> None:
        for aor in sorted(aors):
            for listener in list(self._listeners):
                try:
                    listener(aor)
                except Exception:
                    self.log.failure("Error in a registration listener for {aor}", aor=aor)

    # What others ask.

    @property
    def bindingCount(self) -> int:
        """
        The live bindings of every AOR, counted without a walk (metrics
        read it at each scrape).
        """
        return len(self._byId)

    def bindingsOf(self, aor: str) -> List[BindingRecord]:
        """
        The live bindings of C{aor}, preferred first: highest q (no q
        counts as 1.0), then the most recently registered, then by
        contact, so the order never depends on dict order.
        """
        return sorted(
            self.bindings.get(aor, {}).values(),
            key=lambda b: (-(1.0 if b.q is None else b.q), -b.registeredAt, b.contact),
        )

    def contactOf(self, aor: str) -> Optional[str]:
        """
        The contact of C{aor}'s preferred live binding, or L{None} when it
        has none: what registration-derived presence shows.
        """
        live = self.bindingsOf(aor)
        return live[0].contact if live else None

    def flowFor(self, aor: str, contact: str) -> Optional[Target]:
        """
        An open TCP or TLS connection that reaches C{aor} at C{contact}: the
        flow of a binding of that contact (or, failing that, of any binding
        of C{aor}).  The subscription manager sends a NOTIFY over it when
        the connection its SUBSCRIBE came on has closed (RFC 5626: requests
        to a registered UA reuse its flow).
        """
        wanted = canonicalContact(contact)
        fallback = None
        for binding in self.bindingsOf(aor):
            if not binding.flowToken:
                continue
            flow = self.core.flows.get(binding.flowToken)
            if flow is None:
                continue
            if canonicalContact(binding.contact) == wanted:
                return flow.source()
            if fallback is None:
                fallback = flow.source()
        return fallback

    # REGISTER (RFC 3261 §10.3).

    def _guarded(self, request: Request, tx: ServerTransaction) -> None:
        """
        The core's handler: an unexpected error answers 500 rather than
        leaving the transaction unanswered.
        """
        self.admission.proceed(tx, self.registerReceived, request, tx)

    def registerReceived(self, request: Request, tx: ServerTransaction) -> None:
        """
        Steps 1 to 5: whose bindings, then who asks.  The contacts are read
        once the sender is authenticated, so an unauthenticated client
        learns nothing about the registration policy.
        """
        self.counters["registers"] += 1
        try:
            aor = normaliseAOR(request.toAddr().uri)
            request.cseq()
        except (HeaderError, URIError) as e:
            self.core.respond(tx, 400, str(e) or "Bad To")
            return
        if "@" not in aor:
            self.core.respond(tx, 400, "No User In To")
            return
        if self.domains and aor.rpartition("@")[2] not in self.domains:
            self.core.respond(tx, 404, "Not Our Domain")
            return
        self.admission.admit(request, tx, aor, self._registerAdmitted, request, tx)

    def _registerAdmitted(self, aor: str, request: Request, tx: ServerTransaction) -> None:
        """
        Steps 6 to 8: read the contacts, decide each binding's fate, write
        them all at once, and answer with the bindings once committed.
        """
        core = self.core
        config = self.config
        try:
            wildcard, specs = parseContacts(request.headerValues("contact"))
        except ContactError as e:
            core.respond(tx, 400, str(e))
            return
        headerText = request.header("expires")
        headerExpires = int(headerText) if headerText is not None else None
        callId = request.callId or ""
        cseq = request.cseq().number
        current = self.bindings.get(aor, {})
        puts: List[BindingRecord] = []
        removes: List[BindingRecord] = []
        if wildcard:
            if headerExpires != 0:
                core.respond(tx, 400, "Wildcard Needs Expires 0")
                return
            for binding in current.values():
                if binding.callId == callId and cseq <= binding.cseq:
                    core.respond(tx, 500, "CSeq Out Of Order")
                    return
            removes = list(current.values())
        else:
            if len(specs) > config.registerMaxBindings:
                core.respond(tx, 403, "Too Many Contacts")
                return
            expiries = []
            for spec in specs:
                if spec.expires is not None:
                    expires = spec.expires
                elif headerExpires is not None:
                    expires = headerExpires
                else:
                    expires = config.registerDefaultExpires
                if 0 < expires < config.registerMinExpires:
                    core.respond(tx, 423, None, [("Min-Expires", str(config.registerMinExpires))])
                    return
                expiries.append(min(expires, config.registerMaxExpires))
            transport, peerHost, peerPort, flowToken = self._flowOf(request, tx)
            now = self.clock.seconds()
            seen: Set[str] = set()
            for spec, expires in zip(specs, expiries):
                ident = bindingId(aor, spec.key)
                if ident in seen:
                    # The same binding twice in one REGISTER: the last wins.
                    puts = [b for b in puts if b.id != ident]
                    removes = [b for b in removes if b.id != ident]
                seen.add(ident)
                existing = current.get(ident)
                if existing is not None and existing.callId == callId and cseq <= existing.cseq:
                    core.respond(tx, 500, "CSeq Out Of Order")
                    return
                if expires == 0:
                    if existing is not None:
                        removes.append(existing)
                    continue
                puts.append(
                    BindingRecord(
                        id=ident,
                        aor=aor,
                        contact=spec.uri,
                        expiresAt=now + expires,
                        registeredAt=now,
                        callId=callId,
                        cseq=cseq,
                        owner=self.node,
                        transport=transport,
                        peerHost=peerHost,
                        peerPort=peerPort,
                        flowToken=flowToken,
                        instance=spec.instance,
                        regId=spec.regId,
                        q=spec.q,
                    )
                )
            remaining = set(current) - set(b.id for b in removes) | set(b.id for b in puts)
            if len(remaining) > config.registerMaxBindings:
                core.respond(tx, 403, "Too Many Bindings")
                return
        # RFC 5626 §6: a registrar that is the first hop and takes a
        # reg-id says so with Require: outbound.
        outbound = len(request.headerValues("via")) <= 1 and any(spec.regId for spec in specs)
        if not puts and not removes:
            # A query (no Contact), or removals of nothing: the bindings.
            self._answer(tx, aor, outbound)
            return
        writes = [self.store.putBinding(b) for b in puts]
        writes.extend(self.store.removeBinding(b.id) for b in removes)
        DeferredList(writes, consumeErrors=True).addCallback(
            self._written, tx, aor, puts, removes, outbound
        )

    def _flowOf(self, request: Request, tx: ServerTransaction) -> Tuple[str, str, int, str]:
        """
        Where the registering UA is: the flow the REGISTER came on when it
        came straight from the UA (one Via), else (relayed by a dispatcher)
        the UA's address from its own Via, and the dispatcher connection
        its Path names (L{pathFlow}), if any.
        """
        source = tx.source
        vias = request.headerValues("via")
        if len(vias) <= 1:
            return source.transport, source.host, source.port, source.flow or ""
        relayed = pathFlow(request)
        try:
            via = Via.fromString(vias[-1])
        except HeaderError:
            return source.transport, source.host, source.port, relayed
        host = via.params.get("received") or via.host
        rport = via.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        return via.transport.upper(), host, port, relayed

    def _written(
        self,
        results: List[Tuple[bool, Any]],
        tx: ServerTransaction,
        aor: str,
        puts: List[BindingRecord],
        removes: List[BindingRecord],
        outbound: bool,
    ) -> None:
        """
        Every write of a REGISTER is done.  If one failed, undo those that
        committed (best effort, so the store again holds what memory
        holds) and answer 500; else apply them to memory and answer 200.
        """
        failures = [value for ok, value in results if not ok]
        if failures:
            current = self.bindings.get(aor, {})
            for (ok, _), binding in zip(results, puts + removes):
                if not ok:
                    continue
                before = current.get(binding.id)
                if before is not None:
                    undo = self.store.putBinding(before)
                else:
                    undo = self.store.removeBinding(binding.id)
                undo.addErrback(self._storeFailed, "undoing binding " + binding.id)
            self._storeFailed(failures[0], "REGISTER of " + aor)
            if tx.state not in (COMPLETED, TERMINATED):
                self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])
            return
        for binding in removes:
            if self._forget(binding.id) is not None:
                self.counters["removed"] += 1
        for binding in puts:
            if binding.flowToken and self._flowGone(binding.flowToken):
                # Its connection closed while the write was committing: the
                # binding is as dead as if it had closed just after.
                self._forget(binding.id)
                self.store.removeBinding(binding.id).addErrback(
                    self._storeFailed, "binding of a closed flow"
                )
                continue
            if self._remember(binding):
                self.counters["refreshed"] += 1
            else:
                self.counters["added"] += 1
        if tx.state not in (COMPLETED, TERMINATED):
            self._answer(tx, aor, outbound)
        self._tell([aor])

    def _answer(self, tx: ServerTransaction, aor: str, outbound: bool) -> None:
        """
        200 with every current binding of C{aor} and its remaining time
        (RFC 3261 §10.3 step 8); C{Require: outbound} (and the keep-alive
        interval in C{Flow-Timer}, if configured) when a binding of this
        request uses SIP Outbound (RFC 5626 §6).
        """
        now = self.clock.seconds()
        headers: List[Tuple[str, str]] = []
        for binding in self.bindingsOf(aor):
            remaining = max(0, int(binding.expiresAt - now + 0.5))
            headers.append(
                ("Contact", formatContact(binding.contact, remaining, binding.q, binding.instance, binding.regId))
            )
        if outbound:
            headers.append(("Require", "outbound"))
            if self.config.registerFlowTimer:
                headers.append(("Flow-Timer", str(self.config.registerFlowTimer)))
        self.core.respond(tx, 200, None, headers)

    # Memory.

    def _remember(self, binding: BindingRecord) -> bool:
        """
        Hold C{binding} in memory and set its expiry.

        @return: whether it replaced a binding with the same id.
        """
        old = self._forget(binding.id)
        self.bindings.setdefault(binding.aor, {})[binding.id] = binding
        self._byId[binding.id] = binding
        if binding.flowToken:
            self._byFlow.setdefault(binding.flowToken, set()).add(binding.id)
        self.expiry.set(binding.id, binding.expiresAt)
        return old is not None

    def _forget(self, ident: str) -> Optional[BindingRecord]:
        """
        Drop a binding from memory; return it, or L{None} if unknown.
        """
        binding = self._byId.pop(ident, None)
        if binding is None:
            return None
        self.expiry.discard(ident, binding.expiresAt)
        ofAor = self.bindings.get(binding.aor)
        if ofAor is not None:
            ofAor.pop(ident, None)
            if not ofAor:
                del self.bindings[binding.aor]
        if binding.flowToken:
            ofFlow = self._byFlow.get(binding.flowToken)
            if ofFlow is not None:
                ofFlow.discard(ident)
                if not ofFlow:
                    del self._byFlow[binding.flowToken]
        return binding

    def _drop(self, idents: Any, what: str) -> Set[str]:
        """
        Forget bindings at once and delete them from the store in the
        background (nobody waits for an answer).

        @return: the AORs they belonged to.
        """
        aors: Set[str] = set()
        for ident in idents:
            binding = self._forget(ident)
            if binding is None:
                continue
            aors.add(binding.aor)
            self.store.removeBinding(ident).addErrback(self._storeFailed, "%s binding %s" % (what, ident))
        return aors

    def _expired(self, keys: List[Hashable]) -> None:
        """
        The expiry wheel's callback: bindings whose time is up.
        """
        self.counters["expired"] += len(keys)
        aors = self._drop(keys, "expired")
        self._tell(aors)

    def flowClosed(self, token: str) -> None:
        """
        A TCP, TLS or WebSocket connection closed (ours, or a dispatcher's
        of which it sent notice): the bindings registered over it are gone
        (their UA can no longer be reached there), and watchers learn it at
        once.
        """
        idents = self._byFlow.get(token)
        if not idents:
            return
        idents = set(idents)
        self.counters["flowClosed"] += len(idents)
        aors = self._drop(idents, "closed-flow")
        self.log.info(
            "Connection {token} closed: {count} bindings of {aors} removed",
            token=token,
            count=len(idents),
            aors=", ".join(sorted(aors)),
        )
        self._tell(aors)

    def _flowGone(self, token: str) -> bool:
        """
        Whether the flow of a binding has closed: a connection of ours, or
        a dispatcher's whose notice came.
        """
        if isRelayedFlow(token):
            return token in self._closedRelayed
        return self.core.flows.get(token) is None

    def noticeReceived(self, request: Request, tx: ServerTransaction) -> None:
        """
        The core's handler for a dispatcher's notice of closed connections:
        if its signature is good, their bindings go now.
        """
        if self._signer is None:
            self.counters["badFlowNotices"] += 1
            self.core.respond(tx, 403, "No [dispatcher] secret")
            return
        try:
            flows = self._signer.read(request)
        except NoticeError as e:
            self.counters["badFlowNotices"] += 1
            self.log.warn(
                "Refused a flow-closed notice from {source}: {error}", source=tx.source, error=str(e)
            )
            self.core.respond(tx, e.code, str(e))
            return
        self.counters["flowNotices"] += 1
        self.core.respond(tx, 200)
        now = self.clock.seconds()
        closed = self._closedRelayed
        for flow in flows:
            closed.pop(flow, None)
            closed[flow] = now
        # Oldest first (insertion order): forget what is old or too many.
        while closed:
            oldest = next(iter(closed))
            if len(closed) <= CLOSED_MEMORY_MAX and closed[oldest] > now - CLOSED_MEMORY:
                break
            del closed[oldest]
        for flow in flows:
            self.flowClosed(flow)

    def _storeFailed(self, failure: Failure, what: str) -> None:
        self.counters["storeErrors"] += 1
        self.log.failure("Store write failed: {what}", failure, what=what)

    # Billing waits, for an orderly shutdown.

    def whenIdle(self, timeout: float = 10.0) -> Deferred:
        """
        Fire once no REGISTER waits for billing (each has then issued its
        writes, or been answered), or after C{timeout}.
        """
        return self.admission.whenIdle(timeout)

    # Start and stop.

    def load(self) -> Deferred:
        """
        Rebuild memory from the store: this node's bindings, less those
        that expired while it was down and those tied to a connection of
        the previous run (closed with it), which are deleted.
        """
        return self.store.loadBindings(self.node).addCallback(self._loaded)

    def _loaded(self, records: List[BindingRecord]) -> None:
        now = self.clock.seconds()
        stale = 0
        for record in records:
            if record.expiresAt <= now or (record.flowToken and not isRelayedFlow(record.flowToken)):
                stale += 1
                self.store.removeBinding(record.id).addErrback(self._storeFailed, "stale binding")
                continue
            self._remember(record)
        self.log.info(
            "Loaded {count} registration bindings of {aors} AORs ({stale} stale ones removed)",
            count=len(self._byId),
            aors=len(self.bindings),
            stale=stale,
        )

    def stop(self) -> None:
        """
        Stop timers and stop following connections: bindings stay in the
        store for the next start (which drops those tied to connections).
        """
        self.expiry.stop()
        if self._installed:
            self.core.flows.removeCloseListener(self.flowClosed)
            self._installed = False
