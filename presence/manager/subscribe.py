"""
SUBSCRIBE (RFC 6665 §4.2.1; RFC 3856 §6 for presence), for every event
package: a new subscription, a refresh, an un-SUBSCRIBE, a fetch.

Billing comes first: the request (in-dialog refreshes too) is
authenticated by the manager's L{AuthGate} before it touches any state,
and a new subscription is recorded only once the authorizer has decided
the watcher may see the resource (active) or must wait for the owner's
consent (pending); a package whose state is its owner's alone
(L{IEventPackage.ownerOnly}) admits the owner only.  Nothing changes in
memory until the store has committed the change, and the 200 goes out
only then.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.python.failure import Failure

from presence.billing.records import ALLOW, BLOCK
from presence.interfaces import IEventPackage
from presence.manager.state import DialogKey, Subscription, newId
from presence.packages import acceptable
from presence.sip.headers import HeaderError, NameAddr
from presence.sip.message import Request
from presence.sip.transaction import ServerTransaction
from presence.sip.uri import URIError, normaliseAOR, parseURI


def expiresOf(request: Request, default: int, maximum: int) -> int:
    """
    The C{Expires} a request asks for, at most C{maximum}.
    """
    text = request.header("expires")
    if text is None:
        return default
    return min(int(text), maximum)


def remoteTargetOf(contacts: List[str]) -> str:
    """
    The watcher's remote target: the URI of its first Contact.

    @raise HeaderError: malformed Contact.
    @raise URIError: a URI that does not parse.
    """
    remoteTarget = NameAddr.fromString(contacts[0]).uri
    parseURI(remoteTarget)
    return remoteTarget


class Wanted:
    """
    What a new SUBSCRIBE asks for, carried from step to step while billing
    decides.
    """

    __slots__ = (
        "request", "tx", "package", "watcher", "presentity", "remoteTarget", "remoteTag",
        "eventId", "expires", "cseq", "packageState",
    )

    def __init__(
        self,
        request: Request,
        tx: ServerTransaction,
        package: IEventPackage,
        watcher: str,
        presentity: str,
        remoteTarget: str,
        remoteTag: str,
        eventId: str,
        expires: int,
        cseq: int,
        packageState: str = "",
    ) -> None:
        self.request = request
        self.tx = tx
        self.package = package
        self.watcher = watcher
        self.presentity = presentity
        self.remoteTarget = remoteTarget
        self.remoteTag = remoteTag
        self.eventId = eventId
        self.expires = expires
        self.cseq = cseq
        self.packageState = packageState


class SubscribeHandler:
    """
    Serves the SUBSCRIBEs the manager's router gives it, with the
    package their C{Event} header names.
    """

    def __init__(self, manager: Any) -> None:
        """
        @param manager: the L{presence.manager.manager.SubscriptionManager}
            whose model, store, notifier and admission it works with.
        """
        self.manager = manager

    def received(
        self,
        request: Request,
        tx: ServerTransaction,
        package: IEventPackage,
        params: Dict[str, Optional[str]],
    ) -> None:
        manager = self.manager
        core = manager.core
        config = manager.config
        eventId = params.get("id") or ""
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
        expires = expiresOf(request, config.defaultExpires, config.maxExpires)
        if 0 < expires < config.minExpires:
            core.respond(tx, 423, None, [("Min-Expires", str(config.minExpires))])
            return
        localTag = toAddr.tag
        if localTag:
            key = (request.callId or "", localTag, remoteTag, eventId)
            if manager.gate is None:
                self._inDialog(None, request, tx, package, key, expires, cseq)
                return
            try:
                sender = normaliseAOR(fromAddr.uri)
            except URIError as e:
                core.respond(tx, 400, str(e) or "Bad From")
                return
            manager.admission.admit(
                request, tx, sender, self._inDialog, request, tx, package, key, expires, cseq
            )
            return
        if manager.shed(tx):
            return
        accepts = [value.split(";")[0].strip().lower() for value in request.headerValues("accept")]
        if not acceptable(package, accepts):
            core.respond(tx, 406, None, [("Accept", package.bodyTypes[0])])
            return
        presentity = manager.resourceOf(request)
        if presentity is None:
            core.respond(tx, 404)
            return
        try:
            watcher = normaliseAOR(fromAddr.uri)
            contacts = request.headerValues("contact")
            if not contacts:
                core.respond(tx, 400, "Missing Contact")
                return
            remoteTarget = remoteTargetOf(contacts)
        except (HeaderError, URIError) as e:
            core.respond(tx, 400, str(e) or "Bad Contact")
            return
        wanted = Wanted(
            request, tx, package, watcher, presentity, remoteTarget, remoteTag, eventId, expires, cseq,
            package.initialState(params),
        )
        manager.admission.admit(request, tx, watcher, self._authorizeWatch, wanted)

    def _inDialog(
        self,
        sender: Optional[str],
        request: Request,
        tx: ServerTransaction,
        package: IEventPackage,
        key: DialogKey,
        expires: int,
        cseq: int,
        askCluster: bool = True,
    ) -> None:
        """
        An authenticated in-dialog SUBSCRIBE: only the subscription's own
        watcher may refresh or end it, in the subscription's own package.

        @param askCluster: ask the cluster for a dialog we do not hold.
        """
        manager = self.manager
        sub = manager.model.dialogs.get(key)
        if sub is None and manager.draining:
            # Handed over (or never ours): not taken back while draining.
            # The watcher keeps its subscription and asks again; by then
            # the dispatcher sends it to a manager in rotation.
            manager.core.respond(tx, 503, "Draining", [("Retry-After", "1")])
            return
        cluster = manager.cluster
        if sub is None and askCluster and cluster is not None:
            # Another manager of the cluster may own it, or have died.
            d = cluster.dialogMissing(request, key)
            if d is not None:
                d.addBoth(
                    lambda _: manager.admission.proceed(
                        tx, self._inDialog, sender, request, tx, package, key, expires, cseq, False
                    )
                )
                manager.admission.hold(d)
                return
        if sub is None or sub.terminated or sub.event != package.event:
            manager.core.respond(tx, 481)
        elif sender is not None and sender != sub.watcher:
            manager.core.respond(tx, 403, "Not The Watcher")
        else:
            self._refresh(sub, request, tx, expires, cseq)

    def _authorizeWatch(self, sender: Optional[str], wanted: Wanted) -> None:
        """
        The watcher is authenticated: ask billing whether it may see the
        resource (or, for a package of the owner's alone, whether it is
        the owner), then make the subscription.
        """
        manager = self.manager
        epoch = manager.decisions.epoch
        tx = wanted.tx
        if wanted.package.ownerOnly:
            if wanted.watcher != wanted.presentity:
                manager.counters["rejected"] += 1
                manager.core.respond(tx, 403, "Not Your Resource")
                return
            self._newSubscription(ALLOW, epoch, wanted)
            return
        authorizer = manager.authorizer
        if authorizer is None:
            self._newSubscription(ALLOW, epoch, wanted)
            return
        d = authorizer.watchDecision(wanted.watcher, wanted.presentity)
        d.addCallback(
            lambda decision: manager.admission.proceed(tx, self._newSubscription, decision, epoch, wanted)
        )
        d.addErrback(manager.admission.billingFailed, tx)
        manager.admission.hold(d)

    def _newSubscription(self, decision: str, epoch: int, wanted: Wanted) -> None:
        """
        Record a subscription billing allowed (active) or asked the owner
        about (pending: NOTIFYs carry no state until allowed).
        """
        manager = self.manager
        tx = wanted.tx
        if decision == BLOCK:
            manager.counters["rejected"] += 1
            manager.core.respond(tx, 403, "Not Authorized To Watch")
            return
        now = manager.clock.seconds()
        expires = wanted.expires
        package = wanted.package
        # Our tag is the subscription's id too: one string fewer each.
        tag = newId()
        sub = Subscription(
            id=tag,
            callId=wanted.request.callId or "",
            localTag=tag,
            remoteTag=wanted.remoteTag,
            eventId=wanted.eventId,
            watcher=wanted.watcher,
            presentity=wanted.presentity,
            remoteTarget=wanted.remoteTarget,
            routeSet=tuple(wanted.request.headerValues("record-route")),
            target=tx.source,
            expiresAt=now + expires,
            createdAt=now,
            remoteCSeq=wanted.cseq,
            state="active" if decision == ALLOW else "pending",
            event=package.event,
            packageState=wanted.packageState,
        )
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): the state once, no subscription.
            self._accepted(tx, sub, 0)
            sub.terminated = True
            manager.notifier.finish(sub, "timeout")
            return
        manager.model.dialogs.add(sub)
        d = manager.store.addSubscription(sub.toRecord(manager.node, package.bodyTypes[0]))
        d.addCallbacks(self._subscribed, self._subscribeFailed, (tx, sub, expires), None, (tx, sub))
        if manager.authorizer is not None and not package.ownerOnly:
            d.addCallback(manager.decisions.decidedBefore, sub, epoch)

    def _subscribed(self, _: Any, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        if sub.terminated:
            return
        self.manager.model.keep(sub)
        self._accepted(tx, sub, expires)
        self.manager.notifier.notify(sub)
        self.manager.watchersChanged(sub)

    def _subscribeFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        manager = self.manager
        manager.model.dialogs.discard(sub)
        manager.storeFailed(failure, "subscription " + sub.id)
        manager.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    def _accepted(self, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        core = self.manager.core
        headers: List[Tuple[str, str]] = [
            ("Expires", str(expires)),
            ("Contact", core.contactFor(tx.source)),
        ]
        records = tx.request.headers.get("record-route")
        if records:
            headers.extend(("Record-Route", value) for value in records)
        core.respond(tx, 200, None, headers, toTag=sub.localTag)

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
        manager = self.manager
        core = manager.core
        if cseq <= sub.remoteCSeq:
            core.respond(tx, 500, "CSeq Out Of Order")
            return
        remoteTarget = sub.remoteTarget
        contacts = request.headerValues("contact")
        if contacts:
            try:
                remoteTarget = remoteTargetOf(contacts)
            except (HeaderError, URIError) as e:
                core.respond(tx, 400, str(e) or "Bad Contact")
                return
        sub.remoteCSeq = cseq
        if expires == 0:
            manager.store.removeSubscription(sub.id).addCallbacks(
                self._unsubscribed, self._refreshFailed, (tx, sub), None, (tx, sub)
            )
            return
        target = tx.source
        expiresAt = manager.clock.seconds() + expires
        manager.store.updateSubscription(
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
        manager = self.manager
        if sub.terminated:
            manager.core.respond(tx, 481)
            return
        manager.model.moveExpiry(sub, expiresAt)
        sub.remoteTarget = sys.intern(remoteTarget)
        sub.target = manager.model.sharedTarget(target)
        self._accepted(tx, sub, expires)
        # RFC 6665 §4.2 (RFC 3265 §3.1.6.2): a refresh is answered with a
        # NOTIFY at once, whatever the rate control.
        manager.notifier.notify(sub, immediate=True)

    def _unsubscribed(self, _: Any, tx: ServerTransaction, sub: Subscription) -> None:
        manager = self.manager
        if sub.terminated:
            manager.core.respond(tx, 481)
            return
        manager.forget(sub)
        self._accepted(tx, sub, 0)
        manager.notifier.finish(sub, "timeout")

    def _refreshFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        self.manager.storeFailed(failure, "refresh of " + sub.id)
        self.manager.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])
