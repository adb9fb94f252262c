"""
What a manager holds in memory: subscriptions (dialogs with a watcher),
publications, and per presentity its live publications, its watchers and
its composed document.

Memory is the serving copy; the store holds the truth.  These objects are
mutable (a NOTIFY bumps a CSeq, a refresh moves an expiry) and convert to
and from the store's immutable records.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from presence.pidf import PidfDocument, composePidf, openDocument
from presence.sip.target import Target
from presence.store.records import PublicationRecord, SubscriptionRecord

DialogKey = Tuple[str, str, str, str]
"""
(Call-ID, our tag, their tag, Event id): what identifies a subscription
(RFC 6665 §4.1.2.1 and §8.2.1).
"""

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
    """

    __slots__ = (
        "id", "callId", "localTag", "remoteTag", "eventId", "watcher", "presentity",
        "remoteTarget", "routeSet", "target", "expiresAt", "state", "cseq", "cseqCeiling",
        "remoteCSeq", "createdAt", "lastNotify", "inFlight", "dirty", "timer", "timeouts",
        "terminated", "final",
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

    @property
    def dialogKey(self) -> DialogKey:
        return (self.callId, self.localTag, self.remoteTag, self.eventId)

    def toRecord(self, owner: str) -> SubscriptionRecord:
        """
        The store record; its C{localCSeq} is the CSeq ceiling.
        """
        return SubscriptionRecord(
            id=self.id,
            callId=self.callId,
            localTag=self.localTag,
            remoteTag=self.remoteTag,
            watcher=self.watcher,
            presentity=self.presentity,
            event="presence",
            accept="application/pidf+xml",
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
        )


class Publication:
    """
    One live publication (RFC 3903 event state) of a presentity.

    @ivar origin: in a cluster, the manager that accepted it when another
        one did (replicated to us, L{presence.cluster}); C{""} when this
        manager accepted it or loaded it from the store.
    """

    __slots__ = ("etag", "presentity", "body", "document", "expiresAt", "modifiedAt", "version", "origin")

    def __init__(
        self,
        etag: str,
        presentity: str,
        body: bytes,
        document: PidfDocument,
        expiresAt: float,
        modifiedAt: float,
        version: int,
        origin: str = "",
    ) -> None:
        self.etag = etag
        self.presentity = presentity
        self.body = body
        self.document = document
        self.expiresAt = expiresAt
        self.modifiedAt = modifiedAt
        self.version = version
        self.origin = origin

    def toRecord(self) -> PublicationRecord:
        return PublicationRecord(
            etag=self.etag,
            presentity=self.presentity,
            contentType="application/pidf+xml",
            body=self.body,
            expiresAt=self.expiresAt,
            modifiedAt=self.modifiedAt,
            version=self.version,
        )


class Presentity:
    """
    A presentity's live publications, its watchers, and the composed
    document they see.

    @ivar publications: entity-tag to publication.
    @ivar watchers: the ids of the subscriptions to this presentity.
    @ivar document: the composed PIDF document, as sent in NOTIFYs, or
        L{None} when it is the plain closed one or not composed yet.
    @ivar version: bumped by every change of publications.
    @ivar registered: the contact of the presentity's preferred live
        registration binding, or L{None} when it has none: without a
        publication, presence derived from registration is open while a
        binding lives (DESIGN.md, composition policy).
    """

    __slots__ = ("aor", "publications", "watchers", "document", "version", "registered")

    def __init__(self, aor: str) -> None:
        self.aor = aor
        self.publications: Dict[str, Publication] = {}
        self.watchers: Set[str] = set()
        self.document: Optional[bytes] = None
        self.version = 0
        self.registered: Optional[str] = None

    def compose(self) -> bytes:
        """
        Recompose from the live publications, newest first.  Ties on
        C{modifiedAt} go to the later write (higher version), then to the
        entity-tag, so the result never depends on dict order nor on the
        random entity-tag a re-publication gets.

        Without a publication, a live registration binding makes the
        presentity open (with the binding's contact), no binding closed.

        @return: the composed document, also kept in L{document} unless
            it is the plain closed one.
        """
        if not self.publications:
            if self.registered is not None:
                self.document = openDocument(self.aor, contact=self.registered)
                return self.document
            # Closed with nothing published: a function of the AOR alone,
            # composed again when asked rather than kept (in a large
            # deployment most watched presentities are offline; keeping
            # it cost a fifth of a subscription's memory).
            self.document = None
            return composePidf(self.aor, [])
        live: List[Publication] = sorted(
            self.publications.values(), key=lambda p: (-p.modifiedAt, -p.version, p.etag)
        )
        self.document = composePidf(self.aor, [p.document for p in live])
        return self.document

    def idle(self) -> bool:
        """
        Whether nothing refers to this presentity any more.
        """
        return not self.publications and not self.watchers
