"""
The subscription manager: the SUBSCRIBE and PUBLISH handlers of every
event package it serves, composed, and what they share.

Memory serves, the store keeps: every change is written through the store,
and the request is answered only once the write is committed, so a 200 is a
promise that survives a crash.  Group commit in the store makes that cheap
under load.

The parts, one module each:

  - L{presence.manager.model}: the in-memory model (subscriptions,
    dialogs, publications per resource and event package, expiry wheels);
  - L{presence.manager.subscribe} and L{presence.manager.publish}: the two
    handlers, for every package;
  - L{presence.manager.notifier}: NOTIFYs with rate control, pacing and
    fencing;
  - L{presence.manager.decisions}: billing's decisions taken again when
    billing changes;
  - L{presence.manager.ownership}: load at start, adoption, hand-over, and
    publications replicated by the cluster;
  - L{presence.manager.router}: each request to its package, by its
    C{Event} header, and to the handler of its method;
  - L{presence.packages}: what each event package's bodies mean.

This class composes them.  The cluster sees the manager as an
L{IClusterMember}, the admin side as an L{ISubscriptionManager}, the
notifier as an L{INotifyHost}.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Hashable, Iterable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.billing.gate import AuthGate, FailureLimiter
from presence.billing.quirks import ChallengeQuirks
from presence.config import Config
from presence.interfaces import IClusterMember, INotifyHost, ISubscriptionManager, IWatcherInfoPackage
from presence.manager.admission import Admission
from presence.manager.decisions import Redecisions
from presence.manager.model import ManagerState
from presence.manager.notifier import Notifier
from presence.manager.overload import OverloadGuard
from presence.manager.ownership import Ownership
from presence.manager.publish import PublishHandler
from presence.manager.router import EventRouter
from presence.manager.state import DialogKey, Presentity, Publication, Subscription, newId
from presence.manager.subscribe import SubscribeHandler
from presence.packages import PackageRegistry, defaultPackages
from presence.sip.core import SIPCore
from presence.sip.digest import DigestAuthenticator
from presence.sip.message import Request
from presence.sip.target import Target
from presence.sip.transaction import ServerTransaction
from presence.sip.uri import URIError, normaliseAOR
from presence.store.records import SubscriptionRecord

__all__ = ["SubscriptionManager", "newId"]


@implementer(ISubscriptionManager, IClusterMember, INotifyHost)
class SubscriptionManager:
    """
    Serves SUBSCRIBE and PUBLISH for the event packages it is given.

    @ivar model: the L{ManagerState}.  Its tables are also reachable as
        L{subscriptions}, L{dialogs}, L{publications} and (the presence
        package's resources) L{presentities}, for tests and the manhole.
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

    #: Subscriptions read per page when loading: the rows of one page are
    #: garbage before the next is read, so a restart with 100,000 of them
    #: does not hold them all twice (rows and objects) at once.
    loadPageSize = 5000

    def __init__(
        self,
        core: SIPCore,
        store: Any,
        config: Config,
        clock: Any,
        authorizer: Any = None,
        digest: Optional[DigestAuthenticator] = None,
        packages: Optional[PackageRegistry] = None,
    ) -> None:
        """
        @param authorizer: billing, an L{presence.interfaces.IAuthorizer};
            without one nothing is authenticated nor authorized (tools and
            tests of other parts only).
        @param digest: issues and checks digest nonces; every manager of a
            cluster must share its secret.  A random secret by default.
        @param packages: the event packages to serve (an
            L{presence.interfaces.IPackageRegistry});
            L{presence.packages.defaultPackages} by default.
        """
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.node = config.node
        self.domains = frozenset(config.domains)
        self.packages = packages if packages is not None else defaultPackages(config)
        self.model = ManagerState(clock, self.packages, self._subscriptionsExpired, self._publicationsExpired)
        # The watcher-information packages (presence.winfo) by the package
        # they report on.
        self.watcherInfo: Dict[str, List[Any]] = {}
        for package in self.packages:
            if IWatcherInfoPackage.providedBy(package):
                self.watcherInfo.setdefault(package.reports, []).append(package)
                package.bind(self._watchersFor(package.reports))
        self.subscriptions = self.model.subscriptions
        self.dialogs = self.model.dialogs
        self.publications = self.model.publications
        self.presentities: Dict[str, Presentity] = self.model.resources.get("presence", {})
        self.expiry = self.model.expiry
        self.publicationExpiry = self.model.publicationExpiry
        self.notifier = Notifier(core, store, clock, config, self)
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
        # Draining before maintenance (L{setDraining}): new work refused.
        self.draining = False
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
        self.decisions = Redecisions(self)
        self.ownership = Ownership(self)
        self.subscribeHandler = SubscribeHandler(self)
        self.publishHandler = PublishHandler(self)
        self.router = EventRouter(core, self.packages, self.admission)

    @property
    def registrations(self) -> Any:
        return self.model.registrations

    def install(self) -> None:
        """
        Register with the SIP core (L{EventRouter}).
        """
        self.router.install(self.subscribeHandler.received, self.publishHandler.received)
        if self.authorizer is not None:
            self.authorizer.addChangeListener(self.decisions.billingChanged)

    def whenIdle(self, timeout: float = 10.0) -> Deferred:
        """
        Fire once no request waits for billing (each has then issued its
        store write, or been answered), or after C{timeout} seconds.
        """
        return self.admission.whenIdle(timeout)

    # What both handlers share.

    def resourceOf(self, request: Request) -> Optional[str]:
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

    def shed(self, tx: ServerTransaction) -> bool:
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

    def changed(self, pres: Presentity, event: str, published: Optional[float] = None) -> None:
        """
        Recompose C{pres}; notify its active watchers if the document
        changed (L{ManagerState.changed}).

        @param published: when the PUBLISH causing the change was received,
            if one did (the notifier's PUBLISH-to-NOTIFY latency).
        """
        notify = self.notifier.notify
        for sub in self.model.changed(pres, event):
            notify(sub, since=published)

    def forget(self, sub: Subscription, reason: str = "timeout") -> None:
        """
        Drop C{sub} from memory: no more NOTIFYs but its final one.

        @param reason: why it ended, for its owner's watcher information.
        """
        self.notifier.cancel(sub)
        self.model.forget(sub)
        self.watchersChanged(sub, reason)

    def watchersChanged(self, sub: Subscription, reason: Optional[str] = None) -> None:
        """
        C{sub} came, went (for C{reason}) or changed state: the watcher
        information of its resource (presence.winfo) changes with it.
        """
        for package in self.watcherInfo.get(sub.event, ()):
            pres = self.model.resources[package.event].get(sub.presentity)
            if pres is not None and pres.watchers:
                package.changing(sub, reason)
                self.changed(pres, package.event)

    def _watchersFor(self, event: str) -> Any:
        def watchers(aor: str) -> List[Subscription]:
            pres = self.model.resources[event].get(aor)
            if pres is None:
                return []
            subs = self.model.subscriptions
            return [subs[sid] for sid in pres.watchers if sid in subs]

        return watchers

    def terminate(self, sub: Subscription, reason: Optional[str]) -> Deferred:
        """
        End C{sub} on our side (expiry, a failed NOTIFY, billing, an
        operator): forget it at once, delete it from the store, then send
        the final NOTIFY with C{reason}, if any.  The subscription ends in
        memory even if the store write fails; the store then drops it when
        it expires.
        """
        self.forget(sub, reason or "timeout")

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

    def notifyPaced(self, subscriptionIds: Iterable[str]) -> int:
        subs = self.model.subscriptions
        return self.notifier.pace(subs[i] for i in subscriptionIds if i in subs)

    def storeFailed(self, failure: Failure, what: str) -> None:
        self.counters["storeErrors"] += 1
        self.log.failure("Store write failed: {what}", failure, what=what)

    # Presence derived from registrations.

    def followRegistrations(self, registrations: Any) -> None:
        """
        Derive the state of resources without publication from
        C{registrations} (a L{presence.registrar.Registrar}): for
        presence, open while one of their bindings lives.  Call before
        L{load}.
        """
        self.model.registrations = registrations
        registrations.addListener(self.registrationChanged)

    def registrationChanged(self, aor: str) -> None:
        """
        The bindings of C{aor} changed: if that changes what its watchers
        see, notify them now.  A resource nobody watches is not held in
        memory; its state is derived afresh when it is next needed.
        """
        registrations = self.model.registrations
        if registrations is None:
            return
        held = [(event, table[aor]) for event, table in self.model.resources.items() if aor in table]
        if not held:
            return
        contact = registrations.contactOf(aor)
        for event, pres in held:
            if contact != pres.registered:
                pres.registered = contact
                self.changed(pres, event)

    # Expiry.

    def _subscriptionsExpired(self, ids: List[Hashable]) -> None:
        for ident in ids:
            sub = self.model.subscriptions.get(ident)  # type: ignore[arg-type]
            if sub is not None:
                self.terminate(sub, "timeout")

    def _publicationsExpired(self, etags: List[Hashable]) -> None:
        model = self.model
        for etag in etags:
            pub = model.publications.get(etag)  # type: ignore[arg-type]
            if pub is None:
                continue
            # A replicated publication is its origin's to remove from the
            # store; every manager expires it in memory.
            pres = model.drop(pub)
            if not pub.origin:
                self.store.removePublication(pub.etag).addErrback(
                    self.storeFailed, "expired publication " + pub.etag
                )
                if self.cluster is not None:
                    self.cluster.publicationRemoved(pub)
            self.changed(pres, pub.event)

    # Start and stop.

    def load(self) -> Deferred:
        """
        Rebuild memory from the store (L{Ownership.load}).
        """
        return self.ownership.load()

    def stop(self) -> None:
        """
        Stop timers.  Subscriptions stay in the store, not terminated: a
        restarted manager serves them again.
        """
        if self.model.registrations is not None:
            self.model.registrations.removeListener(self.registrationChanged)
        self.model.expiry.stop()
        self.model.publicationExpiry.stop()
        self.notifier.stop(self.model.subscriptions.values())
        self.overload.stop()
        if self.authorizer is not None:
            self.authorizer.removeChangeListener(self.decisions.billingChanged)

    # INotifyHost.

    def notifyBody(self, sub: Subscription) -> Tuple[str, bytes]:
        package = self.packages.get(sub.event)
        before = sub.packageState
        body = package.render(sub, self.model.documentOf(sub.presentity, sub.event))
        if sub.packageState != before and not sub.terminated:
            # (A final NOTIFY's subscription is gone from the store.)
            self.store.updateSubscription(sub.id, packageState=sub.packageState).addErrback(
                self.storeFailed, "package state of " + sub.id
            )
        return package.bodyTypes[0], body

    def flowFor(self, sub: Subscription) -> Optional[Target]:
        registrations = self.model.registrations
        if registrations is None:
            return None
        return registrations.flowFor(sub.watcher, sub.remoteTarget)

    # ISubscriptionManager.

    @property
    def notifyCounters(self) -> Dict[str, int]:
        return self.notifier.counters

    @property
    def publishToNotify(self) -> Any:
        return self.notifier.publishToNotify

    @property
    def fenced(self) -> bool:
        return self.notifier.fenced

    def resourceTable(self, event: str = "presence") -> Dict[str, Presentity]:
        return self.model.resources.get(event, {})

    def sizes(self) -> Dict[str, int]:
        sizes = self.model.sizes()
        sizes["pacedWaiting"] = self.notifier.waiting
        return sizes

    def subscription(self, subscriptionId: str) -> Optional[Subscription]:
        return self.model.subscriptions.get(subscriptionId)

    def allSubscriptions(self) -> List[Subscription]:
        return list(self.model.subscriptions.values())

    def resource(self, aor: str, event: str = "presence") -> Optional[Presentity]:
        table = self.model.resources.get(event)
        return None if table is None else table.get(aor)

    def documentOf(self, aor: str, event: str = "presence") -> bytes:
        return self.model.documentOf(aor, event)

    # IClusterMember.

    def fence(self) -> None:
        self.notifier.fence()

    def unfence(self) -> int:
        held = len(self.notifier.held)
        self.notifier.unfence()
        return held

    def heldNotifies(self) -> List[str]:
        return list(self.notifier.held)

    def dropHeld(self, subscriptionIds: Iterable[str]) -> int:
        return self.notifier.drop(subscriptionIds)

    def holdsDialog(self, key: DialogKey) -> bool:
        return key in self.model.dialogs

    def subscriptionIds(self) -> Set[str]:
        return set(self.model.subscriptions)

    def isStale(self, subscriptionId: str) -> bool:
        sub = self.model.subscriptions.get(subscriptionId)
        return sub is not None and (sub.dirty or sub.inFlight or sub.id in self.notifier.paced)

    def adopt(self, records: Iterable[SubscriptionRecord], notify: bool = True) -> int:
        return self.ownership.adopt(records, notify)

    def release(self, subscriptionId: str, owner: str) -> Deferred:
        return self.ownership.release(subscriptionId, owner)

    def disown(self, subscriptionIds: Iterable[str]) -> int:
        return self.ownership.disown(subscriptionIds)

    def parsePublication(self, event: str, body: bytes, resource: str) -> Any:
        package = self.packages.get(event)
        if package is None:
            raise ValueError("no event package %r" % (event,))
        return package.parse(body, resource)

    def applyRemote(self, puts: List[Publication], removes: List[Tuple[str, str]]) -> int:
        return self.ownership.applyRemote(puts, removes)

    def publication(self, etag: str) -> Optional[Publication]:
        return self.model.publications.get(etag)

    def heldPublication(self, presentity: str, etag: str) -> Optional[Publication]:
        return self.model.held(presentity, etag)

    def publicationKeys(self) -> List[Tuple[str, str]]:
        return [
            (aor, etag)
            for table in self.model.resources.values()
            for aor, pres in table.items()
            for etag in pres.publications
        ]
