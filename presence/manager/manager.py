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

from twisted.internet.defer import Deferred, gatherResults
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
from presence.sip.transaction import ServerTransaction
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
        self.core.addHandler("SUBSCRIBE", self.subscribeReceived)
        self.core.addHandler("PUBLISH", self.publishReceived)
        self.core.acceptTypes = [PIDF]
        self.core.allowEvents = ["presence"]

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

    def _expires(self, request: Request, default: int, maximum: int) -> int:
        text = request.header("expires")
        if text is None:
            return default
        return min(int(text), maximum)

    # SUBSCRIBE (RFC 6665 §4.2.1, RFC 3856 §6).

    def subscribeReceived(self, request: Request, tx: ServerTransaction) -> None:
        core = self.core
        config = self.config
        event = request.header("event")
        package, params = parseValueParams(event) if event is not None else ("", {})
        if package != "presence":
            core.respond(tx, 489, None, [("Allow-Events", "presence")])
            return
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
        core = self.core
        if cseq <= sub.remoteCSeq:
            core.respond(tx, 500, "CSeq Out Of Order")
            return
        sub.remoteCSeq = cseq
        if expires == 0:
            self.terminate(sub, "timeout", tx)
            return
        contacts = request.headerValues("contact")
        if contacts:
            try:
                sub.remoteTarget = NameAddr.fromString(contacts[0]).uri
            except HeaderError:
                pass
        sub.target = tx.source
        sub.expiresAt = self.clock.seconds() + expires
        self.store.updateSubscription(
            sub.id,
            expiresAt=sub.expiresAt,
            remoteCSeq=cseq,
            remoteTarget=sub.remoteTarget,
            transport=sub.target.transport,
            peerHost=sub.target.host,
            peerPort=sub.target.port,
            flowToken=sub.target.flow or "",
        ).addCallbacks(self._refreshed, self._refreshFailed, (tx, sub, expires), None, (tx, sub))

    def _refreshed(self, _: Any, tx: ServerTransaction, sub: Subscription, expires: int) -> None:
        if sub.terminated:
            self.core.respond(tx, 481)
            return
        self.expiry.set("s" + sub.id, sub.expiresAt)
        self._accepted(tx, sub, expires)
        self.notifier.notify(sub)

    def _refreshFailed(self, failure: Failure, tx: ServerTransaction, sub: Subscription) -> None:
        self.storeFailed(failure, "refresh of " + sub.id)
        self.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])

    def terminate(
        self, sub: Subscription, reason: Optional[str], tx: Optional[ServerTransaction] = None
    ) -> Deferred:
        """
        End C{sub}: forget it, delete it from the store, then answer C{tx}
        (an un-SUBSCRIBE) and send the final NOTIFY with C{reason}, if any.
        """
        sub.terminated = True
        self.subscriptions.pop(sub.id, None)
        self.dialogs.pop(sub.dialogKey, None)
        self.expiry.discard("s" + sub.id)
        pres = self.presentities.get(sub.presentity)
        if pres is not None:
            pres.watchers.discard(sub.id)
            self._release(pres)

        def removed(_: Any) -> None:
            if tx is not None:
                self._accepted(tx, sub, 0)
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
        event = request.header("event")
        if event is None or parseValueParams(event)[0] != "presence":
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
                self._unpublished, self._publishFailed, (tx, old), None, (tx, old)
            )
            return
        now = self.clock.seconds()
        pres = self.presentity(presentity)
        pres.version += 1
        if document is None:
            assert old is not None
            body, document, modifiedAt = old.body, old.document, old.modifiedAt
        else:
            modifiedAt = now
        pub = Publication(newId(), presentity, body, document, now + expires, modifiedAt, pres.version)
        writes = [self.store.putPublication(pub.toRecord())]
        if old is not None:
            writes.append(self.store.removePublication(old.etag))
        gatherResults(writes, consumeErrors=True).addCallbacks(
            self._published, self._publishFailed, (tx, pub, old, expires), None, (tx, old)
        )

    def _published(
        self, _: Any, tx: ServerTransaction, pub: Publication, old: Optional[Publication], expires: int
    ) -> None:
        pres = self.presentity(pub.presentity)
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
        if old is None or old.body != pub.body:
            self._changed(pres)

    def _unpublished(self, _: Any, tx: ServerTransaction, old: Publication) -> None:
        self.core.respond(tx, 200, None, [("Expires", "0")])
        pres = self.presentity(old.presentity)
        pres.publications.pop(old.etag, None)
        self._changed(pres)

    def _publishFailed(self, failure: Failure, tx: ServerTransaction, old: Optional[Publication]) -> None:
        if old is not None and old.etag in self.presentity(old.presentity).publications:
            self.publications[old.etag] = old
            self.expiry.set("p" + old.etag, old.expiresAt)
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
