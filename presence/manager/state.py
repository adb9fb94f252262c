"""
What a manager holds in memory, object by object: subscriptions (dialogs
with a watcher), publications, and per resource of an event package its
live publications, its watchers and its composed document.

Memory is the serving copy; the store holds the truth.  These objects are
mutable (a NOTIFY bumps a CSeq, a refresh moves an expiry) and convert to
and from the store's immutable records.  What a body means is the event
package's business (L{presence.interfaces.IEventPackage}): here a
published document is opaque, and composing asks the package.
"""

from __future__ import annotations

from typing import Any, Collection, Dict, Iterator, List, Optional, Set, Tuple, Union

from presence.sip.randomness import randomBytes
from presence.sip.target import Target
from presence.store.records import PublicationRecord, SubscriptionRecord

DialogKey = Tuple[str, str, str, str]
"""
(Call-ID, our tag, their tag, Event id): what identifies a subscription
(RFC 6665 §4.1.2.1 and §8.2.1).
"""


def newId() -> str:
    """
    A random identifier for subscriptions, tags and entity-tags.
    """
    return randomBytes(8).hex()


class DialogIndex:
    """
    Subscriptions by L{DialogKey}, for in-dialog requests, held without
    the keys.

    A dict keyed by the 4-tuple cost a tuple per subscription, an eighth
    of its memory.  Our tag identifies the dialog by itself: it is random
    (64 bits) and we give every new subscription a fresh one; an in-dialog
    SUBSCRIBE that would start a second subscription in a dialog (another
    Event id, RFC 6665 §4.5.2) is refused with 481.  So the index is keyed
    by our tag, and the rest of the key is checked against the
    subscription found.
    """

    __slots__ = ("_byTag",)

    def __init__(self) -> None:
        self._byTag: Dict[str, Subscription] = {}

    def get(self, key: DialogKey) -> Optional[Subscription]:
        sub = self._byTag.get(key[1])
        if sub is not None and sub.callId == key[0] and sub.remoteTag == key[2] and sub.eventId == key[3]:
            return sub
        return None

    def add(self, sub: Subscription) -> None:
        """
        Index C{sub}, replacing the subscription held with its tag.
        """
        self._byTag[sub.localTag] = sub

    def discard(self, sub: Subscription) -> None:
        """
        Forget C{sub}, if it is the subscription indexed under its tag.
        """
        if self._byTag.get(sub.localTag) is sub:
            del self._byTag[sub.localTag]

    def __contains__(self, key: DialogKey) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self._byTag)

    def __iter__(self) -> Iterator[DialogKey]:
        for sub in self._byTag.values():
            yield sub.dialogKey


# NOTIFY CSeqs are reserved in blocks so that only one NOTIFY in
# CSEQ_BLOCK costs a store write, yet a restart never reuses a CSeq: the
# store holds a ceiling that no CSeq sent has reached.
CSEQ_BLOCK = 100


class Subscription:
    """
    One watcher's subscription to one presentity: an RFC 6665 dialog usage.

    @ivar cseq: the CSeq of the last NOTIFY sent.
    @ivar cseqCeiling: the CSeq the store guarantees we have not reached.
    @ivar remoteCSeq: the CSeq of the last SUBSCRIBE accepted.
    @ivar lastNotify: when the last NOTIFY was sent (clock seconds).
    @ivar inFlight: a NOTIFY awaits its final response; RFC 6665 §4.2.2
        forbids sending another until then.
    @ivar dirty: the state changed while a NOTIFY was in flight or rate
        control held one back; the latest state goes out next.
    @ivar timer: the delayed call of a held-back NOTIFY, if any.
    @ivar timeouts: NOTIFYs in a row that timed out.
    @ivar terminated: the subscription has ended; only its final NOTIFY may
        still go out.
    @ivar final: the reason of a final NOTIFY still to send, or L{None}.
    @ivar changedAt: when the oldest publication change not yet sent to
        this watcher was published (clock seconds), or L{None}: its next
        NOTIFY measures the PUBLISH-to-NOTIFY latency.
    @ivar event: the event package (C{"presence"}, ...).
    @ivar packageState: what the event package keeps per subscription
        (L{presence.interfaces.IEventPackage.render}), stored with it so
        that it survives a restart and an adoption; C{""} for none.
    """

    __slots__ = (
        "id", "callId", "localTag", "remoteTag", "eventId", "watcher", "presentity",
        "remoteTarget", "routeSet", "target", "expiresAt", "state", "cseq", "cseqCeiling",
        "remoteCSeq", "createdAt", "lastNotify", "inFlight", "dirty", "timer", "timeouts",
        "terminated", "final", "changedAt", "event", "packageState",
    )

    def __init__(
        self,
        id: str,
        callId: str,
        localTag: str,
        remoteTag: str,
        eventId: str,
        watcher: str,
        presentity: str,
        remoteTarget: str,
        routeSet: Tuple[str, ...],
        target: Target,
        expiresAt: float,
        createdAt: float,
        remoteCSeq: int,
        state: str = "active",
        cseq: int = 0,
        cseqCeiling: int = CSEQ_BLOCK,
        event: str = "presence",
        packageState: str = "",
    ) -> None:
        self.id = id
        self.callId = callId
        self.localTag = localTag
        self.remoteTag = remoteTag
        self.eventId = eventId
        self.watcher = watcher
        self.presentity = presentity
        self.remoteTarget = remoteTarget
        self.routeSet = routeSet
        self.target = target
        self.expiresAt = expiresAt
        self.createdAt = createdAt
        self.remoteCSeq = remoteCSeq
        self.state = state
        self.cseq = cseq
        self.cseqCeiling = cseqCeiling
        self.lastNotify = -1e18
        self.inFlight = False
        self.dirty = False
        self.timer: Optional[object] = None
        self.timeouts = 0
        self.terminated = False
        self.final: Optional[str] = None
        self.changedAt: Optional[float] = None
        self.event = event
        self.packageState = packageState

    @property
    def dialogKey(self) -> DialogKey:
        return (self.callId, self.localTag, self.remoteTag, self.eventId)

    def toRecord(self, owner: str, accept: str) -> SubscriptionRecord:
        """
        The store record; its C{localCSeq} is the CSeq ceiling.

        @param accept: the content type of its NOTIFY bodies (its
            package's).
        """
        return SubscriptionRecord(
            id=self.id,
            callId=self.callId,
            localTag=self.localTag,
            remoteTag=self.remoteTag,
            watcher=self.watcher,
            presentity=self.presentity,
            event=self.event,
            accept=accept,
            remoteTarget=self.remoteTarget,
            expiresAt=self.expiresAt,
            state=self.state,
            owner=owner,
            transport=self.target.transport,
            peerHost=self.target.host,
            peerPort=self.target.port,
            createdAt=self.createdAt,
            routeSet=self.routeSet,
            eventId=self.eventId,
            localCSeq=self.cseqCeiling,
            remoteCSeq=self.remoteCSeq,
            flowToken=self.target.flow or "",
            packageState=self.packageState,
        )

    @classmethod
    def fromRecord(cls, record: SubscriptionRecord) -> Subscription:
        """
        Rebuild from the store after a restart: NOTIFYs continue from the
        stored ceiling, above any CSeq sent before.
        """
        return cls(
            id=record.id,
            callId=record.callId,
            localTag=record.localTag,
            remoteTag=record.remoteTag,
            eventId=record.eventId,
            watcher=record.watcher,
            presentity=record.presentity,
            remoteTarget=record.remoteTarget,
            routeSet=record.routeSet,
            target=Target(record.transport, record.peerHost, record.peerPort, record.flowToken or None),
            expiresAt=record.expiresAt,
            createdAt=record.createdAt,
            remoteCSeq=record.remoteCSeq,
            state=record.state,
            cseq=record.localCSeq,
            cseqCeiling=record.localCSeq,
            event=record.event,
            packageState=record.packageState,
        )


class Publication:
    """
    One live publication (RFC 3903 event state) of a resource in one
    event package.

    @ivar document: the body as its package parsed it (opaque here).
    @ivar event: the event package.
    @ivar contentType: the body's content type.
    @ivar origin: in a cluster, the manager that accepted it when another
        one did (replicated to us, L{presence.cluster}); C{""} when this
        manager accepted it or loaded it from the store.
    """

    __slots__ = (
        "etag", "presentity", "body", "document", "expiresAt", "modifiedAt", "version", "origin",
        "event", "contentType",
    )

    def __init__(
        self,
        etag: str,
        presentity: str,
        body: bytes,
        document: Any,
        expiresAt: float,
        modifiedAt: float,
        version: int,
        origin: str = "",
        event: str = "presence",
        contentType: str = "application/pidf+xml",
    ) -> None:
        self.etag = etag
        self.presentity = presentity
        self.body = body
        self.document = document
        self.expiresAt = expiresAt
        self.modifiedAt = modifiedAt
        self.version = version
        self.origin = origin
        self.event = event
        self.contentType = contentType

    def toRecord(self) -> PublicationRecord:
        return PublicationRecord(
            etag=self.etag,
            presentity=self.presentity,
            event=self.event,
            contentType=self.contentType,
            body=self.body,
            expiresAt=self.expiresAt,
            modifiedAt=self.modifiedAt,
            version=self.version,
        )


class Presentity:
    """
    A resource's live publications in one event package, its watchers,
    and the composed document they see (for the presence package: a
    presentity).

    @ivar publications: entity-tag to publication.
    @ivar document: the composed document, as sent in NOTIFYs, or L{None}
        when it is the package's state of a resource with neither
        publication nor registration, or not composed yet.
    @ivar version: bumped by every change of publications.
    @ivar registered: the contact of the presentity's preferred live
        registration binding, or L{None} when it has none: without a
        publication, presence derived from registration is open while a
        binding lives (DESIGN.md, composition policy).
    """

    __slots__ = ("aor", "publications", "_watchers", "document", "version", "registered")

    def __init__(self, aor: str) -> None:
        self.aor = aor
        self.publications: Dict[str, Publication] = {}
        # None, the one watcher's subscription id, or a set of two or
        # more: most presentities have one watcher, and a set of one cost
        # a tenth of a subscription's memory.
        self._watchers: Union[None, str, Set[str]] = None
        self.document: Optional[bytes] = None
        self.version = 0
        self.registered: Optional[str] = None

    def compose(self, package: Any) -> bytes:
        """
        Recompose from the live publications, newest first, with
        C{package} (the L{presence.interfaces.IEventPackage} of this
        resource).  Ties on C{modifiedAt} go to the later write (higher
        version), then to the entity-tag, so the result never depends on
        dict order nor on the random entity-tag a re-publication gets.

        Without a publication the package says what the resource's state
        is (L{presence.interfaces.IEventPackage.withoutState}: for
        presence, open while a registration binding lives, else closed).

        @return: the composed document, also kept in L{document} unless
            the resource has neither publication nor registration.
        """
        if not self.publications:
            document = package.withoutState(self.aor, self.registered)
            # With nothing published nor registered the state is a
            # function of the AOR alone, composed again when asked rather
            # than kept (in a large deployment most watched presentities
            # are offline; keeping it cost a fifth of a subscription's
            # memory).
            self.document = None if self.registered is None else document
            return document
        live: List[Publication] = sorted(
            self.publications.values(), key=lambda p: (-p.modifiedAt, -p.version, p.etag)
        )
        self.document = package.compose(self.aor, [p.document for p in live])
        return self.document

    @property
    def watchers(self) -> Collection[str]:
        """
        The ids of the subscriptions to this presentity (read-only: see
        L{addWatcher} and L{removeWatcher}).
        """
        watchers = self._watchers
        if watchers is None:
            return ()
        if type(watchers) is str:
            return (watchers,)
        return watchers

    def addWatcher(self, subscriptionId: str) -> None:
        watchers = self._watchers
        if watchers is None:
            self._watchers = subscriptionId
        elif type(watchers) is str:
            if watchers != subscriptionId:
                self._watchers = {watchers, subscriptionId}
        else:
            watchers.add(subscriptionId)  # type: ignore[union-attr]

    def removeWatcher(self, subscriptionId: str) -> None:
        watchers = self._watchers
        if watchers is None:
            return
        if type(watchers) is str:
            if watchers == subscriptionId:
                self._watchers = None
            return
        watchers.discard(subscriptionId)  # type: ignore[union-attr]
        if len(watchers) == 1:
            (self._watchers,) = watchers
        elif not watchers:
            self._watchers = None

    def idle(self) -> bool:
        """
        Whether nothing refers to this presentity any more.
        """
        return not self.publications and self._watchers is None
