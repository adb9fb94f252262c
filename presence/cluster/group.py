"""
The cluster logic of one manager: replicate publications to every peer,
merge what peers send, resynchronise from a peer that (re)appears, and
adopt the subscriptions of a peer that died.  Sans-IO: peers are
L{IPeer} providers (over PB in production, L{LocalPeer} in tests), time is
an injected clock.

Replication and ordering
========================

An entity-tag names one immutable publication: every modification or
refresh mints a new entity-tag (RFC 3903 §4.1) and removes the old one.
So an entity-tag is created once and removed once, and the replicated
state of a presentity is a set of entity-tags with add-once, remove-once
semantics (a two-phase set).  A removal is remembered as a I{tombstone}
until the removed publication would have expired; after that a late
creation of it is refused anyway, being expired.  Merging is then
commutative and idempotent:

  - a creation is applied unless the entity-tag is known, tombstoned or
    expired;
  - a removal is applied if the entity-tag is live, and tombstones it in
    any case;
  - a creation that C{replaces} an older entity-tag removes it in the
    same step, so watchers never see both or neither.

Hence a late, duplicated or reordered message (updates travel over one
connection per direction, resync pages over another) never regresses
state, and there is no need for a version vector.  The C{version} each
update carries is the presentity's Lamport clock: a node publishing takes
one more than the highest version it has seen for that presentity,
receivers raise their own counter to what they receive.  With the
publication's C{modifiedAt} and its entity-tag it gives composition a
total order that every node computes alike, so all managers compose
byte-identical documents from the same publications, and each notifies
its own watchers only when the bytes change.

Resynchronisation
=================

Whenever a link to a peer comes up, this node pulls the peer's whole
state (live publications and tombstones) in pages of C{pageSize}
updates, cut at L{messages.MAX_BATCH_BYTES} bytes, and merges it as
above; a peer that logs in to us is pulled from as well, so that each
side catches up with what it missed while the link was down.  A node
that starts has first loaded the store (L{SubscriptionManager.load}) and
queued one paced NOTIFY with the current state for each of its active
watchers, sent once its lease is held; what a resync changes before a
watcher's turn comes goes into that same NOTIFY, not a second one.

Adoption
========

Subscriptions belong to one manager (the C{owner} column), which alone
sends their NOTIFYs.  When a peer's link has been down for C{adoptAfter}
seconds (or was never up since we started), and this node reaches a
quorum of the cluster (a strict majority by default, itself included: a
manager cut off from the others must not take the subscriptions they
still serve), and the peer's lease has expired (see "Fencing" below), it
moves all the peer's subscriptions to itself in one statement
(L{ILeaseStore.fenceAndAdopt}: of two survivors trying at once, each row
goes to one), loads them (NOTIFY CSeqs continue above the
stored ceiling) and sends each active watcher the current state, which
it may have missed while its manager was dead, paced at C{[cluster]
adopt_notify_rate} NOTIFYs per second (L{Notifier.pace
<presence.manager.notifier.Notifier.pace>}).  It then tells every
peer, and the former owner when it comes back, which drops whatever it
still held of them.

Fencing
=======

PB links tell whether two managers can talk, not whether one is alive: a
manager cut off from its peers may still reach the database and the
dispatcher, and serve its watchers.  So liveness is also kept in the
database itself, as a lease per manager (L{presence.cluster.lease},
table C{manager_leases}), when C{leaseTime} is set (C{[cluster]
lease_time}; L{presence.cluster.service.ClusterService} always sets it):

  - each manager renews its lease every C{leaseInterval} seconds for
    C{leaseTime} seconds, through the store's writer.  It starts fenced
    (NOTIFYs held back, L{presence.manager.notifier.Notifier.fence})
    until its first registration (a new epoch) is done and it has
    dropped whatever the store no longer says is its own;
  - a survivor adopts a peer only if, in the same transaction, the
    peer's lease has expired by the database's clock: it bumps the
    peer's epoch and moves the subscriptions
    (L{ILeaseStore.fenceAndAdopt}).  A peer whose lease is live is alive,
    links or not, and keeps its watchers: adoption is tried again once
    the lease would have run out.  A peer without a lease row (it never
    ran with leases) is adopted as before.  The quorum rule still
    applies on top, and a manager whose own lease is not safe adopts
    nothing;
  - a manager that has not completed a renewal for C{leaseTime -
    leaseInterval} seconds (counted from when the last good one was
    issued) holds its NOTIFYs back: no survivor may have adopted yet,
    since the stored expiry is later still.  It resumes, sending each
    held subscription its current state once, when a renewal with its
    epoch succeeds again.  If a renewal finds its epoch changed (it was
    fenced and adopted), it drops every subscription the store gives to
    someone else (the same path as the C{adopted} message of a peer),
    with the final NOTIFYs it held for them, registers a new epoch and
    resumes.

Clocks: on PostgreSQL every lease time is read from the server's
C{clock_timestamp()}, so the managers' clocks may disagree; the local
clock only measures durations (renewal issued, deadline), so it need
only run at the right rate.  SQLite is one host's file, whose clock all
its processes share.

What this still does not fence: a NOTIFY already in flight when a
manager fences itself (its retransmissions go on); a margin of one
C{leaseInterval} separates the last NOTIFY a fenced manager sends from
the earliest adoption, so a NOTIFY queued longer than that in the
dispatcher or the network may still arrive after the adopter's first.
A database that loses the lease table's writes (asynchronous replica
promoted) loses the fencing with them.  A manager whose process is
frozen (SIGSTOP, a long GC pause) for more than the margin between a
check and a send may send one NOTIFY late.  A subscription a fenced
manager ends on its own (expiry) is still deleted from the store by it.
A manager whose lease is live but whose links are down keeps its
watchers without the publications the other managers accept (they are
not replicated to it) until its links come back and it resynchronises:
stale but never duplicated.  An in-dialog request for its dialogs that
the dispatcher sends to another manager meanwhile is not adopted there
(481: the watcher subscribes again, on a manager that reaches it).

An in-dialog request for a dialog this node does not hold (the
dispatcher sends a dead owner's dialogs to any live manager, and a
restarted owner gets back dialogs that were adopted meanwhile) is looked
up in the store: a dead owner's subscriptions are adopted at once (once
its lease has expired), a live peer hands the subscription over
(L{IPeer.handOver}), and the request is served here.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.cluster.lease import ManagerLease
from presence.cluster.messages import MAX_BATCH_BYTES, PublicationUpdate, batches, checkUpdates
from presence.interfaces import IClusterMember, IPeer, IPeerGroup
from presence.manager.expiry import ExpiryWheel
from presence.manager.state import Publication
from presence.sip.headers import HeaderError
from presence.sip.uri import URIError, normaliseAOR

#: Seconds a tombstone outlives its publication's expiry: room for clock
#: differences between the nodes.
TOMBSTONE_SLACK = 60.0

#: Most updates per page a peer may ask for.
MAX_PAGE = 1000

#: Most subscriptions one takeOver call may carry.
MAX_TAKE_OVER = 1000

#: Seconds after a peer's live lease would run out before adoption is
#: tried again.
LEASE_RETRY_SLACK = 0.25


def updateOf(pub: Publication, origin: str, replaces: str = "") -> PublicationUpdate:
    """
    The update announcing C{pub}.
    """
    return PublicationUpdate(
        pub.presentity, pub.etag, pub.body, pub.expiresAt, pub.modifiedAt, pub.version,
        origin, False, replaces, pub.event, pub.contentType,
    )


def removalOf(presentity: str, etag: str, expiresAt: float, origin: str) -> PublicationUpdate:
    """
    The update announcing that C{etag} is gone.
    """
    return PublicationUpdate(presentity, etag, b"", expiresAt, 0.0, 0, origin, True, "")


@implementer(IPeerGroup)
class PeerGroup:
    """
    This node's view of the cluster.

    @ivar node: this manager's name (the C{owner} of its subscriptions,
        and the C{m} of the dispatcher's routes).
    @ivar peerNames: every other manager's name.
    @ivar peers: the peers whose link is up, name to L{IPeer}.
    @ivar tombstones: entity-tag to the removal update, while remembered.
    @ivar manager: the manager, an L{IClusterMember}, once attached.
    @ivar counters: what it did, for the admin console and metrics.
    """

    log = Logger()

    def __init__(
        self,
        node: str,
        peerNames: Iterable[str],
        clock: Any,
        adoptAfter: float = 10.0,
        pageSize: int = 200,
        quorum: int = 0,
        leaseTime: float = 0.0,
        leaseInterval: float = 1.0,
    ) -> None:
        """
        @param quorum: how many managers, this one included, must be
            reachable for this one to adopt a peer on its own initiative
            (0: a strict majority of the cluster).  A manager cut off from
            the others must not take their subscriptions while they still
            serve them; a two-manager cluster that wants adoption at all
            has to accept that risk with C{quorum = 1}.
        @param leaseTime: seconds each renewal of this manager's lease
            runs (see "Fencing" above); 0 runs without a lease (tests of
            other parts only: nothing is fenced).
        @param leaseInterval: seconds between renewals.
        """
        self.node = node
        self.peerNames = frozenset(peerNames) - {node}
        self.clock = clock
        self.adoptAfter = adoptAfter
        self.pageSize = min(pageSize, MAX_PAGE)
        self.quorum = quorum or (len(self.peerNames) + 1) // 2 + 1
        if leaseTime and not leaseTime > 2 * leaseInterval > 0:
            raise ValueError("leaseTime must be more than twice leaseInterval")
        self.leaseTime = leaseTime
        self.leaseInterval = leaseInterval
        self.lease: Optional[ManagerLease] = None
        self.pageBytes = MAX_BATCH_BYTES
        self.manager: Optional[IClusterMember] = None
        self.store: Any = None
        self.peers: Dict[str, Any] = {}
        self.tombstones: Dict[str, PublicationUpdate] = {}
        self._graveyard = ExpiryWheel(clock, self._forget, self._tombstoneDeadline, resolution=5.0)
        self._outbox: List[PublicationUpdate] = []
        self._flushCall: Any = None
        self._adoptTimers: Dict[str, Any] = {}
        self._adopting: Dict[str, Deferred] = {}
        self._adoptedFrom: Set[str] = set()
        self._leaseLive: Set[str] = set()
        self._resyncing: Dict[str, bool] = {}
        self._syncWaiters: Dict[str, List[Deferred]] = {}
        # The drain before maintenance, while one runs or ran
        # (presence.cluster.drain).
        self.drainRun: Any = None
        self.counters: Dict[str, int] = {
            "sent": 0,
            "received": 0,
            "applied": 0,
            "ignored": 0,
            "refused": 0,
            "resyncs": 0,
            "pages": 0,
            "adopted": 0,
            "adoptions": 0,
            "adoptionsPostponed": 0,
            "adoptionsLeaseLive": 0,
            "handedOver": 0,
            "takenOver": 0,
            "fenced": 0,
            "dropped": 0,
        }

    # Life cycle.

    def attach(self, manager: IClusterMember) -> None:
        """
        Start serving C{manager}: it reports to us from now on, and every
        peer not up within C{adoptAfter} seconds has its subscriptions
        adopted.
        """
        self.manager = manager
        self.store = manager.store
        manager.cluster = self
        if self.leaseTime:
            manager.fence()
            self.lease = ManagerLease(
                self.node, self.store, self.clock, self, self.leaseTime, self.leaseInterval
            )
            self.lease.start()
        for name in sorted(self.peerNames):
            if name not in self.peers:
                self._armAdoption(name)

    def stop(self) -> None:
        """
        Detach from the manager and cancel every timer.  A manager with a
        lease stays fenced: nothing renews its lease any more.
        """
        if self.lease is not None:
            self.lease.stop()
            self.lease = None
        if self.manager is not None and self.manager.cluster is self:
            self.manager.cluster = None
        self.manager = None
        for call in list(self._adoptTimers.values()):
            if call.active():
                call.cancel()
        self._adoptTimers.clear()
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        self._outbox = []
        self._graveyard.stop()

    # IPeerGroup: the manager reports.

    def publicationChanged(self, publication: Publication, replaced: Optional[Publication]) -> None:
        replaces = ""
        if replaced is not None:
            replaces = replaced.etag
            self._bury(removalOf(replaced.presentity, replaced.etag, replaced.expiresAt, self.node))
        self._send(updateOf(publication, publication.origin or self.node, replaces))

    def publicationRemoved(self, publication: Publication) -> None:
        removal = removalOf(publication.presentity, publication.etag, publication.expiresAt, self.node)
        self._bury(removal)
        self._send(removal)

    def publicationMissing(self, etag: str) -> Optional[Deferred]:
        if etag in self.tombstones or self.store is None:
            return None
        d = self.store.getPublication(etag)
        d.addCallback(self._storedPublication)
        d.addErrback(self._logFailure, "reading publication " + etag)
        return d

    def _storedPublication(self, record: Any) -> None:
        """
        A publication another node has just stored, which replication has
        not brought yet: take it as if it had.
        """
        if record is None:
            return
        update = PublicationUpdate(
            record.presentity, record.etag, record.body, record.expiresAt, record.modifiedAt,
            record.version, "", False, "", record.event, record.contentType,
        )
        self.receive([update], "store")

    def dialogMissing(self, request: Any, key: Tuple[str, str, str, str]) -> Optional[Deferred]:
        if self.store is None:
            return None
        try:
            presentity = normaliseAOR(request.toAddr().uri)
        except (HeaderError, URIError):
            return None
        return self._findDialog(key, presentity, True)

    def _findDialog(self, key: Tuple[str, str, str, str], presentity: str, retry: bool) -> Deferred:
        """
        Find who owns the dialog C{key} in the store and get it here:
        load it if it is ours already, adopt its dead owner's
        subscriptions, or have its live owner hand it over.
        """
        callId, localTag, remoteTag, eventId = key

        def found(record: Any) -> Any:
            manager = self.manager
            if manager is None or manager.holdsDialog(key):
                return None
            if record is None or (record.remoteTag, record.eventId) != (remoteTag, eventId):
                return None
            owner = record.owner
            if owner == self.node:
                manager.adopt([record], notify=False)
                return None
            peer = self.peers.get(owner)
            if peer is not None:
                d = peer.handOver(record.id)
                d.addCallback(self._handedOver, record.id, owner)
                return d
            if owner in self.peerNames and retry:
                d = self.adopt(owner)
                d.addCallback(lambda _: self._findDialog(key, presentity, False))
                return d
            return None

        d = self.store.findSubscription(presentity, callId, localTag)
        d.addCallback(found)
        d.addErrback(self._logFailure, "looking up dialog " + callId)
        return d

    def _handedOver(self, ok: bool, subscriptionId: str, owner: str) -> Optional[Deferred]:
        if not ok or self.store is None:
            return None
        self.counters["takenOver"] += 1
        self.log.info(
            "Subscription {id} handed over by {owner}", id=subscriptionId, owner=owner
        )

        def load(record: Any) -> None:
            if record is not None and record.owner == self.node and self.manager is not None:
                self.manager.adopt([record], notify=False)

        return self.store.getSubscription(subscriptionId).addCallback(load)

    # Sending.

    def _send(self, update: PublicationUpdate) -> None:
        """
        Queue C{update} for every peer; everything queued in one reactor
        turn goes in one call per peer.  A peer that is down misses it and
        catches up when it resynchronises.
        """
        if not self.peers:
            return
        self._outbox.append(update)
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        outbox, self._outbox = self._outbox, []
        for batch in batches(outbox):
            for name, peer in list(self.peers.items()):
                self.counters["sent"] += len(batch)
                d = peer.applyUpdates(batch)
                d.addErrback(self._logFailure, "sending %d updates to %s" % (len(batch), name))

    # Receiving.

    def receive(self, updates: List[PublicationUpdate], sender: str) -> int:
        """
        Merge updates from C{sender} (a peer, or C{"store"}) into the
        manager's memory, then let the manager recompose and notify once
        per presentity.

        @return: how many changed something.
        """
        manager = self.manager
        if manager is None:
            return 0
        self.counters["received"] += len(updates)
        now = self.clock.seconds()
        puts: Dict[str, Publication] = {}
        removes: List[Tuple[str, str]] = []
        for update in updates:
            etag = update.etag
            if update.removed:
                if etag in self.tombstones:
                    self.counters["ignored"] += 1
                    continue
                self._bury(update)
                if puts.pop(etag, None) is None:
                    removes.append((update.presentity, etag))
                continue
            if etag in self.tombstones or etag in puts or update.expiresAt <= now or self._holds(update):
                self.counters["ignored"] += 1
                continue
            try:
                document = manager.parsePublication(update.event, update.body, update.presentity)
            except ValueError as e:
                self.counters["refused"] += 1
                self.log.warn(
                    "Refused publication {etag} of {presentity} from {sender}: {error}",
                    etag=etag, presentity=update.presentity, sender=sender, error=str(e),
                )
                continue
            replaced = update.replaces
            if replaced and replaced not in self.tombstones:
                old = manager.publication(replaced)
                until = old.expiresAt if old is not None else now + manager.config.publishMaxExpires
                self._bury(removalOf(update.presentity, replaced, until, update.origin))
                if puts.pop(replaced, None) is None:
                    removes.append((update.presentity, replaced))
            origin = "" if update.origin == self.node else (update.origin or sender)
            puts[etag] = Publication(
                etag, update.presentity, update.body, document, update.expiresAt,
                update.modifiedAt, update.version, origin, update.event, update.contentType,
            )
        applied = manager.applyRemote(list(puts.values()), removes)
        self.counters["applied"] += applied
        return applied

    def _holds(self, update: PublicationUpdate) -> bool:
        """
        Whether the manager holds this entity-tag already (claimed by a
        refresh in progress included).
        """
        manager = self.manager
        if manager.publication(update.etag) is not None:
            return True
        return manager.heldPublication(update.presentity, update.etag) is not None

    def _bury(self, removal: PublicationUpdate) -> None:
        """
        Remember that C{removal.etag} is gone until its publication would
        have expired anyway.
        """
        if removal.etag in self.tombstones:
            return
        self.tombstones[removal.etag] = removal
        until = max(removal.expiresAt, self.clock.seconds()) + TOMBSTONE_SLACK
        self._graveyard.set(removal.etag, until)

    def _tombstoneDeadline(self, etag: str) -> Optional[float]:
        """
        When the tombstone of C{etag} may go (L{_bury} put it in the
        graveyard no earlier than this).
        """
        removal = self.tombstones.get(etag)
        return None if removal is None else removal.expiresAt + TOMBSTONE_SLACK

    def _forget(self, etags: List[Any]) -> None:
        for etag in etags:
            self.tombstones.pop(etag, None)

    def snapshot(self) -> List[Tuple[str, str]]:
        """
        What a resync page walks: C{(presentity, etag)} of every live
        publication (claimed ones included) and every tombstone.
        """
        manager = self.manager
        if manager is None:
            return []
        items = manager.publicationKeys()
        items.extend((removal.presentity, etag) for etag, removal in self.tombstones.items())
        return items

    def pageOf(self, items: List[Tuple[str, str]], offset: int, limit: int) -> Tuple[List[PublicationUpdate], int]:
        """
        The updates for C{items[offset:]}, at most C{limit} of them and
        about L{pageBytes} bytes; those gone since the
        snapshot are skipped (their removal is a tombstone, or they
        expired).

        @return: the updates and the offset of the next page, -1 after the
            last.
        """
        manager = self.manager
        limit = max(1, min(limit, MAX_PAGE))
        updates: List[PublicationUpdate] = []
        size = 0
        index = offset
        while index < len(items) and len(updates) < limit:
            aor, etag = items[index]
            removal = self.tombstones.get(etag)
            if removal is not None:
                update: Optional[PublicationUpdate] = removal
            else:
                pub = manager.heldPublication(aor, etag) if manager is not None else None
                update = None if pub is None else updateOf(pub, pub.origin or self.node)
            if update is not None:
                if updates and size + update.weight() > self.pageBytes:
                    break
                updates.append(update)
                size += update.weight()
            index += 1
        return updates, (index if index < len(items) else -1)

    # Membership.

    def peerUp(self, name: str, peer: Any) -> None:
        """
        The link to C{name} is up (logged in): send to it from now on,
        pull its state, and tell it if we adopted its subscriptions.
        """
        if name not in self.peerNames:
            return
        self.peers[name] = peer
        call = self._adoptTimers.pop(name, None)
        if call is not None and call.active():
            call.cancel()
        self.log.info("Cluster peer {peer} is up", peer=name)
        if name in self._adoptedFrom:
            self._adoptedFrom.discard(name)
            peer.adopted(name, self.node).addErrback(self._logFailure, "telling %s" % (name,))
        self.resync(name)

    def peerDown(self, name: str) -> None:
        """
        The link to C{name} is down: stop sending to it, and adopt its
        subscriptions unless it is back within C{adoptAfter} seconds.
        """
        if self.peers.pop(name, None) is None:
            return
        self._resyncing.pop(name, None)
        for waiter in self._syncWaiters.pop(name, []):
            waiter.callback(False)
        self.log.warn("Cluster peer {peer} is down", peer=name)
        if self.manager is not None:
            self._armAdoption(name)

    def peerLoggedIn(self, name: str) -> None:
        """
        C{name} logged in to us: it may have missed what we sent while
        its link was down, and we what it sent; pull its state.
        """
        if name in self.peers:
            self.resync(name)

    def resync(self, name: str) -> None:
        """
        Pull C{name}'s state, page by page; if asked again meanwhile, pull
        again once done.
        """
        peer = self.peers.get(name)
        if peer is None or self.manager is None:
            return
        if name in self._resyncing:
            self._resyncing[name] = True
            return
        self._resyncing[name] = False
        self.counters["resyncs"] += 1
        self._pull(name, peer, 0, 0, 0)

    def _pull(self, name: str, peer: Any, offset: int, pages: int, applied: int) -> None:
        d = maybeDeferred(peer.page, offset, self.pageSize)

        def got(result: Any) -> None:
            if self.peers.get(name) is not peer or self.manager is None:
                return
            updates, following = result
            self.counters["pages"] += 1
            count = self.receive(checkUpdates(updates), name)
            if type(following) is int and following > offset:
                self._pull(name, peer, following, pages + 1, applied + count)
                return
            self.log.info(
                "Resynchronised from {peer}: {pages} pages, {applied} changes",
                peer=name, pages=pages + 1, applied=applied + count,
            )
            again = self._resyncing.pop(name, False)
            for waiter in self._syncWaiters.pop(name, []):
                waiter.callback(True)
            if again:
                self.resync(name)

        def failed(failure: Failure) -> None:
            if self.peers.get(name) is peer:
                self._resyncing.pop(name, None)
            self._logFailure(failure, "resynchronising from %s" % (name,))

        d.addCallbacks(got, failed)

    def whenSynced(self, name: str) -> Deferred:
        """
        Fire with C{True} after the next complete resync from C{name}
        (C{False} if its link goes down first): for tests and tools.
        """
        d: Deferred = Deferred()
        self._syncWaiters.setdefault(name, []).append(d)
        return d

    # Adoption.

    def _armAdoption(self, name: str, delay: Optional[float] = None) -> None:
        call = self._adoptTimers.get(name)
        if call is not None and call.active():
            return
        if delay is None:
            delay = self.adoptAfter
        self._adoptTimers[name] = self.clock.callLater(delay, self._adoptionDue, name)

    def _adoptionDue(self, name: str) -> None:
        self._adoptTimers.pop(name, None)
        if name in self.peers or self.manager is None:
            return
        if self.manager.draining:
            # Draining for maintenance: the managers staying adopt.
            self._armAdoption(name)
            return
        reachable = len(self.peers) + 1
        if reachable < self.quorum:
            self.counters["adoptionsPostponed"] += 1
            self.log.warn(
                "Not adopting the subscriptions of {peer}: only {reachable} of {size} managers "
                "reachable, {quorum} needed",
                peer=name, reachable=reachable, size=len(self.peerNames) + 1, quorum=self.quorum,
            )
            self._armAdoption(name)
            return
        self.adopt(name)

    def adopt(self, name: str) -> Deferred:
        """
        Take every subscription C{name} still owns in the store, if its
        lease has expired (or it has none); otherwise try again once it
        would have.  Nothing is taken while our own lease is not safe.

        @return: a Deferred firing with how many were adopted (0 when the
            store fails: logged).
        """
        pending = self._adopting.get(name)
        if pending is None:
            if self.lease is not None and not self.lease.holding:
                self.log.warn(
                    "Not adopting the subscriptions of {peer}: our own lease is not safe", peer=name
                )
                if name not in self.peers and self.manager is not None:
                    self._armAdoption(name, self.leaseInterval)
                return succeed(0)
            pending = self._adopting[name] = self.store.fenceAndAdopt(name, self.node)
            pending.addCallback(self._fenced, name)
            pending.addErrback(self._adoptionFailed, name)
        d: Deferred = Deferred()
        pending.addBoth(lambda result: (d.callback(result), result)[1])
        return d

    def _fenced(self, result: Tuple[Optional[List[Any]], float], name: str) -> int:
        """
        The store fenced C{name} and gave us its subscriptions, or found
        its lease live (C{records} L{None}): it is alive, links or not.
        """
        records, remaining = result
        if records is not None:
            self._leaseLive.discard(name)
            return self._adopted(records, name)
        self._adopting.pop(name, None)
        self.counters["adoptionsLeaseLive"] += 1
        log = self.log.debug if name in self._leaseLive else self.log.warn
        self._leaseLive.add(name)
        log(
            "Not adopting the subscriptions of {peer}: unreachable, but its lease is live "
            "for {remaining:.1f}s more (it still serves its watchers)",
            peer=name, remaining=remaining,
        )
        if name not in self.peers and self.manager is not None:
            self._armAdoption(name, remaining + LEASE_RETRY_SLACK)
        return 0

    def _adopted(self, records: List[Any], name: str) -> int:
        self._adopting.pop(name, None)
        manager = self.manager
        if manager is None:
            return 0
        self.counters["adoptions"] += 1
        count = manager.adopt(records)
        if not records:
            return 0
        self.counters["adopted"] += len(records)
        self._adoptedFrom.add(name)
        self.log.warn(
            "Adopted {count} subscriptions of {peer} ({live} live)",
            count=len(records), peer=name, live=count,
        )
        for peerName, peer in list(self.peers.items()):
            peer.adopted(name, self.node).addErrback(self._logFailure, "telling %s" % (peerName,))
        return len(records)

    def _adoptionFailed(self, failure: Failure, name: str) -> int:
        self._adopting.pop(name, None)
        self._logFailure(failure, "adopting the subscriptions of %s" % (name,))
        if name not in self.peers and self.manager is not None:
            self._armAdoption(name)
        return 0

    def adoptedBy(self, formerOwner: str, owner: str) -> Deferred:
        """
        C{owner} adopted C{formerOwner}'s subscriptions.  If we are the
        former owner (we were cut off, not dead), drop from memory every
        subscription the store no longer says is ours, so that one
        manager only notifies each watcher.
        """
        if formerOwner != self.node or self.manager is None:
            return succeed(0)
        return self._dropLost(owner)

    def _dropLost(self, owner: str) -> Deferred:
        """
        Drop from memory every subscription the store no longer says is
        ours, and the NOTIFYs held back for those another manager now
        owns (final ones included).

        @param owner: who took them, for the log.
        @return: a Deferred firing with how many were dropped.
        """
        manager = self.manager
        held = manager.subscriptionIds()
        finals = [i for i in manager.heldNotifies() if i not in held]

        def owned(records: List[Any]) -> Any:
            if self.manager is not manager:
                return 0
            lost = held - set(record.id for record in records)
            count = manager.disown(lost)
            if count:
                self.counters["dropped"] += count
                self.log.warn(
                    "{owner} adopted {count} of our subscriptions: dropped them",
                    owner=owner, count=count,
                )
            if not finals:
                return count
            # Subscriptions we ended while fenced: their final NOTIFY is
            # the new owner's to send if the row went to another manager.
            reads = [self.store.getSubscription(i) for i in finals]

            def checked(rows: List[Any]) -> int:
                taken = [r.id for r in rows if r is not None and r.owner != self.node]
                manager.dropHeld(taken)
                return count

            return gatherResults(reads, consumeErrors=True).addCallback(checked)

        return self.store.loadSubscriptions(self.node).addCallback(owned)

    # The lease's holder (presence.cluster.lease).

    def leaseLost(self, reason: str) -> None:
        """
        Our lease is not safe any more: hold NOTIFYs back.
        """
        self.counters["fenced"] += 1
        if self.manager is not None:
            self.manager.fence()
        self.log.warn("Lease of {node} {reason}: NOTIFYs held back", node=self.node, reason=reason)

    def leaseTaken(self, epoch: int) -> Deferred:
        """
        A new epoch is ours: drop what was adopted meanwhile.
        """
        if self.manager is None:
            return succeed(0)
        return self._dropLost("a peer")

    def leaseHeld(self) -> None:
        """
        Our lease is registered, reconciled and renewed in time: notify.
        """
        manager = self.manager
        if manager is None:
            return
        held = manager.unfence()
        self.log.info(
            "Lease of {node} held (epoch {epoch}): notifying, {held} held NOTIFYs sent",
            node=self.node, epoch=self.lease.epoch if self.lease is not None else 0, held=held,
        )

    def handOver(self, subscriptionId: str, to: str) -> Deferred:
        """
        Give C{to} (a peer) the subscription C{subscriptionId}.
        """
        manager = self.manager
        if manager is None or to not in self.peerNames:
            return succeed(False)
        d = manager.release(subscriptionId, to)

        def done(ok: bool) -> bool:
            if ok:
                self.counters["handedOver"] += 1
                self.log.info("Handed subscription {id} over to {peer}", id=subscriptionId, peer=to)
            return ok

        return d.addCallback(done)

    def takeOver(self, items: List[Tuple[str, bool]], former: str) -> Deferred:
        """
        C{former}, draining, gave us these subscriptions in the store
        (L{presence.cluster.drain}): load those the store says are ours
        and serve them; NOTIFY the stale ones.

        @return: a Deferred firing with how many are now served.
        """
        manager = self.manager
        if manager is None or self.store is None or not items:
            return succeed(0)
        reads = [self.store.getSubscription(subscriptionId) for subscriptionId, _ in items]
        stale = [subscriptionId for subscriptionId, isStale in items if isStale]

        def loaded(records: List[Any]) -> int:
            if self.manager is not manager:
                return 0
            ours = [r for r in records if r is not None and r.owner == self.node]
            count = manager.adopt(ours, notify=False)
            manager.notifyPaced(stale)
            self.counters["takenOver"] += count
            self.log.info(
                "Took over {count} subscriptions from {peer}, which drains", count=count, peer=former
            )
            return count

        return gatherResults(reads, consumeErrors=True).addCallback(loaded)

    def _logFailure(self, failure: Failure, what: str) -> None:
        self.log.failure("Cluster: {what} failed", failure, what=what)


@implementer(IPeer)
class LocalPeer:
    """
    This node as the peer C{caller} sees it: what a PB avatar calls, and
    what tests link two groups with directly.

    @ivar caller: the node calling (the one that logged in).
    """

    def __init__(self, group: PeerGroup, caller: str) -> None:
        self.group = group
        self.caller = caller
        self._snapshot: List[Tuple[str, str]] = []

    def applyUpdates(self, updates: Any) -> Deferred:
        return maybeDeferred(lambda: self.group.receive(checkUpdates(updates), self.caller))

    def page(self, offset: Any, limit: Any) -> Deferred:
        if type(offset) is not int or type(limit) is not int or offset < 0:
            return maybeDeferred(_refuse, "page(offset, limit) takes two integers")
        if offset == 0:
            self._snapshot = self.group.snapshot()
        return succeed(self.group.pageOf(self._snapshot, offset, limit))

    def adopted(self, formerOwner: Any, owner: Any) -> Deferred:
        if not isinstance(formerOwner, str) or owner != self.caller:
            return maybeDeferred(_refuse, "adopted(formerOwner, owner): owner must be the caller")
        return self.group.adoptedBy(formerOwner, owner)

    def handOver(self, subscriptionId: Any) -> Deferred:
        if not isinstance(subscriptionId, str) or len(subscriptionId) > 128:
            return maybeDeferred(_refuse, "handOver(subscriptionId) takes a string")
        return self.group.handOver(subscriptionId, self.caller)


    def takeOver(self, items: Any) -> Deferred:
        if not isinstance(items, list) or len(items) > MAX_TAKE_OVER or not all(
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], str)
            and len(item[0]) <= 128
            and type(item[1]) is bool
            for item in items
        ):
            return maybeDeferred(_refuse, "takeOver(items) takes at most %d [id, stale] pairs" % (MAX_TAKE_OVER,))
        return self.group.takeOver([(item[0], item[1]) for item in items], self.caller)


def _refuse(message: str) -> None:
    raise ValueError(message)
