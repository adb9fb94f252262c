"""
The cluster logic (L{presence.cluster.group}) without a network: real
managers (L{tests.harness.Harness}) sharing one store, their groups
linked by L{LocalPeer}, time on each node's L{Clock}.

What they show: a publication accepted on one manager reaches the
watchers of the others and is written once; the merge is idempotent and
commutative (duplicates, late and reordered updates never regress
state); versions are Lamport clocks; resynchronisation pages through
everything a peer missed; a dead manager's subscriptions are adopted,
CSeq still increasing, and a live one hands a dialog over.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.spread import jelly, pb
from zope.interface.verify import verifyObject

from presence.cluster.group import TOMBSTONE_SLACK, LocalPeer, PeerGroup
from presence.cluster.link import SecretError, loadSecrets
from presence.cluster.messages import MAX_BATCH, PublicationUpdate, batches, checkUpdates
from presence.cluster.peers import PeerSpec, parsePeers
from presence.cluster.service import clusterProblem
from presence.config import Config, ConfigError
from presence.interfaces import IPeer, IPeerGroup
from presence.sip.message import Request
from presence.store import MemoryStore
from tests.harness import PUBLISHER, Harness, pidf, publish, refresh, subscribe
from tests.test_store import anyStore, noStoreThreadsLeft, pgUrl, pub, sub  # noqa: F401 (fixtures)

BOB = "sip:bob@example.test"


class CountingStore:
    """
    One node's handle on the shared store, counting the writes it issues.
    """

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.calls: List[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return call


class Node:
    """
    A manager of the cluster under test.
    """

    def __init__(
        self, name: str, shared: Any, names: Sequence[str], groupOptions: Any = None, **settings: Any
    ) -> None:
        """
        @param groupOptions: keyword arguments of L{PeerGroup} to change
            (leases are off by default).
        """
        self.name = name
        self.store = CountingStore(shared)
        self.harness = Harness(store=self.store, node=name, **settings)
        self.manager = self.harness.manager
        self.clock = self.harness.clock
        options = dict(adoptAfter=10.0, pageSize=200)
        options.update(groupOptions or {})
        self.group = PeerGroup(name, names, self.clock, **options)
        self.group.attach(self.manager)

    def notifies(self) -> List[Request]:
        """
        The NOTIFYs sent since last asked (retransmissions once), each
        answered 200 as the watcher would.
        """
        sent: List[Request] = []
        seen = set()
        while True:
            fresh = [m for m in self.harness.take() if isinstance(m, Request) and m.method == "NOTIFY"]
            if not fresh:
                return sent
            for notify in fresh:
                self.harness.answer(notify)
                key = (notify.callId, notify.cseq().number)
                if key not in seen:
                    seen.add(key)
                    sent.append(notify)

    def crash(self) -> None:
        """
        Die: no more messages, no more timers.
        """
        self.group.stop()
        self.harness.crash()

    def stop(self) -> None:
        self.group.stop()
        self.harness.stop()


class Cluster:
    def __init__(self, names: Sequence[str] = ("a", "b", "c"), **settings: Any) -> None:
        self.shared = MemoryStore()
        self.shared.start()
        self.nodes: Dict[str, Node] = {name: Node(name, self.shared, names, **settings) for name in names}

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def link(self, first: str, second: str) -> None:
        a, b = self.nodes[first], self.nodes[second]
        a.group.peerUp(second, LocalPeer(b.group, first))
        b.group.peerUp(first, LocalPeer(a.group, second))

    def linkAll(self) -> None:
        names = sorted(self.nodes)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                self.link(first, second)

    def cut(self, first: str, second: str) -> None:
        self.nodes[first].group.peerDown(second)
        self.nodes[second].group.peerDown(first)

    def flush(self) -> None:
        """
        Let every node send what it queued (one reactor turn each), until
        nothing moves.
        """
        for _ in range(5):
            for node in self.nodes.values():
                node.clock.advance(0)

    def advance(self, seconds: float) -> None:
        for node in self.nodes.values():
            node.clock.advance(seconds)
        self.flush()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
def cluster():
    c = Cluster()
    c.linkAll()
    yield c
    c.stop()


def watch(node: Node, uri: str = BOB, **kw: Any):
    """
    Subscribe a watcher on C{node}; return the SUBSCRIBE, its 200 and
    the first NOTIFY.
    """
    return node.harness.subscribed(uri=uri, **kw)


def update(etag: str = "e1", body: bytes = b"", presentity: str = BOB, **kw: Any) -> PublicationUpdate:
    values: Dict[str, Any] = dict(
        presentity=presentity, etag=etag, body=body or pidf(presentity), expiresAt=1_000_000 + 3600.0,
        modifiedAt=1_000_000.0, version=1, origin="a",
    )
    values.update(kw)
    return PublicationUpdate(**values)


# The wire type.


def test_updateCrossesJelly():
    """
    A L{PublicationUpdate} goes through jelly as its explicit state and
    comes back equal.
    """
    original = update(replaces="e0", removed=False)
    copied = jelly.unjelly(jelly.jelly([original]), taster=pb.globalSecurity)
    assert copied == [original]
    assert isinstance(copied[0], PublicationUpdate) and copied[0] is not original


@pytest.mark.parametrize(
    "change",
    [
        {"etag": ""},
        {"etag": 7},
        {"presentity": "x" * 5000},
        {"body": "text"},
        {"expiresAt": float("nan")},
        {"expiresAt": True},
        {"version": -1},
        {"version": 1.5},
        {"removed": 1},
        {"extra": 1},
    ],
)
def test_updateRefusesBadState(change):
    """
    A state with a wrong type, size or field is refused with
    C{ValueError} before any object exists.
    """
    state = update().getStateToCopy()
    state.update(change)
    with pytest.raises(ValueError):
        PublicationUpdate().setCopyableState(state)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(update().getStateToCopy()) + ["x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary())))
def test_updateStateFuzz(state):
    """
    Whatever a peer sends as state, the receiver gets an update or a
    C{ValueError}, nothing else.
    """
    try:
        PublicationUpdate().setCopyableState(state)
    except ValueError:
        pass


def test_batchesCutByCountAndBytes():
    small = [update("e%d" % i, body=b"x" * 10) for i in range(2500)]
    cut = list(batches(small))
    assert [len(b) for b in cut] == [MAX_BATCH, MAX_BATCH, 500]
    big = [update("b%d" % i, body=b"x" * 100_000) for i in range(5)]
    assert [len(b) for b in batches(big, maxBytes=250_000)] == [2, 2, 1]
    assert [len(b) for b in batches([update(body=b"x" * 500_000)], maxBytes=1000)] == [1]


def test_checkUpdates():
    assert checkUpdates([update()]) == [update()]
    for bad in ([1], "x", [update()] * (MAX_BATCH + 1), None):
        with pytest.raises(ValueError):
            checkUpdates(bad)


def test_interfaces(cluster):
    verifyObject(IPeerGroup, cluster["a"].group)
    verifyObject(IPeer, LocalPeer(cluster["a"].group, "b"))


# Replication.


def test_publicationReachesWatchersOnOtherManagers(cluster):
    """
    Watchers on b and c; the presentity publishes on a: both are notified
    of the new state, and only a wrote the publication.
    """
    watch(cluster["b"])
    watch(cluster["c"])
    etag, _ = cluster["a"].harness.published()
    cluster.flush()
    for name in ("b", "c"):
        [notify] = cluster[name].notifies()
        assert b"<basic>open</basic>" in notify.body
        assert etag in cluster[name].manager.publications
        assert "putPublication" not in cluster[name].store.calls
    assert cluster["a"].store.calls.count("putPublication") == 1
    assert cluster["b"].manager.publications[etag].origin == "a"


def test_documentsIdenticalEverywhere(cluster):
    """
    Two devices of bob publish on two managers: every manager composes the
    same bytes.
    """
    cluster["a"].harness.published(body=pidf(BOB, "open", "phone"))
    cluster["a"].clock.advance(1)
    cluster["b"].clock.advance(1)
    cluster["b"].harness.published(body=pidf(BOB, "closed", "laptop"))
    cluster.flush()
    documents = set(node.manager.documentOf(BOB) for node in cluster.nodes.values())
    assert len(documents) == 1
    assert b"phone" in documents.pop()


def test_removalReplicated(cluster):
    """
    An un-PUBLISH on a removes the state everywhere, and b's watcher is
    told.
    """
    watch(cluster["b"])
    etag, _ = cluster["a"].harness.published()
    cluster.flush()
    cluster["b"].notifies()
    cluster["a"].harness.receive(publish(body=b"", Expires="0", SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in cluster["a"].harness.responses()] == [200]
    cluster.flush()
    [notify] = cluster["b"].notifies()
    assert b"<basic>closed</basic>" in notify.body
    assert etag not in cluster["b"].manager.publications
    assert etag in cluster["b"].group.tombstones


def test_refreshAtAnotherManager(cluster):
    """
    A refresh (SIP-If-Match) of a's entity-tag arrives at b: b knows it
    from replication, answers with a new entity-tag, and a drops the old
    one; the state did not change, so no watcher is notified.
    """
    watch(cluster["c"])
    etag, _ = cluster["a"].harness.published()
    cluster.flush()
    cluster["c"].notifies()
    cluster["b"].harness.receive(publish(body=b"", SIP_If_Match=etag, Expires="600"), PUBLISHER)
    [ok] = cluster["b"].harness.responses()
    assert ok.code == 200
    fresh = ok.header("sip-etag")
    assert fresh and fresh != etag
    cluster.flush()
    for node in cluster.nodes.values():
        assert etag not in node.manager.publications
        assert fresh in node.manager.publications
    assert cluster["c"].notifies() == []
    assert set(cluster.shared.publications) == {fresh}


def test_ifMatchFoundInStoreBeforeReplication(cluster):
    """
    The refresh reaches b before a's update does (b's link to a is down):
    b finds the entity-tag in the shared store and serves it.
    """
    cluster.cut("a", "b")
    etag, _ = cluster["a"].harness.published()
    cluster.flush()
    assert etag not in cluster["b"].manager.publications
    cluster["b"].harness.receive(publish(body=b"", SIP_If_Match=etag, Expires="600"), PUBLISHER)
    [ok] = cluster["b"].harness.responses()
    assert ok.code == 200 and ok.header("sip-etag") != etag


def test_unknownETagStill412(cluster):
    cluster["b"].harness.receive(publish(body=b"", SIP_If_Match="nope", Expires="600"), PUBLISHER)
    assert [r.code for r in cluster["b"].harness.responses()] == [412]


def test_versionIsALamportClock(cluster):
    """
    b has seen version 5 of bob from a peer; its own next publication of
    bob is version 6.
    """
    b = cluster["b"]
    b.group.receive([update("e5", version=5)], "a")
    etag, _ = b.harness.published(body=pidf(BOB, "closed", "t2"))
    assert b.manager.publications[etag].version == 6


# Merge: idempotent, commutative, never regressing.


def notified(node: Node) -> List[bytes]:
    return [n.body for n in node.notifies()]


def test_duplicateChangesNothing(cluster):
    b = cluster["b"]
    watch(b)
    assert b.group.receive([update()], "a") == 1
    assert len(notified(b)) == 1
    assert b.group.receive([update()], "a") == 0
    assert b.group.receive([update()], "c") == 0
    assert notified(b) == []


def test_lateCreationAfterRemovalIgnored(cluster):
    b = cluster["b"]
    watch(b)
    b.group.receive([update()], "a")
    b.group.receive([update(removed=True, body=b"")], "a")
    assert "e1" not in b.manager.publications
    notified(b)
    assert b.group.receive([update()], "c") == 0
    assert "e1" not in b.manager.publications
    assert notified(b) == []


def test_removalBeforeCreation(cluster):
    """
    The removal overtakes the creation (they come from different peers):
    the creation, arriving last, is ignored.
    """
    b = cluster["b"]
    b.group.receive([update(removed=True, body=b"")], "c")
    assert b.group.receive([update()], "a") == 0
    assert "e1" not in b.manager.publications


def test_replacementBeforeOriginal(cluster):
    """
    b learns that e2 replaced e1 before it learns of e1: e1 never shows.
    """
    b = cluster["b"]
    b.group.receive([update("e2", replaces="e1", body=pidf(BOB, "closed"), version=2)], "c")
    b.group.receive([update("e1")], "a")
    assert set(b.manager.publications) == {"e2"}
    assert b"closed" in b.manager.documentOf(BOB)


def test_replacementIsOneChange(cluster):
    """
    e2 replacing e1 reaches the watcher as one NOTIFY of the new state.
    """
    b = cluster["b"]
    watch(b)
    b.group.receive([update("e1")], "a")
    notified(b)
    b.group.receive([update("e2", replaces="e1", body=pidf(BOB, "closed"), version=2)], "a")
    [body] = notified(b)
    assert b"closed" in body and set(b.manager.publications) == {"e2"}


def test_createAndRemoveInOneBatch(cluster):
    b = cluster["b"]
    b.group.receive([update("e1"), update("e1", removed=True, body=b"")], "a")
    assert "e1" not in b.manager.publications
    assert b.group.receive([update("e1")], "a") == 0


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(6))))
def test_mergeOrderDoesNotMatter(order):
    """
    The same updates in any order give the same publications and the same
    document.
    """
    updates = [
        update("e1", body=pidf(BOB, "open", "t1"), version=1),
        update("e2", replaces="e1", body=pidf(BOB, "closed", "t1"), version=2, modifiedAt=1_000_001.0),
        update("e3", body=pidf(BOB, "open", "t3"), version=3, modifiedAt=1_000_002.0, origin="c"),
        update("e3", removed=True, body=b"", origin="c"),
        update("e4", body=pidf(BOB, "open", "t4"), version=3, modifiedAt=1_000_003.0, origin="c"),
        update("e1", body=pidf(BOB, "open", "t1"), version=1),
    ]
    c = Cluster(("a", "b"))
    try:
        b = c["b"]
        for index in order:
            b.group.receive([updates[index]], "a")
        assert set(b.manager.publications) == {"e2", "e4"}
        reference = Cluster(("a", "b"))
        try:
            reference["b"].group.receive(updates, "a")
            assert b.manager.documentOf(BOB) == reference["b"].manager.documentOf(BOB)
        finally:
            reference.stop()
    finally:
        c.stop()


def test_expiredCreationIgnored(cluster):
    b = cluster["b"]
    assert b.group.receive([update(expiresAt=b.clock.seconds() - 1)], "a") == 0


def test_unreadableBodyRefused(cluster):
    b = cluster["b"]
    assert b.group.receive([update(body=b"<not-pidf/>")], "a") == 0
    assert b.group.counters["refused"] == 1


def test_remotePublicationExpiresWithoutWrites(cluster):
    """
    Every manager expires a replicated publication by itself; only its
    origin removes it from the store.
    """
    watch(cluster["b"])
    etag, _ = cluster["a"].harness.published(Expires="60")
    cluster.flush()
    cluster["b"].notifies()
    cluster.advance(61)
    for node in cluster.nodes.values():
        assert etag not in node.manager.publications
    assert cluster["b"].store.calls.count("removePublication") == 0
    assert cluster["a"].store.calls.count("removePublication") == 1
    [notify] = cluster["b"].notifies()
    assert b"<basic>closed</basic>" in notify.body


def test_tombstonesForgottenAfterExpiry(cluster):
    b = cluster["b"]
    b.group.receive([update(removed=True, body=b"", expiresAt=b.clock.seconds() + 100)], "a")
    assert "e1" in b.group.tombstones
    b.clock.advance(100 + TOMBSTONE_SLACK + 10)
    assert b.group.tombstones == {}


# Resynchronisation.


def test_resyncPagesThroughWhatWasMissed():
    """
    b's link to a is down while a takes 50 publications and removes one;
    when it comes back, b pulls a's state in pages of 7 and catches up,
    removal included.
    """
    c = Cluster(("a", "b"))
    try:
        a, b = c["a"], c["b"]
        a.group.pageSize = b.group.pageSize = 7
        etags = []
        for i in range(50):
            aor = "sip:user%d@example.test" % (i,)
            etags.append(a.harness.published(uri=aor)[0])
        c.link("a", "b")
        c.flush()
        assert set(etags) <= set(b.manager.publications)
        c.cut("a", "b")
        a.harness.receive(publish("sip:user0@example.test", body=b"", Expires="0", SIP_If_Match=etags[0]), PUBLISHER)
        a.harness.responses()
        pulls: List[Any] = []
        peer = LocalPeer(a.group, "b")
        original = peer.page
        peer.page = lambda offset, limit: (pulls.append((offset, limit)), original(offset, limit))[1]  # type: ignore
        b.group.peerUp("a", peer)
        assert etags[0] not in b.manager.publications
        assert set(etags[1:]) <= set(b.manager.publications)
        assert len(pulls) == 8 and all(limit == 7 for _, limit in pulls)
    finally:
        c.stop()


def test_pagesCutByBytes(cluster):
    """
    A page stops at the byte budget, whatever its count.
    """
    a = cluster["a"]
    for i in range(10):
        a.harness.published(uri="sip:u%d@example.test" % (i,))
    a.group.pageBytes = 1500
    items = a.group.snapshot()
    updates, following = a.group.pageOf(items, 0, 100)
    assert 1 <= len(updates) < 10 and following == len(updates)
    seen = list(updates)
    while following != -1:
        updates, following = a.group.pageOf(items, following, 100)
        seen.extend(updates)
    assert sorted(u.etag for u in seen) == sorted(a.manager.publications)


class SlowPeer:
    """
    A peer whose pages come only when the test releases them.
    """

    def __init__(self, inner: LocalPeer) -> None:
        self.inner = inner
        self.held: List[Any] = []

    def page(self, offset: int, limit: int) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((d, offset, limit))
        return d

    def release(self) -> None:
        """
        Answer the pages asked so far (not those asked meanwhile).
        """
        held, self.held = self.held, []
        for d, offset, limit in held:
            self.inner.page(offset, limit).chainDeferred(d)

    def applyUpdates(self, updates: Any) -> Deferred:
        return self.inner.applyUpdates(updates)

    def adopted(self, formerOwner: str, owner: str) -> Deferred:
        return succeed(0)


def test_resyncAgainWhenAskedDuringOne():
    """
    The peer logs in to us while we pull from it (it may have missed
    updates meanwhile): once the pull ends we pull again, once; pulls do
    not overlap.
    """
    c = Cluster(("a", "b"))
    try:
        a, b = c["a"], c["b"]
        etag, _ = a.harness.published()
        peer = SlowPeer(LocalPeer(a.group, "b"))
        b.group.peerUp("a", peer)
        b.group.peerLoggedIn("a")
        b.group.peerLoggedIn("a")
        assert len(peer.held) == 1 and b.group.counters["resyncs"] == 1
        synced = b.group.whenSynced("a")
        peer.release()
        assert synced.called and etag in b.manager.publications
        assert len(peer.held) == 1 and b.group.counters["resyncs"] == 2
        peer.release()
        assert peer.held == [] and b.group.counters["pages"] == 2
    finally:
        c.stop()


def test_restartedManagerCatchesUp():
    """
    b restarts with an empty memory and a store that missed nothing: a
    publication taken meanwhile on a reaches it by resync, and its
    watcher (reloaded from the store) is told.
    """
    c = Cluster(("a", "b"))
    try:
        c.linkAll()
        a, b = c["a"], c["b"]
        watch(b)
        c.cut("a", "b")
        b.group.stop()
        b.harness.restart()
        b.manager = b.harness.manager
        b.group = PeerGroup("b", ["a", "b"], b.clock, adoptAfter=10.0)
        b.group.attach(b.manager)
        etag, _ = a.harness.published(body=pidf(BOB, "open", "late"))
        [onStart] = b.notifies()  # what b reloaded (notify_on_start)
        assert b"late" not in onStart.body
        c.link("a", "b")
        c.flush()
        assert etag in b.manager.publications
        [notify] = b.notifies()
        assert b"late" in notify.body
    finally:
        c.stop()


def test_restartedFencedManagerNotifiesOnceWhenHeld():
    """
    A manager of a cluster restarts fenced (as the manager service starts
    it): its start NOTIFYs wait for the lease; a publication the resync
    brings meanwhile goes into that one NOTIFY, not a second one.
    """
    c = Cluster(("a", "b"))
    try:
        c.linkAll()
        a, b = c["a"], c["b"]
        _, _, first = watch(b)
        c.cut("a", "b")
        b.group.stop()
        b.harness.restart(fenced=True)
        b.manager = b.harness.manager
        assert b.notifies() == [] and len(b.manager.notifier.paced) == 1
        b.group = PeerGroup("b", ["a", "b"], b.clock, adoptAfter=10.0)
        b.group.attach(b.manager)
        etag, _ = a.harness.published(body=pidf(BOB, "open", "late"))
        c.link("a", "b")
        c.flush()
        assert etag in b.manager.publications
        assert b.notifies() == []
        b.group.leaseHeld()
        [notify] = b.notifies()
        assert b"late" in notify.body and cseqOf(notify) > cseqOf(first)
        c.advance(5)
        assert b.notifies() == []
    finally:
        c.stop()


# Adoption.


def cseqOf(message: Request) -> int:
    return message.cseq().number


def test_deadManagersWatchersAdopted(cluster):
    """
    b dies; after adopt_after a takes its subscriptions (the store says
    so), tells the watcher the current state with a CSeq above any b
    could have sent, and notifies it of the next publication.
    """
    b = cluster["b"]
    _, _, first = watch(b)
    stored = next(iter(cluster.shared.subscriptions.values()))
    assert stored.owner == "b"
    b.crash()
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    cluster["a"].clock.advance(9)
    assert next(iter(cluster.shared.subscriptions.values())).owner == "b"
    cluster["a"].clock.advance(1.5)
    assert next(iter(cluster.shared.subscriptions.values())).owner == "a"
    [adopted] = cluster["a"].notifies()
    assert cseqOf(adopted) > stored.localCSeq > cseqOf(first)
    cluster["c"].harness.published()
    cluster.flush()
    [notify] = cluster["a"].notifies()
    assert b"<basic>open</basic>" in notify.body and cseqOf(notify) == cseqOf(adopted) + 1
    assert cluster["c"].notifies() == []


def test_adoptionOnlyOnce(cluster):
    """
    Two survivors adopt the same dead manager: each subscription goes to
    one of them.
    """
    b = cluster["b"]
    for i in range(3):
        watch(b, uri="sip:p%d@example.test" % (i,))
    b.crash()
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    cluster.advance(11)
    owners = [record.owner for record in cluster.shared.subscriptions.values()]
    assert len(set(owners)) == 1 and owners[0] in ("a", "c")
    held = len(cluster["a"].manager.subscriptions) + len(cluster["c"].manager.subscriptions)
    assert held == 3


def test_noAdoptionWithoutQuorum(cluster):
    """
    b is cut off from a and c, but alive: it sees one manager of three and
    adopts nothing, while a and c (two of three) adopt its subscriptions.
    """
    watch(cluster["a"], uri="sip:pa@example.test")
    watch(cluster["b"], uri="sip:pb@example.test")
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    cluster.advance(25)
    owners = sorted(record.owner for record in cluster.shared.subscriptions.values())
    assert owners in (["a", "a"], ["a", "c"])
    assert cluster["b"].group.counters["adopted"] == 0


def test_peerBackInTimeIsNotAdopted(cluster):
    b = cluster["b"]
    watch(b)
    cluster.cut("a", "b")
    cluster["a"].clock.advance(5)
    cluster.link("a", "b")
    cluster["a"].clock.advance(20)
    assert next(iter(cluster.shared.subscriptions.values())).owner == "b"


def test_neverSeenPeerAdoptedAfterStart():
    """
    A peer that does not come up within adopt_after of our start (it died
    while we were down) is adopted too, once a quorum is up.
    """
    c = Cluster(("a", "b", "c"))
    try:
        watch(c["b"])
        c["b"].crash()
        c["a"].clock.advance(10.5)
        assert next(iter(c.shared.subscriptions.values())).owner == "b"
        c.link("a", "c")
        c["a"].clock.advance(10.5)
        assert next(iter(c.shared.subscriptions.values())).owner == "a"
    finally:
        c.stop()


def test_formerOwnerDropsAdoptedSubscriptions(cluster):
    """
    b was only cut off: a adopted its subscriptions; when the link is back,
    b drops them, so one manager notifies each watcher.
    """
    b = cluster["b"]
    watch(b)
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    cluster["a"].clock.advance(11)
    assert len(cluster["a"].manager.subscriptions) == 1
    assert len(b.manager.subscriptions) == 1
    cluster.link("a", "b")
    cluster.flush()
    assert len(b.manager.subscriptions) == 0
    cluster["a"].notifies()
    cluster["c"].harness.published()
    cluster.flush()
    assert len(cluster["a"].notifies()) == 1
    assert b.notifies() == []


def test_deadOwnersDialogServedAtOnce(cluster):
    """
    The dispatcher sends a dead owner's refresh to a: a adopts at once
    (without waiting for adopt_after) and answers 200.
    """
    b = cluster["b"]
    sub, ok, first = watch(b)
    b.crash()
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    a = cluster["a"]
    a.harness.receive(refresh(sub, ok, 2, Expires="600"))
    responses, notifies = a.harness.split()
    assert [r.code for r in responses] == [200]
    assert cseqOf(notifies[-1]) > cseqOf(first)
    assert next(iter(cluster.shared.subscriptions.values())).owner == "a"


def test_liveOwnerHandsDialogOver(cluster):
    """
    A refresh of b's dialog reaches a (round robin, or b was briefly out
    at the dispatcher): b hands the subscription over, a serves it with a
    CSeq above b's, and b no longer notifies.
    """
    b = cluster["b"]
    sub, ok, first = watch(b)
    cluster["c"].harness.published()
    cluster.flush()
    [second] = b.notifies()
    a = cluster["a"]
    a.harness.receive(refresh(sub, ok, 2, Expires="600"))
    responses, notifies = a.harness.split()
    assert [r.code for r in responses] == [200]
    assert cseqOf(notifies[0]) > cseqOf(second)
    assert b.manager.subscriptions == {}
    assert next(iter(cluster.shared.subscriptions.values())).owner == "a"
    assert a.group.counters["takenOver"] == 1 and b.group.counters["handedOver"] == 1


def test_unknownDialogStill481(cluster):
    cluster["a"].harness.receive(subscribe(toTag="nope", callId="nothing"))
    assert [r.code for r in cluster["a"].harness.responses()] == [481]


# Pacing the NOTIFYs of an adoption.


def adoptionCluster(count: int, rate: int, presentities: int = 5) -> Cluster:
    """
    a and c linked, b dead with C{count} active subscriptions in the store
    (watchers C{sip:w<i>@...} of C{presentities} presentities, round
    robin), which a adopts when its clock reaches adopt_after (c's clock
    is left alone, so c never tries).
    """
    c = Cluster(("a", "b", "c"), clusterAdoptNotifyRate=rate)
    c.link("a", "c")
    c["b"].crash()
    now = c["a"].clock.seconds()
    for i in range(count):
        c.shared.addSubscription(
            sub(
                i, owner="b", watcher="sip:w%d@example.test" % (i,),
                presentity="sip:p%d@example.test" % (i % presentities,),
                remoteTarget="sip:w%d@192.0.2.10:5060" % (i,), expiresAt=now + 3600,
                transport="UDP", routeSet=(), flowToken="", localCSeq=100, remoteCSeq=1,
            )
        )
    return c


def drive(node: Node, until: float) -> List[Any]:
    """
    Advance C{node}'s clock to C{until}, from one timer to the next (so
    that each runs on time, as a reactor runs it), answering every NOTIFY.

    @return: C{(time, NOTIFY)} for each one sent meanwhile.
    """
    clock = node.clock
    sent: List[Any] = [(clock.seconds(), n) for n in node.notifies()]
    for _ in range(100_000):
        now = clock.seconds()
        if now >= until:
            return sent
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() > now]
        clock.advance(min(due + [until]) - now)
        sent.extend((clock.seconds(), n) for n in node.notifies())
    raise AssertionError("the clock does not get to %r" % (until,))


def pacingCalls(node: Node) -> List[Any]:
    notifier = node.manager.notifier
    return [call for call in node.clock.getDelayedCalls() if call.func == notifier._releasePaced]


def test_adoptionNotifiesPaced():
    """
    2,500 adopted subscriptions at adopt_notify_rate 1000: about 1,000
    NOTIFYs in the first second, the last ones about 2.5 s after the
    adoption, each watcher exactly one, above the stored CSeq ceiling; no
    timer is left once all are sent.
    """
    c = adoptionCluster(2500, 1000)
    try:
        a = c["a"]
        a.clock.advance(10)
        start = a.clock.seconds()
        assert a.group.counters["adopted"] == 2500
        assert len(a.manager.notifier.paced) == 2400
        sent = drive(a, start + 3.0)
        firstSecond = [n for at, n in sent if at < start + 1.0 - 1e-6]
        assert 950 <= len(firstSecond) <= 1050, len(firstSecond)
        assert max(at for at, _ in sent) - start < 2.6
        assert len([n for at, n in sent if at < start + 2.0 - 1e-6]) < 2100
        calls = [n.callId for _, n in sent]
        assert len(calls) == len(set(calls)) == 2500
        assert min(cseqOf(n) for _, n in sent) > 100
        # In adoption order.
        assert calls == ["call-%d@192.0.2.10" % (i,) for i in range(2500)]
        assert a.manager.notifier.paced == {} and pacingCalls(a) == []
        assert a.manager.notifier.counters["paced"] == 2500
    finally:
        c.stop()


def test_changeDuringPacing():
    """
    A publication half-way through the pacing: the watchers of that
    presentity already notified get their normal next NOTIFY at once; the
    others get no extra one, but their paced NOTIFY carries the new
    state; every other watcher still gets exactly one.
    """
    c = adoptionCluster(2500, 1000)
    try:
        a = c["a"]
        a.clock.advance(10)
        start = a.clock.seconds()
        before = drive(a, start + 0.55)
        notified = set(n.callId for _, n in before)
        assert 550 <= len(notified) <= 650
        p0 = "sip:p0@example.test"
        watchers = set("call-%d@192.0.2.10" % (i,) for i in range(0, 2500, 5))
        _, immediate = a.harness.published(uri=p0, body=pidf(p0, "open"))
        assert sorted(n.callId for n in immediate) == sorted(watchers & notified)
        for notify in immediate:
            assert b"<basic>open</basic>" in notify.body
            a.harness.answer(notify)
        after = drive(a, start + 3.0)
        counts: Dict[str, List[Request]] = {}
        for _, notify in before + [(0, n) for n in immediate] + after:
            counts.setdefault(notify.callId or "", []).append(notify)
        assert len(counts) == 2500
        for callId, notifies in counts.items():
            if callId in watchers and callId in notified:
                assert len(notifies) == 2 and b"<basic>open</basic>" in notifies[1].body
                assert cseqOf(notifies[1]) == cseqOf(notifies[0]) + 1
            elif callId in watchers:
                [notify] = notifies
                assert b"<basic>open</basic>" in notify.body, callId
            else:
                assert len(notifies) == 1, callId
        assert pacingCalls(a) == []
    finally:
        c.stop()


def test_refreshAndUnsubscribeDuringPacing():
    """
    A watcher that refreshes before its paced turn gets the refresh's
    NOTIFY and no paced one; one that un-SUBSCRIBEs gets its final NOTIFY
    and nothing after.
    """
    c = adoptionCluster(40, 10, presentities=1)
    try:
        a = c["a"]
        a.clock.advance(10)
        start = a.clock.seconds()
        before = drive(a, start + 0.05)
        assert len(before) == 1
        waiting = sorted(
            (i for i in range(40) if "call-%d@192.0.2.10" % (i,) != before[0][1].callId), reverse=True
        )
        refreshed, ended = waiting[0], waiting[1]

        def inDialog(i: int, expires: str) -> Request:
            return subscribe(
                "sip:p0@example.test", fromURI="sip:w%d@example.test" % (i,), fromTag="rt%d" % (i,),
                toTag="lt%d" % (i,), callId="call-%d@192.0.2.10" % (i,), cseq=2, Expires=expires,
            )

        a.harness.receive(inDialog(refreshed, "600"))
        a.harness.receive(inDialog(ended, "0"))
        responses, notifies = a.harness.split()
        assert [r.code for r in responses] == [200, 200]
        assert [n.callId for n in notifies] == ["call-%d@192.0.2.10" % (i,) for i in (refreshed, ended)]
        assert "terminated" in (notifies[1].header("subscription-state") or "")
        for notify in notifies:
            a.harness.answer(notify)
        after = drive(a, start + 5.0)
        calls = [n.callId for _, n in before + after]
        assert len(calls) == len(set(calls)) == 38
        assert not set(calls) & set(n.callId for n in notifies)
        assert pacingCalls(a) == []
    finally:
        c.stop()


def test_stopDuringPacing():
    """
    A manager stopped while pacing leaves no timer behind and sends
    nothing more.
    """
    c = adoptionCluster(500, 100)
    try:
        a = c["a"]
        a.clock.advance(10)
        assert len(drive(a, a.clock.seconds() + 0.45)) == 50
        assert pacingCalls(a) != []
        a.manager.stop()
        assert pacingCalls(a) == [] and a.manager.notifier.paced == {}
        a.clock.advance(10)
        assert a.notifies() == []
    finally:
        c.stop()


def test_fencedDuringPacing():
    """
    A manager fenced while pacing stops (no timer, nothing sent, nothing
    piled up to send at once when unfenced); unfenced, it goes on at the
    same pace and every watcher gets exactly one NOTIFY.
    """
    c = adoptionCluster(500, 100)
    try:
        a = c["a"]
        a.clock.advance(10)
        before = drive(a, a.clock.seconds() + 0.45)
        assert len(before) == 50
        a.group.leaseLost("lost for the test")
        assert pacingCalls(a) == []
        assert drive(a, a.clock.seconds() + 5) == []
        a.group.leaseHeld()
        resumed = a.notifies()
        assert len(resumed) == 10
        after = drive(a, a.clock.seconds() + 10)
        calls = [n.callId for _, n in before] + [n.callId for n in resumed] + [n.callId for _, n in after]
        assert len(calls) == len(set(calls)) == 500
        assert pacingCalls(a) == []
    finally:
        c.stop()


def test_withoutClusterNothingChanges():
    """
    A manager without peers has no cluster and writes as before.
    """
    h = Harness()
    try:
        assert h.manager.cluster is None
        h.published()
    finally:
        h.stop()


# Configuration.


def writeSecrets(path: Any, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(str(path), mode)
    return str(path)


def test_loadSecrets(tmp_path):
    path = writeSecrets(
        tmp_path / "s",
        "# managers\nm1 0123456789abcdef0123\nm2=abcdefabcdefabcdefab==\n\nm3 = zzzzzzzzzzzzzzzzzzzz\n",
    )
    assert loadSecrets(path) == {
        "m1": b"0123456789abcdef0123", "m2": b"abcdefabcdefabcdefab==", "m3": b"zzzzzzzzzzzzzzzzzzzz",
    }


@pytest.mark.parametrize(
    "text,mode,complaint",
    [
        ("m1 0123456789abcdef0123\n", 0o640, "chmod 600"),
        ("m1 short\n", 0o600, "at least 16"),
        ("m1\n", 0o600, "NAME SECRET"),
        ("m1 0123456789abcdef0123\nm1 0123456789abcdef0123\n", 0o600, "twice"),
    ],
)
def test_badSecrets(tmp_path, text, mode, complaint):
    path = writeSecrets(tmp_path / "s", text, mode)
    with pytest.raises(SecretError) as e:
        loadSecrets(path)
    assert complaint in str(e.value)


def test_configKeys(tmp_path):
    path = writeSecrets(tmp_path / "s", "m1 0123456789abcdef0123\nm2 0123456789abcdef0124\n")
    config = Config.fromString(
        "[manager]\nnode = m1\n[cluster]\nlisten = tcp:7400:interface=127.0.0.3\n"
        "peers = m1=tcp:127.0.0.3:7400 m2=tcp:127.0.0.4:7400\nsecret_file = %s\nadopt_after = 3\n"
        "page_size = 50\nlease_time = 3\nlease_interval = 0.5\n" % (path,)
    )
    assert config.clusterPeers == (PeerSpec("m1", "tcp:127.0.0.3:7400"), PeerSpec("m2", "tcp:127.0.0.4:7400"))
    assert (config.clusterAdoptAfter, config.clusterPageSize) == (3.0, 50)
    assert (config.clusterLeaseTime, config.clusterLeaseInterval) == (3.0, 0.5)
    assert (Config().clusterLeaseTime, Config().clusterLeaseInterval) == (5.0, 1.0)
    assert Config().clusterAdoptNotifyRate == 1000
    assert Config.fromString("[cluster]\nadopt_notify_rate = 50\n").clusterAdoptNotifyRate == 50
    assert clusterProblem(config) is None
    assert "no secret for m3" in (clusterProblem(config.replace(node="m3")) or "")
    assert clusterProblem(Config()) is None


@pytest.mark.parametrize(
    "text",
    [
        "[cluster]\npeers = m1=tcp:127.0.0.3:7400\n",
        "[cluster]\nlisten = tcp:7400\nsecret_file = x\npeers = m1\n",
        "[cluster]\nlisten = tcp:7400\nsecret_file = x\npeers = m1=bogus:1\n",
        "[cluster]\nlisten = nope:1\n",
        "[cluster]\nadopt_after = 0\n",
        "[cluster]\nlease_time = 2\n",
        "[cluster]\nlease_time = 3\nlease_interval = 1.5\n",
        "[cluster]\nlease_interval = 0\n",
        "[cluster]\nadopt_notify_rate = 0\n",
        "[cluster]\nadopt_notify_rate = 2.5\n",
    ],
)
def test_badConfig(text):
    with pytest.raises(ConfigError):
        Config.fromString(text)


def test_parsePeers():
    assert [str(spec) for spec in parsePeers("a=tcp:10.0.0.1:1 b=tcp:10.0.0.2:2")] == [
        "a=tcp:10.0.0.1:1", "b=tcp:10.0.0.2:2",
    ]
    with pytest.raises(ValueError):
        parsePeers("a=tcp:10.0.0.1:1 a=tcp:10.0.0.2:2")


# The store methods adoption and lookups rest on, on every store.


@pytest_twisted.inlineCallbacks
def test_storeAdoptSubscriptions(anyStore):
    for n, owner in ((1, "m2"), (2, "m2"), (3, "m1")):
        yield anyStore.addSubscription(sub(n, owner=owner, localCSeq=100 * n))
    # m2 never ran with a lease: nothing to fence, its rows move.
    adopted, remaining = yield anyStore.fenceAndAdopt("m2", "m1")
    assert remaining == 0.0
    assert sorted(adopted, key=lambda r: r.id) == [sub(1, owner="m1", localCSeq=100), sub(2, owner="m1", localCSeq=200)]
    assert (yield anyStore.loadSubscriptions("m2")) == []
    assert len((yield anyStore.loadSubscriptions("m1"))) == 3
    assert (yield anyStore.fenceAndAdopt("m2", "m3")) == ([], 0.0)


@pytest_twisted.inlineCallbacks
def test_storeFindSubscription(anyStore):
    yield anyStore.addSubscription(sub(1))
    yield anyStore.addSubscription(sub(2, presentity="sip:carol@example.test"))
    record = sub(1)
    assert (yield anyStore.findSubscription(record.presentity, record.callId, record.localTag)) == record
    assert (yield anyStore.findSubscription(record.presentity, record.callId, "other")) is None
    assert (yield anyStore.findSubscription("sip:carol@example.test", record.callId, record.localTag)) is None


@pytest_twisted.inlineCallbacks
def test_storeGetPublication(anyStore):
    yield anyStore.putPublication(pub("e1"))
    assert (yield anyStore.getPublication("e1")) == pub("e1")
    assert (yield anyStore.getPublication("e2")) is None


@pytest_twisted.inlineCallbacks
def test_concurrentAdoptionIsAtomic(pgUrl):
    """
    Two managers adopt the same dead one at the same instant, each on its
    own connection: every subscription goes to exactly one of them, with
    or without a lease (L{ILeaseStore.fenceAndAdopt}).
    """
    from presence.store import SQLStore

    first, second = SQLStore(pgUrl), SQLStore(pgUrl)
    yield first.start()
    yield second.start()
    try:
        yield DeferredList([first.addSubscription(sub(n, owner="dead")) for n in range(300)])
        results = yield DeferredList(
            [first.fenceAndAdopt("dead", "m1"), second.fenceAndAdopt("dead", "m3")],
            fireOnOneErrback=True,
        )
        one = set(record.id for record in results[0][1][0])
        other = set(record.id for record in results[1][1][0])
        assert not one & other
        assert len(one | other) == 300
        owners = set(record.owner for record in (yield first.loadSubscriptions()))
        assert owners <= {"m1", "m3"}

        # With leases (the database's clock): a lease already run out is
        # fenced and exactly one adopter takes every row; a live one is
        # fenced by neither and its rows stay.
        yield first.registerLease("expired", -1.0)
        yield second.registerLease("alive", 60.0)
        yield DeferredList(
            [first.addSubscription(sub("x%d" % n, owner="expired")) for n in range(300)]
            + [first.addSubscription(sub("y%d" % n, owner="alive")) for n in range(50)]
        )
        results = yield DeferredList(
            [first.fenceAndAdopt("expired", "m1"), second.fenceAndAdopt("expired", "m3")],
            fireOnOneErrback=True,
        )
        taken = sorted(len(result[1][0]) for result in results)
        assert taken == [0, 300] and [result[1][1] for result in results] == [0.0, 0.0]
        results = yield DeferredList(
            [first.fenceAndAdopt("alive", "m1"), second.fenceAndAdopt("alive", "m3")],
            fireOnOneErrback=True,
        )
        assert [result[1][0] for result in results] == [None, None]
        assert all(50.0 < result[1][1] <= 60.0 for result in results)
        owners = [record.owner for record in (yield first.loadSubscriptions())]
        assert owners.count("alive") == 50 and "expired" not in owners
        epochs = {lease.node: lease.epoch for lease in (yield first.loadLeases())}
        assert epochs["alive"] == 1 and epochs["expired"] in (2, 3)
    finally:
        yield first.stop()
        yield second.stop()


def test_serviceTreeHasTheCluster(tmp_path):
    """
    C{twistd presence --role=manager} with C{[cluster] peers} runs a
    cluster service after the manager; without peers it runs none.
    """
    from presence.cluster.service import ClusterService
    from presence.tap import Options, makeService

    secrets = writeSecrets(tmp_path / "s", "m1 0123456789abcdef0123\nm2 0123456789abcdef0124\n")
    ini = tmp_path / "presence.ini"
    ini.write_text(
        "[manager]\nnode = m1\n[cluster]\nlisten = tcp:0:interface=127.0.0.1\n"
        "peers = m1=tcp:127.0.0.1:1 m2=tcp:127.0.0.1:2\nsecret_file = %s\nquorum = 1\n" % (secrets,)
    )
    database = "sqlite:///%s" % (tmp_path / "db.sqlite",)
    options = Options()
    options.parseOptions(["--config", str(ini), "--role=manager", "--database", database])
    assert options.config.clusterQuorum == 1
    names = [child.name for child in makeService(options)]
    assert names.index("cluster") > names.index("manager")
    options = Options()
    options.parseOptions(["--role=manager", "--database", database])
    assert not [child for child in makeService(options) if isinstance(child, ClusterService)]
