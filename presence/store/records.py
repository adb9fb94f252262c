"""
Plain value records exchanged with the store.

Only these immutable objects cross the store boundary: a caller never sees a
SQLAlchemy C{Row} or C{Result}, which are tied to a connection living on a
database thread.  Being frozen, a record can be shared between the manager's
in-memory indexes and a queued write without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Iterable, Optional, Tuple

#: The states of an RFC 6665 subscription as persisted.
SUBSCRIPTION_STATES = frozenset(["active", "pending", "terminated"])


def _routeTuple(routeSet: Iterable[str]) -> Tuple[str, ...]:
    """
    Normalise a route set to a tuple of strings, refusing a bare string
    (which would otherwise be split into one "URI" per character).
    """
    if isinstance(routeSet, (str, bytes)):
        raise TypeError("routeSet must be a sequence of URI strings, not a string")
    result = tuple(routeSet)
    for uri in result:
        if not isinstance(uri, str):
            raise TypeError("routeSet entries must be str, got %r" % (type(uri),))
    return result


@dataclass(frozen=True)
class SubscriptionRecord:
    """
    One persisted subscription (RFC 6665 dialog usage, RFC 3856 event package).

    Everything the manager needs to rebuild the dialog and reach the watcher
    again after a restart: the dialog identifiers, both CSeq counters, the
    remote target and route set, and the transport information of the flow
    the SUBSCRIBE arrived on.

    @ivar id: unique identifier chosen by the manager.
    @ivar callId: the dialog Call-ID.
    @ivar localTag: our tag (the To-tag we gave in the 2xx).
    @ivar remoteTag: the subscriber's From-tag.
    @ivar watcher: the watcher's address of record.
    @ivar presentity: the watched address of record.
    @ivar event: the event package, e.g. C{"presence"}.
    @ivar accept: the content type NOTIFY bodies are rendered in.
    @ivar remoteTarget: the watcher's Contact URI (request URI of NOTIFYs).
    @ivar expiresAt: absolute expiry, epoch seconds.
    @ivar state: one of C{"active"}, C{"pending"}, C{"terminated"}.
    @ivar owner: the name of the manager node serving this subscription.
    @ivar transport: transport name of the watcher's flow (C{"udp"}, C{"tcp"}...).
    @ivar peerHost: the host the SUBSCRIBE came from.
    @ivar peerPort: the port the SUBSCRIBE came from.
    @ivar createdAt: creation time, epoch seconds.
    @ivar routeSet: the dialog route set, in order.
    @ivar eventId: the C{id} parameter of the Event header (RFC 6665 section
        8.2.1); part of the subscription's identity inside its dialog.
    @ivar localCSeq: the CSeq of the last NOTIFY we sent.
    @ivar remoteCSeq: the CSeq of the last SUBSCRIBE we accepted.
    @ivar flowToken: opaque token naming the connection-oriented flow
        (RFC 5626 style) the dispatcher should reuse; empty if none.
    @ivar packageState: what the event package keeps per subscription
        (L{presence.interfaces.IEventPackage.render}, e.g. the version
        counter of the dialog package), opaque to the store; empty if none.
    """

    id: str
    callId: str
    localTag: str
    remoteTag: str
    watcher: str
    presentity: str
    event: str
    accept: str
    remoteTarget: str
    expiresAt: float
    state: str
    owner: str
    transport: str
    peerHost: str
    peerPort: int
    createdAt: float
    routeSet: Tuple[str, ...] = ()
    eventId: str = ""
    localCSeq: int = 0
    remoteCSeq: int = 0
    flowToken: str = ""
    packageState: str = ""

    def __post_init__(self) -> None:
        """
        Validate the state and freeze the route set into a tuple, so records
        compare equal whatever sequence type the caller used.
        """
        if self.state not in SUBSCRIPTION_STATES:
            raise ValueError("invalid subscription state %r" % (self.state,))
        if type(self.routeSet) is not tuple:
            object.__setattr__(self, "routeSet", _routeTuple(self.routeSet))


@dataclass(frozen=True)
class PublicationRecord:
    """
    One persisted publication (RFC 3903 event state, identified by its entity-tag).

    @ivar etag: the entity-tag we assigned; unique.
    @ivar presentity: the address of record the state belongs to.
    @ivar event: the event package the state is published in.
    @ivar contentType: the body's content type, e.g. C{application/pidf+xml}.
    @ivar body: the published document, as received (bytes).
    @ivar expiresAt: absolute expiry, epoch seconds.
    @ivar modifiedAt: when this publication was last created or refreshed
        with a body, epoch seconds (composition orders by it: newest first).
    @ivar version: the presentity's state version when this publication was
        written; a per-presentity counter maintained by the manager.
    """

    etag: str
    presentity: str
    contentType: str
    body: bytes
    expiresAt: float
    modifiedAt: float
    version: int = 0
    event: str = "presence"

    def __post_init__(self) -> None:
        """
        Refuse a text body: bodies are stored and compared as bytes.
        """
        if not isinstance(self.body, bytes):
            raise TypeError("body must be bytes, got %r" % (type(self.body),))


@dataclass(frozen=True)
class BindingRecord:
    """
    One persisted registration binding (RFC 3261 section 10.3): an AOR
    reachable at a contact until C{expiresAt}.

    @ivar id: the binding's identifier, derived from the AOR and the
        binding's key (see L{presence.registrar.binding.bindingId}), so
        that two writes of the same binding replace one row.
    @ivar aor: the canonical address of record.
    @ivar contact: the Contact URI as registered (without brackets).
    @ivar instance: the C{+sip.instance} value (RFC 5626, RFC 5627),
        unquoted, or empty.
    @ivar regId: the C{reg-id} (RFC 5626), or 0 for none.
    @ivar q: the C{q} preference (0 to 1), or L{None} when not given.
    @ivar expiresAt: absolute expiry, epoch seconds.
    @ivar registeredAt: when the binding was last registered or refreshed.
    @ivar callId: the Call-ID of the REGISTER that wrote it.
    @ivar cseq: the CSeq number of that REGISTER.
    @ivar owner: the manager node that holds the binding in memory.
    @ivar transport: the transport the REGISTER came over (C{"UDP"}, ...).
    @ivar peerHost: the address the REGISTER came from (C{received}).
    @ivar peerPort: the port it came from (C{rport}).
    @ivar flowToken: the TCP, TLS or WebSocket connection it came over,
        whose closing ends the binding: a token of this process, or
        C{boot.token} naming a dispatcher's connection (from its Path);
        empty for UDP or a REGISTER relayed by another proxy.
    """

    id: str
    aor: str
    contact: str
    expiresAt: float
    registeredAt: float
    callId: str
    cseq: int
    owner: str
    transport: str
    peerHost: str
    peerPort: int
    flowToken: str = ""
    instance: str = ""
    regId: int = 0
    q: Optional[float] = None


@dataclass(frozen=True)
class LeaseRecord:
    """
    One manager's lease (L{presence.cluster.lease}).

    @ivar node: the manager's node name.
    @ivar expiresAt: when the lease ends unless renewed, epoch seconds on
        the database's clock (see L{presence.interfaces.ILeaseStore}).
    @ivar epoch: bumped each time the manager registers and each time a
        survivor fences it; a renewal names the epoch it holds.
    """

    node: str
    expiresAt: float
    epoch: int


#: Record field names, in declaration order.
SUBSCRIPTION_FIELDS = tuple(f.name for f in fields(SubscriptionRecord))
PUBLICATION_FIELDS = tuple(f.name for f in fields(PublicationRecord))
BINDING_FIELDS = tuple(f.name for f in fields(BindingRecord))

_UPDATABLE = frozenset(SUBSCRIPTION_FIELDS) - {"id"}


def checkSubscriptionChanges(changes: Dict[str, Any]) -> Dict[str, Any]:
    """
    Validate the keyword arguments of C{updateSubscription}.

    Shared by every store implementation so they refuse exactly the same
    things.

    @param changes: record field names (camelCase) mapped to new values.
    @return: a normalised copy (route set as a tuple).
    @raise ValueError: no change, an unknown field, C{id}, or a bad state.
    @raise TypeError: a malformed route set.
    """
    if not changes:
        raise ValueError("updateSubscription needs at least one field")
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError("cannot update subscription field(s): %s" % (", ".join(sorted(unknown)),))
    result = dict(changes)
    if "state" in result and result["state"] not in SUBSCRIPTION_STATES:
        raise ValueError("invalid subscription state %r" % (result["state"],))
    if "routeSet" in result:
        result["routeSet"] = _routeTuple(result["routeSet"])
    return result
