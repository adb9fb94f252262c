"""
The subscription manager: the SUBSCRIBE and PUBLISH handlers of the
presence event package.

Memory serves, the store keeps: every change is written through the store,
and the request is answered only once the write is committed, so a 200 is a
promise that survives a crash.  Group commit in the store makes that cheap
under load.  State changes are applied in memory when their write commits;
until then, an entity-tag or dialog being changed is claimed so that a
racing request sees a consistent state.

Billing comes first: a SUBSCRIBE or PUBLISH (in-dialog refreshes too) is
authenticated by the L{AuthGate} (digest, account standing) before it
touches any state, and a new subscription is recorded only once the
authorizer has decided the watcher may see the presentity (active) or must
wait for the owner's consent (pending).  When billing changes, the
subscriptions concerned are decided again.
"""

from __future__ import annotations

import os
from typing import Any, Dict, FrozenSet, Hashable, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.billing.gate import AuthGate, FailureLimiter
from presence.billing.quirks import ChallengeQuirks
from presence.billing.records import ALLOW, BLOCK
from presence.config import Config
from presence.manager.admission import Admission
from presence.manager.expiry import ExpiryWheel, expiresAtIn
from presence.manager.notifier import PIDF, Notifier
from presence.manager.overload import OverloadGuard
from presence.manager.state import DialogIndex, DialogKey, Presentity, Publication, Subscription
from presence.pidf import PidfError, parsePidf
from presence.sip.core import SIPCore
from presence.sip.digest import DigestAuthenticator
from presence.sip.headers import HeaderError, NameAddr, parseValueParams
from presence.sip.message import Request
from presence.sip.randomness import randomBytes
from presence.sip.transaction import ServerTransaction
from presence.sip.uri import URIError, normaliseAOR, parseURI
from presence.store.errors import NoSuchRecord
from presence.store.records import PublicationRecord, SubscriptionRecord

_ACCEPTABLE = frozenset([PIDF, "application/*", "*/*"])


def newId() -> str:
    """
    A random identifier for subscriptions, tags and entity-tags.
    """
    return randomBytes(8).hex()


class SubscriptionManager:
    """
    Serves SUBSCRIBE and PUBLISH for the presence event package.

    @ivar subscriptions: id to subscription.
    @ivar dialogs: dialog key to subscription, for in-dialog requests.
    @ivar publications: entity-tag to live publication.
    @ivar presentities: AOR to L{Presentity}, for those with publications
        or watchers.
    @ivar authorizer: the L{presence.interfaces.IAuthorizer}, or L{None}
        when the manager runs without billing (every request allowed).
    @ivar gate: the L{AuthGate} in front of both handlers, or L{None}
        without billing.
    @ivar admission: takes both handlers' requests through the gate and
        their later steps (L{Admission}).
    @ivar registrations: the registrar whose bindings give presence to a
        presentity without publication (L{followRegistrations}), or
        L{None}.
    """

    log = Logger()

    def __init__(
        self,
        core: SIPCore,
        store: Any,
        config: Config,
        clock: Any,
        authorizer: Any = None,
        digest: Optional[DigestAuthenticator] = None,
    ) -> None:
        """
        @param authorizer: billing, an L{presence.interfaces.IAuthorizer};
            without one nothing is authenticated nor authorized (tools and
            tests of other parts only).
        @param digest: issues and checks digest nonces; every manager of a
            cluster must share its secret.  A random secret by default.
        """
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.node = config.node
        self.domains = frozenset(config.domains)
        self.subscriptions: Dict[str, Subscription] = {}
        self.dialogs = DialogIndex()
        self.publications: Dict[str, Publication] = {}
        self.presentities: Dict[str, Presentity] = {}
        # Two wheels keyed by the subscription id and the entity-tag
        # themselves: no key string of its own per entry, and no deadline
        # either (they ask the subscription or publication for it).
        self.expiry = ExpiryWheel(clock, self._subscriptionsExpired, expiresAtIn(self.subscriptions))
        self.publicationExpiry = ExpiryWheel(clock, self._publicationsExpired, expiresAtIn(self.publications))
        self.notifier = Notifier(self)
        self.overload = OverloadGuard(
            clock,
            lambda: store.pendingWrites,
            config.maxPendingWrites,
            config.maxReactorLag,
            config.overloadRetryAfter,
        )
        self.counters = {"storeErrors": 0, "billingErrors": 0, "rejected": 0}
        # The cluster (an IPeerGroup) when this manager has peers.
        self.cluster: Any = None
        self.authorizer = authorizer
        self.gate: Optional[AuthGate] = None
        self.registrations: Any = None
        # Draining before maintenance (L{setDraining}): new work refused.
        self.draining = False
        self._billingEpoch = 0
        if authorizer is None:
            self.log.warn(
                "Subscription manager {node} runs without billing: nothing is authenticated",
                node=self.node,
            )
        else:
            if digest is None:
                digest = DigestAuthenticator(
                    os.urandom(32), clock, config.billingNonceLifetime, config.billingAlgorithms
                )
            limiter = FailureLimiter(clock, config.billingMaxAuthFailures, config.billingAuthFailureWindow)
            quirks = ChallengeQuirks(config.billingUserAgentAlgorithms)
            self.gate = AuthGate(authorizer, digest, clock, config.billingNoAuthDomains, limiter, quirks)
        self.admission = Admission(core, self.gate, clock, self.counters, self.log)

    def install(self) -> None:
        """
        Register with the SIP core.
        """
        self.core.addHandler("SUBSCRIBE", self._guarded(self.subscribeReceived))
        self.core.addHandler("PUBLISH", self._guarded(self.publishReceived))
        self.core.acceptTypes = [PIDF]
        self.core.allowEvents = ["presence"]
        if self.authorizer is not None:
            self.authorizer.addChangeListener(self.billingChanged)

    def _guarded(self, handler: Any) -> Any:
        """
        Wrap a request handler so that an unexpected error answers 500
        instead of leaving the server transaction unanswered forever (the
        core would only log it): nothing a peer sends may wedge a request.
        """

        def serve(request: Request, tx: ServerTransaction) -> None:
            self.admission.proceed(tx, handler, request, tx)

        return serve

    def whenIdle(self, timeout: float = 10.0) -> Deferred:
        """
        Fire once no request waits for billing (each has then issued its
        store write, or been answered), or after C{timeout} seconds.
        """
        return self.admission.whenIdle(timeout)

    # State shared by both handlers.

    def presentity(self, aor: str) -> Presentity:
        pres = self.presentities.get(aor)
        if pres is None:
            pres = self.presentities[aor] = Presentity(aor)
            if self.registrations is not None:
                pres.registered = self.registrations.contactOf(aor)
        return pres

    # Presence derived from registrations.

    def followRegistrations(self, registrations: Any) -> None:
        """
        Derive the presence of presentities without publication from
        C{registrations} (a L{presence.registrar.Registrar}): open while one
        of their bindings lives.  Call before L{load}.
        """
        self.registrations = registrations
        registrations.addListener(self.registrationChanged)

    def registrationChanged(self, aor: str) -> None:
        """
        The bindings of C{aor} changed: if that changes what its watchers
        see, notify them now.  A presentity nobody watches is not held in
        memory; its state is derived afresh when it is next needed.
        """
        pres = self.presentities.get(aor)
        if pres is None or self.registrations is None:
            return
        contact = self.registrations.contactOf(aor)
        if contact == pres.registered:
            return
        pres.registered = contact
        self._changed(pres)

    def _release(self, pres: Presentity) -> None:
        if pres.idle():
            self.presentities.pop(pres.aor, None)

    def documentOf(self, aor: str) -> bytes:
        """
        The composed document of C{aor}, composing it if need be.
        """
        pres = self.presentity(aor)
        document = pres.document
        if document is None:
            document = pres.compose()
        self._release(pres)
        return document

    def _changed(self, pres: Presentity, published: Optional[float] = None) -> None:
        """
        Recompose; notify the watchers only if the document changed.
        Without watchers nothing is composed now: the document is
        composed when first asked for (L{documentOf}), which a presentity
        nobody watches may never be.

        @param published: when the PUBLISH causing the change was received,
            if one did (the notifier's PUBLISH-to-NOTIFY latency).
        """
        if not pres.watchers:
            pres.document = None
            self._release(pres)
            return
        before = pres.document
        if pres.compose() != before:
            subs = self.subscriptions
            for sid in list(pres.watchers):
                sub = subs[sid]
                # A pending watcher is told nothing until it is allowed.
                if sub.state == "active":
                    self.notifier.notify(sub, since=published)
        self._release(pres)

    def storeFailed(self, failure: Failure, what: str) -> None:
        self.counters["storeErrors"] += 1
        self.log.failure("Store write failed: {what}", failure, what=what)

    def _presentityOf(self, request: Request) -> Optional[str]:
        """
        The AOR the Request-URI names, or L{None} if this server does not
        serve its domain.
        """
        try:
            aor = normaliseAOR(request.uri)
        except URIError:
            return None
        if "@" not in aor:
            return None
        if self.domains and aor.rpartition("@")[2].partition(":")[0] not in self.domains:
            return None
        return aor

    @staticmethod
    def _package(request: Request) -> Optional[Tuple[str, Dict[str, Optional[str]]]]:
        """
        The event package and parameters of the Event header, or L{None}
        when it is missing or does not parse (both get 489).
        """
        event = request.header("event")
        if event is None:
            return None
        try:
            return parseValueParams(event)
        except HeaderError:
            return None

    def _expires(self, request: Request, default: int, maximum: int) -> int:
        text = request.header("expires")
        if text is None:
            return default
        return min(int(text), maximum)

    # SUBSCRIBE (RFC 6665 §4.2.1, RFC 3856 §6).

    def subscribeReceived(self, request: Request, tx: ServerTransaction) -> None:
        core = self.core
        config = self.config
        parsed = self._package(request)
        if parsed is None or parsed[0] != "presence":
            core.respond(tx, 489, None, [("Allow-Events", "presence")])
            return
        eventId = parsed[1].get("id") or ""
        try:
            fromAddr = request.fromAddr()
            toAddr = request.toAddr()
            cseq = request.cseq().number
        except HeaderError as e:
            core.respond(tx, 400, str(e))
            return
        remoteTag = fromAddr.tag
        if not remoteTag:
            core.respond(tx, 400, "Missing From tag")
            return
        expires = self._expires(request, config.defaultExpires, config.maxExpires)
        if 0 < expires < config.minExpires:
            core.respond(tx, 423, None, [("Min-Expires", str(config.minExpires))])
            return
        localTag = toAddr.tag
        if localTag:
            key = (request.callId or "", localTag, remoteTag, eventId)
            if self.gate is None:
                self._inDialog(None, request, tx, key, expires, cseq)
                return
            try:
                sender = normaliseAOR(fromAddr.uri)
            except URIError as e:
                core.respond(tx, 400, str(e) or "Bad From")
                return
            self.admission.admit(request, tx, sender, self._inDialog, request, tx, key, expires, cseq)
            return
        if self._shed(tx):
            return
        accepts = [value.split(";")[0].strip().lower() for value in request.headerValues("accept")]
        if accepts and not _ACCEPTABLE.intersection(accepts):
            core.respond(tx, 406, None, [("Accept", PIDF)])
            return
        presentity = self._presentityOf(request)
        if presentity is None:
            core.respond(tx, 404)
            return
        try:
            watcher = normaliseAOR(fromAddr.uri)
            contacts = request.headerValues("contact")
            if not contacts:
                core.respond(tx, 400, "Missing Contact")
                return
            remoteTarget = NameAddr.fromString(contacts[0]).uri
            parseURI(remoteTarget)
        except (HeaderError, URIError) as e:
            core.respond(tx, 400, str(e) or "Bad Contact")
            return
        self.admission.admit(
            request, tx, watcher, self._authorizeWatch,
            request, tx, watcher, presentity, remoteTarget, remoteTag, eventId, expires, cseq,
        )

    def _inDialog(
        self,
        sender: Optional[str],
        request: Request,
        tx: ServerTransaction,
        key: DialogKey,
        expires: int,
        cseq: int,
        askCluster: bool = True,
    ) -> None:
        """
        An authenticated in-dialog SUBSCRIBE: only the subscription's own
        watcher may refresh or end it.

        @param askCluster: ask the cluster for a dialog we do not hold.
        """
        sub = self.dialogs.get(key)
        if sub is None and self.draining:
            # Handed over (or never ours): not taken back while draining.
            # The watcher keeps its subscription and asks again; by then
            # the dispatcher sends it to a manager in rotation.
            self.core.respond(tx, 503, "Draining", [("Retry-After", "1")])
            return
        if sub is None and askCluster and self.cluster is not None:
            # Another manager of the cluster may own it, or have died.
            d = self.cluster.dialogMissing(request, key)
            if d is not None:
                d.addBoth(
                    lambda _: self.admission.proceed(
                        tx, self._inDialog, sender, request, tx, key, expires, cseq, False
                    )
                )
                self.admission.hold(d)
                return
        if sub is None or sub.terminated:
            self.core.respond(tx, 481)
        elif sender is not None and sender != sub.watcher:
            self.core.respond(tx, 403, "Not The Watcher")
        else:
            self._refresh(sub, request, tx, expires, cseq)

    def _authorizeWatch(
        self,
        sender: Optional[str],
        request: Request,
        tx: ServerTransaction,
        watcher: str,
        presentity: str,
        remoteTarget: str,
        remoteTag: str,
        eventId: str,
        expires: int,
        cseq: int,
    ) -> None:
        """
        The watcher is authenticated: ask billing whether it may see the
        presentity, then make the subscription.
        """
        args = (request, tx, watcher, presentity, remoteTarget, remoteTag, eventId, expires, cseq)
        if self.authorizer is None:
            self._newSubscription(ALLOW, self._billingEpoch, *args)
            return
        epoch = self._billingEpoch
        d = self.authorizer.watchDecision(watcher, presentity)
        d.addCallback(
            lambda decision: self.admission.proceed(tx, self._newSubscription, decision, epoch, *args)
        )
        d.addErrback(self.admission.billingFailed, tx)
        self.admission.hold(d)

    def _newSubscription(
        self,
        decision: str,
        epoch: int,
        request: Request,
        tx: ServerTransaction,
        watcher: str,
        presentity: str,
        remoteTarget: str,
        remoteTag: str,
        eventId: str,
        expires: int,
        cseq: int,
    ) -> None:
        """
        Record a subscription billing allowed (active) or asked the owner
        about (pending: NOTIFYs carry no state until allowed).
        """
        if decision == BLOCK:
            self.counters["rejected"] += 1
            self.core.respond(tx, 403, "Not Authorized To Watch")
            return
        now = self.clock.seconds()
        # Our tag is the subscription's id too: one string fewer each.
        tag = newId()
        sub = Subscription(
            id=tag,
            callId=request.callId or "",
            localTag=tag,
            remoteTag=remoteTag,
            eventId=eventId,
            watcher=watcher,
            presentity=presentity,
            remoteTarget=remoteTarget,
            routeSet=tuple(request.headerValues("record-route")),
            target=tx.source,
            expiresAt=now + expires,
            createdAt=now,
            remoteCSeq=cseq,
            state="active" if decision == ALLOW else "pending",
        )
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): the state once, no subscription.
            self._accepted(tx, sub, 0)
            sub.terminated = True
            self.notifier.finish(sub, "timeout")
            return
        self._claimDialog(sub)
        d = self.store.addSubscription(sub.toRecord(self.node))
        d.addCallbacks(self._subscribed, self._subscribeFailed, (tx, sub, expires), None, (tx, sub))
        if self.authorizer is not None:
            d.addCallback(self._decidedBefore, sub, epoch)

    def _decidedBefore(self, _: Any, sub: Subscription, epoch: int) -> None:
        """
        Billing changed while this subscription was being decided or
        recorded: its decision may predate the change, decide again.
        """
        if epoch != self._billingEpoch and self.subscriptions.get(sub.id) is sub:
            self._reevaluate([sub])

    def _claimDialog(self, sub: Subscription) -> None:
        self.dialogs.add(sub)

    def _subscribed(self, _: Any, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        if sub.terminated:
            return
        self.subscriptions[sub.id] = sub
        self.presentity(sub.presentity).addWatcher(sub.id)
        self.expiry.set(sub.id, sub.expiresAt)
        self._accepted(tx, sub, expires)
        self.notifier.notify(sub)

    def _subscribeFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        self.dialogs.discard(sub)
        self.storeFailed(failure, "subscription " + sub.id)
        self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    def _accepted(self, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        headers: List[Tuple[str, str]] = [
            ("Expires", str(expires)),
            ("Contact", self.core.contactFor(tx.source)),
        ]
        records = tx.request.headers.get("record-route")
        if records:
            headers.extend(("Record-Route", value) for value in records)
        self.core.respond(tx, 200, None, headers, toTag=sub.localTag)

    def _refresh(
        self, sub: Subscription, request: Request, tx: ServerTransaction, expires: int, cseq: int
    ) -> None:
        """
        An in-dialog SUBSCRIBE: a refresh, or with C{expires} 0 an
        un-SUBSCRIBE.  Nothing changes in memory until the store has
        committed the change, so a failed write leaves the subscription as
        it was (only the remote CSeq moves on: it orders requests, and a
        retry comes with a higher one anyway).
        """
        core = self.core
        if cseq <= sub.remoteCSeq:
            core.respond(tx, 500, "CSeq Out Of Order")
            return
        remoteTarget = sub.remoteTarget
        contacts = request.headerValues("contact")
        if contacts:
            try:
                remoteTarget = NameAddr.fromString(contacts[0]).uri
                parseURI(remoteTarget)
            except (HeaderError, URIError) as e:
                core.respond(tx, 400, str(e) or "Bad Contact")
                return
        sub.remoteCSeq = cseq
        if expires == 0:
            self.store.removeSubscription(sub.id).addCallbacks(
                self._unsubscribed, self._refreshFailed, (tx, sub), None, (tx, sub)
            )
            return
        target = tx.source
        expiresAt = self.clock.seconds() + expires
        self.store.updateSubscription(
            sub.id,
            expiresAt=expiresAt,
            remoteCSeq=cseq,
            remoteTarget=remoteTarget,
            transport=target.transport,
            peerHost=target.host,
            peerPort=target.port,
            flowToken=target.flow or "",
        ).addCallbacks(
            self._refreshed,
            self._refreshFailed,
            (tx, sub, expires, expiresAt, remoteTarget, target),
            None,
            (tx, sub),
        )

    def _refreshed(
        self,
        _: Any,
        tx: ServerTransaction,
        sub: Subscription,
        expires: int,
        expiresAt: float,
        remoteTarget: str,
        target: Any,
    ) -> None:
        if sub.terminated:
            self.core.respond(tx, 481)
            return
        self.expiry.discard(sub.id, sub.expiresAt)
        sub.expiresAt = expiresAt
        sub.remoteTarget = remoteTarget
        sub.target = target
        self.expiry.set(sub.id, sub.expiresAt)
        self._accepted(tx, sub, expires)
        # RFC 6665 §4.2 (RFC 3265 §3.1.6.2): a refresh is answered with a
        # NOTIFY at once, whatever the rate control.
        self.notifier.notify(sub, immediate=True)

    def _unsubscribed(self, _: Any, tx: ServerTransaction, sub: Subscription) -> None:
        if sub.terminated:
            self.core.respond(tx, 481)
            return
        self._forget(sub)
        self._accepted(tx, sub, 0)
        self.notifier.finish(sub, "timeout")

    def _refreshFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        self.storeFailed(failure, "refresh of " + sub.id)
        self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    def _forget(self, sub: Subscription) -> None:
        """
        Drop C{sub} from memory: no more NOTIFYs but its final one.
        """
        sub.terminated = True
        self.notifier.cancel(sub)
        if self.subscriptions.pop(sub.id, None) is sub:
            self.expiry.discard(sub.id, sub.expiresAt)
        self.dialogs.discard(sub)
        pres = self.presentities.get(sub.presentity)
        if pres is not None:
            pres.removeWatcher(sub.id)
            self._release(pres)

    def terminate(self, sub: Subscription, reason: Optional[str]) -> Deferred:
        """
        End C{sub} on our side (expiry, a failed NOTIFY): forget it at once,
        delete it from the store, then send the final NOTIFY with C{reason},
        if any.  The subscription ends in memory even if the store write
        fails; the store then drops it when it expires.
        """
        self._forget(sub)

        def removed(_: Any) -> None:
            if reason is not None:
                self.notifier.finish(sub, reason)

        def failed(failure: Failure) -> None:
            self.storeFailed(failure, "removal of " + sub.id)
            removed(None)

        return self.store.removeSubscription(sub.id).addCallbacks(removed, failed)

    def setDraining(self, draining: bool) -> None:
        """
        Stop taking new work before maintenance, or take it again: while
        draining, new SUBSCRIBEs and initial PUBLISHes get 503 (the
        dispatcher tries another manager), in-dialog requests for dialogs
        not held too, and OPTIONS 503, which takes this manager out of the
        dispatcher's rotation.  Subscriptions held are served as before
        until they are handed over (L{presence.cluster.drain}).
        """
        if draining == self.draining:
            return
        self.draining = draining
        if draining:
            self.core.addHandler("OPTIONS", self._drainingOptions)
            self.log.warn("Subscription manager {node} draining: refusing new work", node=self.node)
        else:
            self.core.removeHandler("OPTIONS")
            self.log.info("Subscription manager {node} takes new work again", node=self.node)

    def _drainingOptions(self, request: Request, tx: ServerTransaction) -> None:
        self.core.respond(tx, 503, "Draining", [("Retry-After", str(self.overload.retryAfter))])

    # PUBLISH (RFC 3903 §6).

    def _shed(self, tx: ServerTransaction) -> bool:
        """
        Refuse a request that would create state while overloaded (see
        L{presence.manager.overload}) or draining: 503 with Retry-After,
        which the dispatcher answers by trying another manager.
        """
        if self.draining:
            self.core.respond(tx, 503, "Draining", [("Retry-After", str(self.overload.retryAfter))])
            return True
        if not self.overload.overloaded():
            return False
        self.core.respond(tx, 503, "Overloaded", [("Retry-After", str(self.overload.retryAfter))])
        return True

    def publishReceived(self, request: Request, tx: ServerTransaction) -> None:
        core = self.core
        parsed = self._package(request)
        if parsed is None or parsed[0] != "presence":
            core.respond(tx, 489, None, [("Allow-Events", "presence")])
            return
        presentity = self._presentityOf(request)
        if presentity is None:
            core.respond(tx, 404)
            return
        if "sip-if-match" not in request.headers and self._shed(tx):
            return
        if self.gate is None:
            self._publishAdmitted(None, request, tx, presentity)
            return
        try:
            publisher = normaliseAOR(request.fromAddr().uri)
        except (HeaderError, URIError) as e:
            core.respond(tx, 400, str(e) or "Bad From")
            return
        self.admission.admit(request, tx, publisher, self._publishAdmitted, request, tx, presentity)

    def _publishAdmitted(
        self,
        publisher: Optional[str],
        request: Request,
        tx: ServerTransaction,
        presentity: str,
        askCluster: bool = True,
    ) -> None:
        """
        An authenticated PUBLISH: a user publishes only its own state.

        @param askCluster: ask the cluster for an entity-tag we do not hold.
        """
        core = self.core
        config = self.config
        if publisher is not None and publisher != presentity:
            core.respond(tx, 403, "Not Your Presentity")
            return
        expires = self._expires(request, config.publishDefaultExpires, config.publishMaxExpires)
        ifMatch = request.header("sip-if-match")
        body = request.body
        if expires and expires < config.publishMinExpires:
            core.respond(tx, 423, None, [("Min-Expires", str(config.publishMinExpires))])
            return
        document = None
        if body and expires:
            contentType = (request.header("content-type") or "").split(";")[0].strip().lower()
            if contentType != PIDF:
                core.respond(tx, 415, None, [("Accept", PIDF)])
                return
            try:
                document = parsePidf(body, presentity)
            except PidfError as e:
                core.respond(tx, 400, str(e))
                return
        elif ifMatch is None:
            core.respond(tx, 400, "Missing Body" if expires else "Missing SIP-If-Match")
            return
        old = None
        if ifMatch is not None:
            old = self.publications.get(ifMatch)
            if old is None and askCluster and self.cluster is not None:
                # Another manager may have accepted it an instant ago.
                d = self.cluster.publicationMissing(ifMatch)
                if d is not None:
                    d.addBoth(
                        lambda _: self.admission.proceed(
                            tx, self._publishAdmitted, publisher, request, tx, presentity, False
                        )
                    )
                    self.admission.hold(d)
                    return
            if old is None or old.presentity != presentity:
                core.respond(tx, 412)
                return
            # Claim the entity-tag: a racing PUBLISH naming it gets 412.
            del self.publications[ifMatch]
            self.publicationExpiry.discard(ifMatch, old.expiresAt)
        if expires == 0:
            assert old is not None
            self.store.removePublication(old.etag).addCallbacks(
                self._unpublished, self._publishFailed, (tx, old), None, (tx, old, presentity)
            )
            return
        now = self.clock.seconds()
        pres = self.presentity(presentity)
        if document is None:
            # A refresh: same state, same age, same version.
            assert old is not None
            body, document, modifiedAt, version = old.body, old.document, old.modifiedAt, old.version
        else:
            pres.version += 1
            modifiedAt, version = now, pres.version
        pub = Publication(newId(), presentity, body, document, now + expires, modifiedAt, version)
        if old is None:
            written = self.store.putPublication(pub.toRecord())
        else:
            # A new entity-tag replaces the old one (RFC 3903 §6), in one
            # write that fails if another manager replaced it first.
            written = self.store.replacePublication(old.etag, pub.toRecord())
        written.addCallbacks(
            self._publishWritten, self._publishNotWritten, (tx, pub, old, expires), None, (tx, pub, old)
        )

    def _publishWritten(
        self, _: Any, tx: ServerTransaction, pub: Publication, old: Optional[Publication], expires: int
    ) -> None:
        self._published(tx, pub, old, expires)

    def _publishNotWritten(
        self, failure: Failure, tx: ServerTransaction, pub: Publication, old: Optional[Publication]
    ) -> None:
        """
        The write failed.  If the entity-tag was gone from the store,
        another manager refreshed, modified or removed it first: that one
        won, this one is answered 412 as if we had never held the tag
        (the cluster brings its outcome).  Anything else is a store fault.
        """
        if old is not None and failure.check(NoSuchRecord):
            pres = self.presentities.get(pub.presentity)
            if pres is not None:
                pres.publications.pop(old.etag, None)
                self._release(pres)
            self.core.respond(tx, 412)
            return
        self._publishFailed(failure, tx, old, pub.presentity)

    def _published(
        self, tx: ServerTransaction, pub: Publication, old: Optional[Publication], expires: int
    ) -> None:
        pres = self.presentity(pub.presentity)
        pres.version = max(pres.version, pub.version)
        if old is not None:
            pres.publications.pop(old.etag, None)
        pres.publications[pub.etag] = pub
        self.publications[pub.etag] = pub
        self.publicationExpiry.set(pub.etag, pub.expiresAt)
        self.core.respond(tx, 200, None, [("SIP-ETag", pub.etag), ("Expires", str(expires))])
        if self.cluster is not None:
            self.cluster.publicationChanged(pub, old)
        # Always recompose: even an identical body makes this publication
        # the newest, which may change what composition takes from it.
        # _changed notifies only if the composed bytes differ.
        self._changed(pres, tx.started)

    def _unpublished(self, _: Any, tx: ServerTransaction, old: Publication) -> None:
        self.core.respond(tx, 200, None, [("Expires", "0")])
        if self.cluster is not None:
            self.cluster.publicationRemoved(old)
        pres = self.presentity(old.presentity)
        pres.publications.pop(old.etag, None)
        self._changed(pres, tx.started)

    def _publishFailed(
        self, failure: Failure, tx: ServerTransaction, old: Optional[Publication], presentity: str
    ) -> None:
        """
        A PUBLISH could not be written: give the claimed entity-tag back,
        forget a presentity created for it, answer 500.
        """
        pres = self.presentities.get(presentity)
        if pres is not None:
            if old is not None and old.etag in pres.publications:
                self.publications[old.etag] = old
                self.publicationExpiry.set(old.etag, old.expiresAt)
            self._release(pres)
        self.storeFailed(failure, "publication")
        self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    # Billing changes.

    def billingChanged(self, aors: Optional[FrozenSet[str]]) -> None:
        """
        Accounts or watch rules of C{aors} changed (L{None}: anything may
        have): decide again every subscription where one is the watcher or
        the presentity.  Provisioning is rare, so a scan is fine.
        """
        self._billingEpoch += 1
        subs = [
            sub
            for sub in self.subscriptions.values()
            if aors is None or sub.watcher in aors or sub.presentity in aors
        ]
        self._reevaluate(subs)

    def _reevaluate(self, subs: Iterable[Subscription]) -> None:
        authorizer = self.authorizer
        if authorizer is None:
            return
        for sub in subs:
            authorizer.watchDecision(sub.watcher, sub.presentity).addCallbacks(
                self._redecided, self._redecideFailed, (sub,), None, (sub,)
            )

    def _redecided(self, decision: str, sub: Subscription) -> None:
        """
        Apply a new decision: blocked ends the subscription
        (C{terminated;reason=rejected}); pending to active sends the state,
        active to pending withdraws it.  Memory changes at once (a watcher
        must stop seeing a state as soon as it may not), the store follows.
        """
        if sub.terminated or self.subscriptions.get(sub.id) is not sub:
            return
        if decision == BLOCK:
            self.counters["rejected"] += 1
            self.log.info(
                "Billing: {watcher} may no longer watch {presentity}",
                watcher=sub.watcher,
                presentity=sub.presentity,
            )
            self.terminate(sub, "rejected")
            return
        state = "active" if decision == ALLOW else "pending"
        if state == sub.state:
            return
        sub.state = state
        self.store.updateSubscription(sub.id, state=state).addErrback(
            self.storeFailed, "state of " + sub.id
        )
        self.notifier.notify(sub, immediate=True)

    def _redecideFailed(self, failure: Failure, sub: Subscription) -> None:
        self.counters["billingErrors"] += 1
        self.log.failure(
            "Billing: cannot decide again for {watcher} -> {presentity}",
            failure,
            watcher=sub.watcher,
            presentity=sub.presentity,
        )

    # Expiry.

    def _subscriptionsExpired(self, ids: List[Hashable]) -> None:
        for ident in ids:
            sub = self.subscriptions.get(ident)  # type: ignore[arg-type]
            if sub is not None:
                self.terminate(sub, "timeout")

    def _publicationsExpired(self, etags: List[Hashable]) -> None:
        for etag in etags:
            pub = self.publications.pop(etag, None)  # type: ignore[arg-type]
            if pub is not None:
                # A replicated publication is its origin's to remove
                # from the store; every manager expires it in memory.
                if not pub.origin:
                    self.store.removePublication(pub.etag).addErrback(
                        self.storeFailed, "expired publication " + pub.etag
                    )
                    if self.cluster is not None:
                        self.cluster.publicationRemoved(pub)
                pres = self.presentity(pub.presentity)
                pres.publications.pop(pub.etag, None)
                self._changed(pres)

    # The cluster (presence.cluster): what peers send, and the
    # subscriptions that change owner.

    def applyRemote(self, puts: List[Publication], removes: List[Tuple[str, str]]) -> int:
        """
        Apply publications another manager accepted (C{puts}) and ended
        (C{removes}: C{(presentity, etag)}), already checked and ordered
        by the cluster; then recompose and notify our watchers once per
        presentity.  Nothing is written: the origin wrote the store.

        @return: how many changed our memory.
        """
        changed: Dict[str, Presentity] = {}
        count = 0
        for presentity, etag in removes:
            pub = self.publications.pop(etag, None)
            if pub is not None:
                self.publicationExpiry.discard(etag, pub.expiresAt)
            pres = self.presentities.get(pub.presentity if pub is not None else presentity)
            if pres is not None and pres.publications.pop(etag, None) is not None:
                changed[pres.aor] = pres
                count += 1
        for pub in puts:
            pres = self.presentity(pub.presentity)
            pres.version = max(pres.version, pub.version)
            pres.publications[pub.etag] = pub
            old = self.publications.get(pub.etag)
            if old is not None:
                self.publicationExpiry.discard(pub.etag, old.expiresAt)
            self.publications[pub.etag] = pub
            self.publicationExpiry.set(pub.etag, pub.expiresAt)
            changed[pres.aor] = pres
            count += 1
        # PUBLISH-to-NOTIFY from the update's arrival here: the origin's
        # clock may differ, and a resync brings old publications.
        now = self.clock.seconds()
        for pres in changed.values():
            self._changed(pres, now)
        return count

    def adopt(self, records: Iterable[SubscriptionRecord], notify: bool = True) -> int:
        """
        Serve subscriptions whose ownership just moved to this manager in
        the store (a dead manager's, or one handed over).  NOTIFY CSeqs
        continue above the stored ceiling, so above any the former owner
        sent.

        @param notify: send each active watcher the current state (after
            a death: it may have missed changes), paced in order at
            C{[cluster] adopt_notify_rate} NOTIFYs per second
            (L{Notifier.pace}) so that a large adoption does not flood
            the dispatcher.
        @return: how many are now served (expired ones end instead).
        """
        now = self.clock.seconds()
        count = 0
        toNotify: List[Subscription] = []
        for record in records:
            if record.id in self.subscriptions:
                continue
            sub = Subscription.fromRecord(record)
            if record.expiresAt <= now:
                self.dialogs.add(sub)
                self.terminate(sub, "timeout")
                continue
            self._keep(sub)
            count += 1
            if notify and sub.state == "active":
                toNotify.append(sub)
        if toNotify:
            self.notifier.pace(toNotify)
        return count

    def _keep(self, sub: Subscription) -> None:
        """
        Put C{sub} in memory: indexes, watchers, expiry.
        """
        sub.terminated = False
        self.subscriptions[sub.id] = sub
        self.dialogs.add(sub)
        self.presentity(sub.presentity).addWatcher(sub.id)
        self.expiry.set(sub.id, sub.expiresAt)

    def release(self, subscriptionId: str, owner: str) -> Deferred:
        """
        Hand C{subscriptionId} over to the manager C{owner}: stop serving
        it (no final NOTIFY), then record C{owner} and a CSeq ceiling above
        every NOTIFY we sent.

        @return: a Deferred firing with C{True} once committed, C{False}
            when we do not hold it or the write failed (we then keep it).
        """
        sub = self.subscriptions.get(subscriptionId)
        if sub is None or sub.terminated:
            return succeed(False)
        self._forget(sub)
        ceiling = max(sub.cseqCeiling, sub.cseq + 1)

        def failed(failure: Failure) -> bool:
            self.storeFailed(failure, "hand-over of " + sub.id)
            if sub.id not in self.subscriptions:
                self._keep(sub)
            return False

        d = self.store.updateSubscription(sub.id, owner=owner, localCSeq=ceiling)
        return d.addCallbacks(lambda _: True, failed)

    def disown(self, subscriptionIds: Iterable[str]) -> int:
        """
        Stop serving subscriptions another manager now owns (it adopted
        them while we were cut off from the cluster), without a final
        NOTIFY: the watcher's subscription goes on there.

        @return: how many were dropped.
        """
        count = 0
        for subscriptionId in subscriptionIds:
            sub = self.subscriptions.get(subscriptionId)
            if sub is not None:
                self._forget(sub)
                count += 1
        return count

    # Start and stop.

    def load(self) -> Deferred:
        """
        Rebuild memory from the store: live publications, then this node's
        subscriptions.  Those that expired while the manager was down are
        removed, and their watchers sent a final NOTIFY.

        Then, with C{[manager] notify_on_start}, every active watcher is
        sent the current state once: what it last saw may be stale, as a
        publication may have expired while the manager was down, or the
        process may have died between committing a PUBLISH and sending its
        NOTIFYs.  Those NOTIFYs are paced (L{Notifier.pace}) at C{[cluster]
        adopt_notify_rate} per second, as after an adoption, so that a
        restart with many watchers does not flood the dispatcher; a fenced
        manager (a cluster's, until its lease is held) starts them once
        unfenced.  Their CSeqs continue above the stored ceiling.  A pending
        watcher gets nothing: it has been told all it may know.
        """
        d = self.store.loadPublications()
        d.addCallback(self._loadPublications)
        d.addCallback(lambda _: self._loadSubscriptionPages(None, [0]))
        d.addCallback(lambda _: self._composeWatched())
        if self.config.notifyOnStart:
            d.addCallback(lambda _: self._notifyLoaded())
        return d

    #: Subscriptions read per page when loading: the rows of one page are
    #: garbage before the next is read, so a restart with 100,000 of them
    #: does not hold them all twice (rows and objects) at once.
    loadPageSize = 5000

    def _loadSubscriptionPages(self, after: Optional[str], expired: List[int]) -> Deferred:
        d = self.store.loadSubscriptions(self.node, after, self.loadPageSize)

        def loaded(records: List[SubscriptionRecord]) -> Any:
            expired[0] += self._loadSubscriptions(records)
            if len(records) >= self.loadPageSize:
                return self._loadSubscriptionPages(records[-1].id, expired)
            self.log.info(
                "Loaded {subscriptions} subscriptions and {publications} publications "
                "({expired} subscriptions had expired)",
                subscriptions=len(self.subscriptions),
                publications=len(self.publications),
                expired=expired[0],
            )
            return None

        return d.addCallback(loaded)

    def _loadPublications(self, records: Iterable[PublicationRecord]) -> None:
        now = self.clock.seconds()
        for record in records:
            if record.expiresAt <= now:
                self.store.removePublication(record.etag).addErrback(self.storeFailed, "stale publication")
                continue
            try:
                document = parsePidf(record.body, record.presentity)
            except PidfError as e:
                self.log.warn("Dropping unreadable stored publication {etag}: {e}", etag=record.etag, e=str(e))
                continue
            pub = Publication(
                record.etag, record.presentity, record.body, document,
                record.expiresAt, record.modifiedAt, record.version,
            )
            pres = self.presentity(pub.presentity)
            pres.publications[pub.etag] = pub
            pres.version = max(pres.version, pub.version)
            self.publications[pub.etag] = pub
            self.publicationExpiry.set(pub.etag, pub.expiresAt)

    def _loadSubscriptions(self, records: Iterable[SubscriptionRecord]) -> int:
        """
        Put loaded subscriptions in memory; end those that expired.

        @return: how many had expired.
        """
        now = self.clock.seconds()
        expired = 0
        for record in records:
            sub = Subscription.fromRecord(record)
            self.dialogs.add(sub)
            if record.expiresAt <= now:
                expired += 1
                self.terminate(sub, "timeout")
                continue
            self.subscriptions[sub.id] = sub
            self.presentity(sub.presentity).addWatcher(sub.id)
            self.expiry.set(sub.id, sub.expiresAt)
        return expired

    def _composeWatched(self) -> None:
        """
        Compose the documents of the watched presentities just loaded, so
        that a change is told from the state they had (L{_changed}); the
        others are composed when first asked for, as at run time.
        """
        for pres in self.presentities.values():
            if pres.watchers:
                pres.compose()

    def _notifyLoaded(self) -> None:
        """
        Queue one paced NOTIFY with the current state for every active
        subscription just loaded (see L{load}).
        """
        count = self.notifier.pace(sub for sub in self.subscriptions.values() if sub.state == "active")
        if count:
            self.log.info(
                "Notifying {count} watchers of their current state, at most {rate} per second",
                count=count,
                rate=self.notifier.paceRate,
            )

    def stop(self) -> None:
        """
        Stop timers.  Subscriptions stay in the store, not terminated: a
        restarted manager serves them again.
        """
        if self.registrations is not None:
            self.registrations.removeListener(self.registrationChanged)
        self.expiry.stop()
        self.publicationExpiry.stop()
        self.notifier.stop(self.subscriptions.values())
        self.overload.stop()
        if self.authorizer is not None:
            self.authorizer.removeChangeListener(self.billingChanged)
