"""
The subscription manager: the SUBSCRIBE and PUBLISH handlers of the
presence event package.

Memory serves, the store keeps: every change is written through the store,
and the request is answered only once the write is committed, so a 200 is a
promise that survives a crash.  Group commit in the store makes that cheap
under load.  State changes are applied in memory when their write commits;
until then, an entity-tag or dialog being changed is claimed so that a
racing request sees a consistent state.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Hashable, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.config import Config
from presence.manager.expiry import ExpiryWheel
from presence.manager.notifier import PIDF, Notifier
from presence.manager.state import DialogKey, Presentity, Publication, Subscription
from presence.pidf import PidfError, parsePidf
from presence.sip.core import SIPCore
from presence.sip.headers import HeaderError, NameAddr, parseValueParams
from presence.sip.message import Request
from presence.sip.transaction import COMPLETED, TERMINATED, ServerTransaction
from presence.sip.uri import URIError, normaliseAOR, parseURI
from presence.store.records import PublicationRecord, SubscriptionRecord

_ACCEPTABLE = frozenset([PIDF, "application/*", "*/*"])


def newId() -> str:
    """
    A random identifier for subscriptions, tags and entity-tags.
    """
    return os.urandom(8).hex()


class SubscriptionManager:
    """
    Serves SUBSCRIBE and PUBLISH for the presence event package.

    @ivar subscriptions: id to subscription.
    @ivar dialogs: dialog key to subscription, for in-dialog requests.
    @ivar publications: entity-tag to live publication.
    @ivar presentities: AOR to L{Presentity}, for those with publications
        or watchers.
    """

    log = Logger()

    def __init__(self, core: SIPCore, store: Any, config: Config, clock: Any) -> None:
        self.core = core
        self.store = store
        self.config = config
        self.clock = clock
        self.node = config.node
        self.domains = frozenset(config.domains)
        self.subscriptions: Dict[str, Subscription] = {}
        self.dialogs: Dict[DialogKey, Subscription] = {}
        self.publications: Dict[str, Publication] = {}
        self.presentities: Dict[str, Presentity] = {}
        self.expiry = ExpiryWheel(clock, self._expired)
        self.notifier = Notifier(self)
        self.counters = {"storeErrors": 0}

    def install(self) -> None:
        """
        Register with the SIP core.
        """
        self.core.addHandler("SUBSCRIBE", self._guarded(self.subscribeReceived))
        self.core.addHandler("PUBLISH", self._guarded(self.publishReceived))
        self.core.acceptTypes = [PIDF]
        self.core.allowEvents = ["presence"]

    def _guarded(self, handler: Any) -> Any:
        """
        Wrap a request handler so that an unexpected error answers 500
        instead of leaving the server transaction unanswered forever (the
        core would only log it): nothing a peer sends may wedge a request.
        """

        def serve(request: Request, tx: ServerTransaction) -> None:
            try:
                handler(request, tx)
            except Exception:
                self.log.failure("Error serving {method}", method=request.method)
                if tx.state not in (COMPLETED, TERMINATED):
                    self.core.respond(tx, 500)

        return serve

    # State shared by both handlers.

    def presentity(self, aor: str) -> Presentity:
        pres = self.presentities.get(aor)
        if pres is None:
            pres = self.presentities[aor] = Presentity(aor)
        return pres

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

    def _changed(self, pres: Presentity) -> None:
        """
        Recompose; notify the watchers only if the document changed.
        """
        before = pres.document
        if pres.compose() != before:
            subs = self.subscriptions
            for sid in list(pres.watchers):
                self.notifier.notify(subs[sid])
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
            sub = self.dialogs.get((request.callId or "", localTag, remoteTag, eventId))
            if sub is None or sub.terminated:
                core.respond(tx, 481)
            else:
                self._refresh(sub, request, tx, expires, cseq)
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
        now = self.clock.seconds()
        sub = Subscription(
            id=newId(),
            callId=request.callId or "",
            localTag=newId(),
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
        )
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): the state once, no subscription.
            self._accepted(tx, sub, 0)
            sub.terminated = True
            self.notifier.finish(sub, "timeout")
            return
        self._claimDialog(sub)
        self.store.addSubscription(sub.toRecord(self.node)).addCallbacks(
            self._subscribed, self._subscribeFailed, (tx, sub, expires), None, (tx, sub)
        )

    def _claimDialog(self, sub: Subscription) -> None:
        self.dialogs[sub.dialogKey] = sub

    def _subscribed(self, _: Any, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        if sub.terminated:
            return
        self.subscriptions[sub.id] = sub
        self.presentity(sub.presentity).watchers.add(sub.id)
        self.expiry.set("s" + sub.id, sub.expiresAt)
        self._accepted(tx, sub, expires)
        self.log.debug(
            "SUBSCRIBE {watcher} -> {presentity} expires={expires}",
            watcher=sub.watcher,
            presentity=sub.presentity,
            expires=expires,
        )
        self.notifier.notify(sub)

    def _subscribeFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        self.dialogs.pop(sub.dialogKey, None)
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
        sub.expiresAt = expiresAt
        sub.remoteTarget = remoteTarget
        sub.target = target
        self.expiry.set("s" + sub.id, sub.expiresAt)
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
        self.subscriptions.pop(sub.id, None)
        self.dialogs.pop(sub.dialogKey, None)
        self.expiry.discard("s" + sub.id)
        pres = self.presentities.get(sub.presentity)
        if pres is not None:
            pres.watchers.discard(sub.id)
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

    # PUBLISH (RFC 3903 §6).

    def publishReceived(self, request: Request, tx: ServerTransaction) -> None:
        core = self.core
        config = self.config
        parsed = self._package(request)
        if parsed is None or parsed[0] != "presence":
            core.respond(tx, 489, None, [("Allow-Events", "presence")])
            return
        presentity = self._presentityOf(request)
        if presentity is None:
            core.respond(tx, 404)
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
            if old is None or old.presentity != presentity:
                core.respond(tx, 412)
                return
            # Claim the entity-tag: a racing PUBLISH naming it gets 412.
            del self.publications[ifMatch]
            self.expiry.discard("p" + ifMatch)
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
        # A new entity-tag replaces the old one (RFC 3903 §6): two writes,
        # issued together so that group commit makes them one transaction.
        writes = [self.store.putPublication(pub.toRecord())]
        if old is not None:
            writes.append(self.store.removePublication(old.etag))
        DeferredList(writes, consumeErrors=True).addCallback(
            self._publishWritten, tx, pub, old, expires
        )

    def _publishWritten(
        self,
        results: List[Tuple[bool, Any]],
        tx: ServerTransaction,
        pub: Publication,
        old: Optional[Publication],
        expires: int,
    ) -> None:
        """
        Both writes of a PUBLISH are done.  If either failed, undo the one
        that committed (best effort), so that the store again holds what
        memory holds, and answer 500.
        """
        failures = [result for ok, result in results if not ok]
        if not failures:
            self._published(tx, pub, old, expires)
            return
        if results[0][0]:
            self.store.removePublication(pub.etag).addErrback(
                self.storeFailed, "undoing publication " + pub.etag
            )
        if old is not None and results[1][0]:
            self.store.putPublication(old.toRecord()).addErrback(
                self.storeFailed, "restoring publication " + old.etag
            )
        self._publishFailed(failures[0], tx, old, pub.presentity)

    def _published(
        self, tx: ServerTransaction, pub: Publication, old: Optional[Publication], expires: int
    ) -> None:
        pres = self.presentity(pub.presentity)
        pres.version = max(pres.version, pub.version)
        if old is not None:
            pres.publications.pop(old.etag, None)
        pres.publications[pub.etag] = pub
        self.publications[pub.etag] = pub
        self.expiry.set("p" + pub.etag, pub.expiresAt)
        self.core.respond(tx, 200, None, [("SIP-ETag", pub.etag), ("Expires", str(expires))])
        self.log.debug(
            "PUBLISH {presentity} etag={etag} expires={expires}",
            presentity=pub.presentity,
            etag=pub.etag,
            expires=expires,
        )
        # Always recompose: even an identical body makes this publication
        # the newest, which may change what composition takes from it.
        # _changed notifies only if the composed bytes differ.
        self._changed(pres)

    def _unpublished(self, _: Any, tx: ServerTransaction, old: Publication) -> None:
        self.core.respond(tx, 200, None, [("Expires", "0")])
        pres = self.presentity(old.presentity)
        pres.publications.pop(old.etag, None)
        self._changed(pres)

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
                self.expiry.set("p" + old.etag, old.expiresAt)
            self._release(pres)
        self.storeFailed(failure, "publication")
        self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    # Expiry.

    def _expired(self, keys: List[Hashable]) -> None:
        for key in keys:
            kind, ident = key[0], key[1:]  # type: ignore[index]
            if kind == "s":
                sub = self.subscriptions.get(ident)
                if sub is not None:
                    self.terminate(sub, "timeout")
            else:
                pub = self.publications.pop(ident, None)
                if pub is not None:
                    self.store.removePublication(pub.etag).addErrback(
                        self.storeFailed, "expired publication " + pub.etag
                    )
                    pres = self.presentity(pub.presentity)
                    pres.publications.pop(pub.etag, None)
                    self._changed(pres)

    # Start and stop.

    def load(self) -> Deferred:
        """
        Rebuild memory from the store: live publications, then this node's
        subscriptions.  Those that expired while the manager was down are
        removed, and their watchers sent a final NOTIFY.
        """
        d = self.store.loadPublications()
        d.addCallback(self._loadPublications)
        d.addCallback(lambda _: self.store.loadSubscriptions(self.node))
        d.addCallback(self._loadSubscriptions)
        return d

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
            self.expiry.set("p" + pub.etag, pub.expiresAt)
        for pres in self.presentities.values():
            pres.compose()

    def _loadSubscriptions(self, records: Iterable[SubscriptionRecord]) -> None:
        now = self.clock.seconds()
        expired = 0
        for record in records:
            sub = Subscription.fromRecord(record)
            self.dialogs[sub.dialogKey] = sub
            if record.expiresAt <= now:
                expired += 1
                self.terminate(sub, "timeout")
                continue
            self.subscriptions[sub.id] = sub
            self.presentity(sub.presentity).watchers.add(sub.id)
            self.expiry.set("s" + sub.id, sub.expiresAt)
        self.log.info(
            "Loaded {subscriptions} subscriptions and {publications} publications "
            "({expired} subscriptions had expired)",
            subscriptions=len(self.subscriptions),
            publications=len(self.publications),
            expired=expired,
        )

    def stop(self) -> None:
        """
        Stop timers.  Subscriptions stay in the store, not terminated: a
        restarted manager serves them again.
        """
        self.expiry.stop()
        self.notifier.stop(self.subscriptions.values())
