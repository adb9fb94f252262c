"""
What managers send each other over Perspective Broker: publication
updates, as one registered C{Copyable} value type.

Only this class and PB's basic types cross the wire.  Its state is an
explicit dictionary (L{PublicationUpdate.getStateToCopy}), and the
receiving side checks every field's type and size before the object
exists (L{PublicationUpdate.setCopyableState}): a peer is authenticated,
but nothing it sends may crash a manager.

Sizes: Banana, PB's encoding, refuses any string over 640 KiB and any
list over 640 K items, and a big call stalls both ends while it is
encoded.  Bodies are bounded by the SIP message limit (C{[sip]
max_body_size}, 60,000 bytes by default); batches of updates and resync
pages are cut at L{MAX_BATCH} updates or L{MAX_BATCH_BYTES} bytes of
bodies, whichever comes first (L{batches}).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List

from twisted.spread import pb

#: Most updates in one call (a live batch or a resync page).
MAX_BATCH = 1000

#: Bytes of bodies after which a batch or page is cut (one update always
#: goes, so the bound on one call is this plus one body).
MAX_BATCH_BYTES = 256 * 1024

#: The largest body that can cross PB at all (Banana's string limit, less
#: room for the rest of the call).
MAX_BODY = 600 * 1024

_MAX_TEXT = 2048

#: What an update without package fields is: a presence publication.
PRESENCE = "presence"
PIDF = "application/pidf+xml"


class PublicationUpdate(pb.Copyable, pb.RemoteCopy):
    """
    One change of one publication, as its origin made it.

    Entity-tags are never reused: every modification or refresh of a
    publication mints a new one (RFC 3903 §4.1), so an entity-tag is
    written once and removed once.  An update either creates one
    (C{removed} false: the whole publication, and C{replaces}, the
    entity-tag it supersedes, if any) or removes one (C{removed} true).

    @ivar presentity: the AOR.
    @ivar etag: the entity-tag.
    @ivar body: the body as published (empty for a removal).
    @ivar expiresAt: the publication's expiry, epoch seconds (for a
        removal: the removed publication's, which bounds how long the
        removal must be remembered).
    @ivar modifiedAt: when its state was last published with a body.
    @ivar version: the presentity's version when it was written: a Lamport
        clock per presentity (see L{presence.cluster.group}).
    @ivar origin: the node that accepted the PUBLISH.
    @ivar removed: whether this is a removal.
    @ivar replaces: the entity-tag this publication supersedes, or C{""}.
    @ivar event: the event package it was published in.
    @ivar contentType: its body's content type.

    A presence publication's state leaves out the last two, as managers
    from before event packages send it and expect it: a cluster upgraded
    one manager at a time goes on replicating presence.
    """

    def __init__(
        self,
        presentity: str = "",
        etag: str = "",
        body: bytes = b"",
        expiresAt: float = 0.0,
        modifiedAt: float = 0.0,
        version: int = 0,
        origin: str = "",
        removed: bool = False,
        replaces: str = "",
        event: str = PRESENCE,
        contentType: str = PIDF,
    ) -> None:
        self.presentity = presentity
        self.etag = etag
        self.body = body
        self.expiresAt = expiresAt
        self.modifiedAt = modifiedAt
        self.version = version
        self.origin = origin
        self.removed = removed
        self.replaces = replaces
        self.event = event
        self.contentType = contentType

    def getStateToCopy(self) -> Dict[str, Any]:
        """
        The fields, and nothing else, as PB sends them.
        """
        state = {
            "presentity": self.presentity,
            "etag": self.etag,
            "body": self.body,
            "expiresAt": float(self.expiresAt),
            "modifiedAt": float(self.modifiedAt),
            "version": int(self.version),
            "origin": self.origin,
            "removed": bool(self.removed),
            "replaces": self.replaces,
        }
        if self.event != PRESENCE or self.contentType != PIDF:
            state["event"] = self.event
            state["contentType"] = self.contentType
        return state

    def setCopyableState(self, state: Any) -> None:
        """
        Take a peer's state only if every field has the right type and a
        sane size.

        @raise ValueError: anything else (PB then fails the peer's call;
            the connection and this process carry on).
        """
        if not isinstance(state, dict) or set(state) not in (_FIELDS, _PACKAGE_FIELDS):
            raise ValueError("malformed PublicationUpdate")
        for name in ("presentity", "etag", "origin", "replaces", "event", "contentType"):
            value = state.get(name, "")
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise ValueError("PublicationUpdate.%s must be a short string" % (name,))
        if not state["etag"] or not state["presentity"] or state.get("event") == "":
            raise ValueError("PublicationUpdate needs an etag, a presentity and an event package")
        body = state["body"]
        if not isinstance(body, bytes) or len(body) > MAX_BODY:
            raise ValueError("PublicationUpdate.body must be bytes of at most %d" % (MAX_BODY,))
        for name in ("expiresAt", "modifiedAt"):
            value = state[name]
            if type(value) not in (int, float) or value != value or abs(value) > 1e11:
                raise ValueError("PublicationUpdate.%s must be a time" % (name,))
        version = state["version"]
        if type(version) is not int or not 0 <= version < 2 ** 62:
            raise ValueError("PublicationUpdate.version must be a non-negative integer")
        if type(state["removed"]) is not bool:
            raise ValueError("PublicationUpdate.removed must be a boolean")
        self.__init__(**state)  # type: ignore[misc]

    def weight(self) -> int:
        """
        Its share of a batch's byte budget.
        """
        return len(self.body) + 200

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicationUpdate):
            return NotImplemented
        return self.getStateToCopy() == other.getStateToCopy()

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "removed" if self.removed else "v%d" % (self.version,)
        return "<PublicationUpdate %s %s %s from %s>" % (self.presentity, self.etag, kind, self.origin)


_FIELDS = frozenset(PublicationUpdate().getStateToCopy())
_PACKAGE_FIELDS = _FIELDS | {"event", "contentType"}

pb.setUnjellyableForClass(PublicationUpdate, PublicationUpdate)


def batches(
    updates: Iterable[PublicationUpdate], limit: int = MAX_BATCH, maxBytes: int = MAX_BATCH_BYTES
) -> Iterator[List[PublicationUpdate]]:
    """
    Cut C{updates} into lists of at most C{limit} updates and about
    C{maxBytes} bytes each (never empty; an update bigger than C{maxBytes}
    travels alone).
    """
    batch: List[PublicationUpdate] = []
    size = 0
    for update in updates:
        weight = update.weight()
        if batch and (len(batch) >= limit or size + weight > maxBytes):
            yield batch
            batch, size = [], 0
        batch.append(update)
        size += weight
    if batch:
        yield batch


def checkUpdates(updates: Any) -> List[PublicationUpdate]:
    """
    What a peer sent as a batch, checked: a list of at most L{MAX_BATCH}
    L{PublicationUpdate}.

    @raise ValueError: anything else.
    """
    if not isinstance(updates, list) or len(updates) > MAX_BATCH:
        raise ValueError("expected a list of at most %d updates" % (MAX_BATCH,))
    for update in updates:
        if not isinstance(update, PublicationUpdate):
            raise ValueError("expected PublicationUpdate, got %s" % (type(update).__name__,))
    return updates
