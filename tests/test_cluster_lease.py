"""
Fencing a partitioned manager with a lease per manager in the database
(L{presence.cluster.lease}, L{presence.interfaces.ILeaseStore}).

The store contract first, on the memory store, SQLite and PostgreSQL;
then clusters of real managers (L{tests.harness.Harness}) whose groups
keep leases in one shared store of each kind, time on their own
L{Clock}s and the database's on another, advanced together in small
steps.

What they show: leases are renewed; a manager whose links are down but
whose lease is live is not adopted (it keeps notifying its watchers);
once its lease has expired it is adopted and its epoch bumped; it had
stopped notifying before that, and on its next renewal it sees the new
epoch, drops what was adopted with the NOTIFYs it held, and resumes
under a new epoch; a manager that cannot renew (writes failing or stuck)
stops notifying before its lease could expire and resumes, sending what
it held once, when a renewal with its epoch succeeds again.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from presence.cluster.group import PeerGroup
from presence.cluster.lease import ManagerLease
from presence.interfaces import ILeaseStore
from presence.store import MemoryStore, SQLStore, StoreError
from presence.store.records import LeaseRecord
from tests.harness import pidf
from tests.test_cluster import BOB, Cluster, Node, update
from tests.test_store import noStoreThreadsLeft, pgUrl, sub  # noqa: F401 (fixtures)

#: The database's clock starts far from the managers' (1_000_000): lease
#: times are compared only with each other.
DB_EPOCH = 1_700_000_000.0

LEASE = dict(adoptAfter=10.0, leaseTime=5.0, leaseInterval=1.0)


def makeStore(kind: str, clock: Clock, request: Any, tmp_path: Any) -> Any:
    """
    A store of C{kind}, not started, whose lease times come from C{clock}.
    """
    if kind == "memory":
        store: Any = MemoryStore(clock=clock)
    else:
        url = "sqlite:///%s" % (tmp_path / "leases.sqlite",) if kind == "sqlite" else request.getfixturevalue("pgUrl")
        store = SQLStore(url)
        store.leaseClock = clock.seconds
    return store


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def kind(request: Any) -> str:
    return request.param


@pytest.fixture
def dbClock() -> Clock:
    clock = Clock()
    clock.advance(DB_EPOCH)
    return clock


@pytest.fixture
def leaseStore(kind: str, dbClock: Clock, request: Any, tmp_path: Any) -> Iterator[Any]:
    store = makeStore(kind, dbClock, request, tmp_path)
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


# The store contract.


@pytest_twisted.inlineCallbacks
def test_leaseContract(leaseStore: Any, dbClock: Clock) -> Any:
    """
    Register inserts epoch 1 (and bumps it when registering again);
    renewal extends only the epoch held; fenceAndAdopt refuses a live
    lease, saying for how long, and once it has expired bumps the epoch
    and moves the subscriptions in one go.
    """
    assert verifyObject(ILeaseStore, leaseStore)
    now = dbClock.seconds()
    assert (yield leaseStore.registerLease("m2", 5.0)) == LeaseRecord("m2", now + 5.0, 1)
    for n in (1, 2):
        yield leaseStore.addSubscription(sub(n, owner="m2"))
    dbClock.advance(2)
    assert (yield leaseStore.renewLease("m2", 1, 5.0)) == LeaseRecord("m2", now + 7.0, 1)
    assert (yield leaseStore.renewLease("m2", 2, 5.0)) is None
    assert (yield leaseStore.renewLease("nobody", 1, 5.0)) is None
    dbClock.advance(1)
    records, remaining = yield leaseStore.fenceAndAdopt("m2", "m1")
    assert records is None and remaining == pytest.approx(4.0)
    assert (yield leaseStore.loadSubscriptions("m2")) != []
    dbClock.advance(4.5)
    records, remaining = yield leaseStore.fenceAndAdopt("m2", "m1")
    assert sorted(r.id for r in records) == ["sub-1", "sub-2"] and remaining == 0.0
    assert set(r.owner for r in (yield leaseStore.loadSubscriptions())) == {"m1"}
    assert (yield leaseStore.loadLeases()) == [LeaseRecord("m2", now + 7.0, 2)]
    # The fenced owner's renewal matches nothing; it registers again.
    assert (yield leaseStore.renewLease("m2", 1, 5.0)) is None
    assert (yield leaseStore.registerLease("m2", 5.0)) == LeaseRecord("m2", dbClock.seconds() + 5.0, 3)
    # A manager that never had a lease is adopted as before.
    yield leaseStore.addSubscription(sub(3, owner="legacy"))
    records, _ = yield leaseStore.fenceAndAdopt("legacy", "m1")
    assert [r.id for r in records] == ["sub-3"]
    assert sorted(lease.node for lease in (yield leaseStore.loadLeases())) == ["m2"]


@pytest_twisted.inlineCallbacks
def test_postgresLeasesUseTheServersClock(pgUrl: str) -> Any:  # noqa: F811
    """
    Without a test clock, PostgreSQL's own clock stamps the leases (the
    test server runs on this host, so it is close to ours).
    """
    store = SQLStore(pgUrl)
    yield store.start()
    try:
        before = time.time()
        lease = yield store.registerLease("m1", 5.0)
        assert before + 5.0 - 1.0 < lease.expiresAt < time.time() + 5.0 + 1.0
        records, remaining = yield store.fenceAndAdopt("m1", "m2")
        assert records is None and 3.0 < remaining <= 5.0
        # A lease already run out (negative duration) is fenced at once.
        yield store.registerLease("m3", -1.0)
        records, remaining = yield store.fenceAndAdopt("m3", "m2")
        assert records == [] and remaining == 0.0
        assert {lease.node: lease.epoch for lease in (yield store.loadLeases())} == {"m1": 1, "m3": 2}
    finally:
        yield store.stop()


# The lease keeper alone.


class Holder:
    """
    Records what a L{ManagerLease} tells its holder.
    """

    def __init__(self) -> None:
        self.events: List[str] = []

    def leaseLost(self, reason: str) -> None:
        self.events.append("lost: " + reason)

    def leaseHeld(self) -> None:
        self.events.append("held")

    def leaseTaken(self, epoch: int) -> None:
        self.events.append("taken %d" % (epoch,))


def test_leaseKeeperRefusesTightTiming() -> None:
    with pytest.raises(ValueError):
        ManagerLease("m1", MemoryStore(), Clock(), Holder(), leaseTime=2.0, interval=1.0)
    with pytest.raises(ValueError):
        PeerGroup("m1", ["m2"], Clock(), leaseTime=2.0, leaseInterval=1.0)


def test_leaseKeeperTimeline() -> None:
    """
    Registered and reconciled, then held; renewals every second; lost
    C{leaseTime - interval} after the last good renewal was issued;
    held again after the next good one.
    """
    clock = Clock()
    store = LeaseFaults(MemoryStore(clock=clock))
    store.inner.start()
    holder = Holder()
    lease = ManagerLease("m1", store, clock, holder, leaseTime=5.0, interval=1.0)
    lease.start()
    assert holder.events == ["taken 1", "held"] and lease.epoch == 1
    clock.pump([1.0] * 3)
    assert lease.counters["renewals"] == 3 and store.inner.leases["m1"].expiresAt == 8.0
    store.failing = True
    clock.pump([1.0] * 3)
    assert holder.events == ["taken 1", "held"]
    clock.advance(1.0)
    # Last good renewal issued at 3: stop at 3 + 5 - 1 = 7, while the
    # database's lease runs to 8.
    assert clock.seconds() == 7.0 and holder.events[-1] == "lost: ran out"
    assert store.inner.leases["m1"].expiresAt - clock.seconds() == 1.0
    store.failing = False
    clock.advance(1.0)
    assert holder.events[-1] == "held" and lease.epoch == 1
    lease.stop()
    assert clock.getDelayedCalls() == []


# Clusters whose managers keep leases.


class LeaseFaults:
    """
    One manager's handle on the shared store: its lease writes can be
    made to fail or to hang (the database unreachable, or a stuck write),
    and every Deferred it hands out is tracked, so that a test waits for
    the store's threads without sleeping.
    """

    LEASE_WRITES = frozenset(["registerLease", "renewLease"])

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = False
        self.hanging = False
        self.hung: List[Any] = []
        self.outstanding: Set[Deferred] = set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in LeaseFaults.LEASE_WRITES:
                if self.failing:
                    return fail(StoreError("injected: the database is unreachable"))
                if self.hanging:
                    d: Deferred = Deferred()
                    self.hung.append((d, attribute, args, kwargs))
                    return d
            result = attribute(*args, **kwargs)
            if isinstance(result, Deferred) and not result.called:
                self.outstanding.add(result)

                def done(value: Any, d: Deferred = result) -> Any:
                    self.outstanding.discard(d)
                    return value

                result.addBoth(done)
            return result

        return call

    def release(self) -> None:
        """
        Let the stuck lease writes through now (late).
        """
        self.hanging = False
        hung, self.hung = self.hung, []
        for d, method, args, kwargs in hung:
            result = method(*args, **kwargs)
            if isinstance(result, Deferred) and not result.called:
                self.outstanding.add(result)
                result.addBoth(lambda value, r=result: (self.outstanding.discard(r), value)[1])
            if isinstance(result, Deferred):
                result.chainDeferred(d)
            else:
                d.callback(result)


class LeaseCluster(Cluster):
    """
    Managers sharing one store, each keeping its lease in it (links made
    and cut as in L{Cluster}).
    """

    def __init__(self, store: Any, dbClock: Clock, names: Sequence[str] = ("a", "b", "c")) -> None:
        self.shared = store
        self.db = dbClock
        self.faults: Dict[str, LeaseFaults] = {name: LeaseFaults(store) for name in names}
        self.nodes: Dict[str, Node] = {
            name: Node(name, self.faults[name], names, groupOptions=LEASE) for name in names
        }

    def isolate(self, name: str) -> None:
        """
        Cut every PB link of C{name}; it keeps the database.
        """
        for other in self.nodes:
            if other != name:
                self.cut(name, other)

    @inlineCallbacks
    def settle(self) -> Any:
        """
        Wait until no store call of any manager is in flight (the SQL
        store's threads), letting every node's zero-delay calls run.
        """
        for _ in range(100):
            for node in self.nodes.values():
                node.clock.advance(0)
            outstanding = [d for faults in self.faults.values() for d in faults.outstanding]
            if not outstanding:
                return
            yield DeferredList(outstanding, consumeErrors=True)
        raise AssertionError("the store never settled")

    @inlineCallbacks
    def advance(self, seconds: float, step: float = 0.25, each: Any = None) -> Any:
        """
        Move every clock on by C{seconds}, C{step} at a time, the
        database's first; after each step wait for the store and call
        C{each()}.
        """
        for _ in range(int(round(seconds / step))):
            self.db.advance(step)
            for node in self.nodes.values():
                node.clock.advance(step)
            yield self.settle()
            if each is not None:
                each()

    @inlineCallbacks
    def owners(self) -> Any:
        records = yield self.shared.loadSubscriptions()
        return {record.id: record.owner for record in records}

    @inlineCallbacks
    def lease(self, name: str) -> Any:
        leases = yield self.shared.loadLeases()
        return {lease.node: lease for lease in leases}.get(name)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
def leaseCluster(leaseStore: Any, dbClock: Clock) -> Iterator[LeaseCluster]:
    cluster = LeaseCluster(leaseStore, dbClock)
    pytest_twisted.blockon(cluster.settle())
    cluster.linkAll()
    yield cluster
    cluster.stop()
    pytest_twisted.blockon(cluster.settle())


@inlineCallbacks
def watched(cluster: LeaseCluster, owner: str, n: int = 1) -> Any:
    """
    A subscription to bob stored as C{owner}'s and served by it.
    """
    node = cluster[owner]
    record = sub(
        n, owner=owner, presentity=BOB, expiresAt=node.clock.seconds() + 3600.0, localCSeq=100,
        transport="UDP", routeSet=(),
    )
    yield cluster.shared.addSubscription(record)
    node.manager.adopt([record], notify=False)
    return record


def change(cluster: LeaseCluster, names: Sequence[str], etag: str, note: str, version: int = 1) -> None:
    """
    A new publication of bob reaches the managers C{names} (replication
    as far as the links allow).
    """
    body = pidf(BOB).replace(b"</tuple>", b"<note>" + note.encode() + b"</note></tuple>")
    for name in names:
        node = cluster[name]
        now = node.clock.seconds()
        publication = update(
            etag, body, expiresAt=now + 3600.0, modifiedAt=now, version=version, origin="elsewhere"
        )
        node.group.receive([publication], "elsewhere")


def test_clusterFixtureHasLeases(leaseCluster: LeaseCluster) -> None:
    """
    Without a lease (the default of L{PeerGroup}), a group never fences
    its manager: every group of the fixture the tests below use has one.
    """
    assert PeerGroup("a", ["b"], Clock()).lease is None
    groups = [node.group for node in leaseCluster.nodes.values()]
    assert groups and all(group.lease is not None and group.leaseTime == 5.0 for group in groups)


@pytest_twisted.inlineCallbacks
def test_managersRenewTheirLeases(kind: str, dbClock: Clock, request: Any, tmp_path: Any) -> Any:
    """
    Each manager starts fenced until its lease is registered, then
    renews it every lease_interval for lease_time.
    """
    store = makeStore(kind, dbClock, request, tmp_path)
    yield store.start()
    cluster = LeaseCluster(store, dbClock)
    try:
        if kind != "memory":
            # The registration is in flight: nothing may be notified yet.
            assert all(node.manager.notifier.fenced for node in cluster.nodes.values())
        yield cluster.settle()
        assert not any(node.manager.notifier.fenced for node in cluster.nodes.values())
        start = dbClock.seconds()
        first = yield cluster.lease("b")
        assert first == LeaseRecord("b", start + 5.0, 1)
        yield cluster.advance(3.0)
        renewed = yield cluster.lease("b")
        assert renewed.epoch == 1 and renewed.expiresAt == start + 3.0 + 5.0
        assert cluster["b"].group.lease.counters["renewals"] == 3
    finally:
        cluster.stop()
        yield cluster.settle()
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_partitionedManagerWithLiveLeaseIsNotAdopted(leaseCluster: LeaseCluster) -> Any:
    """
    b's links to a and c are down for three times adopt_after, but b
    still renews its lease: a and c (a quorum) do not adopt its watcher,
    and b alone notifies it.
    """
    cluster = leaseCluster
    record = yield watched(cluster, "b")
    cluster.isolate("b")
    yield cluster.advance(30.0)
    assert (yield cluster.owners()) == {record.id: "b"}
    assert cluster["a"].group.counters["adoptionsLeaseLive"] >= 2
    assert cluster["a"].group.counters["adopted"] == cluster["c"].group.counters["adopted"] == 0
    assert not cluster["b"].manager.notifier.fenced
    change(cluster, ["b"], "e1", "while-partitioned")
    [notify] = cluster["b"].notifies()
    assert b"while-partitioned" in notify.body
    assert cluster["a"].notifies() == [] and cluster["c"].notifies() == []
    # The links come back: still b's, nobody else notifies it.
    cluster.link("a", "b")
    cluster.link("b", "c")
    yield cluster.advance(15.0)
    assert (yield cluster.owners()) == {record.id: "b"}
    change(cluster, ["a", "b", "c"], "e2", "healed")
    assert len(cluster["b"].notifies()) == 1
    assert cluster["a"].notifies() == [] and cluster["c"].notifies() == []


@pytest_twisted.inlineCallbacks
def test_expiredLeaseAdoptedAndFormerOwnerFenced(leaseCluster: LeaseCluster) -> Any:
    """
    b is cut off from its peers (lease live: not adopted), then from the
    database too: it stops notifying one lease_interval before its lease
    expires; after that a survivor fences it (epoch bumped) and adopts.
    Back, b's next renewal finds the new epoch: it drops the adopted
    watcher and the NOTIFY it held for it, registers a new epoch and
    serves again, while the adopter alone notifies the watcher.
    """
    cluster = leaseCluster
    record = yield watched(cluster, "b")
    b = cluster["b"]
    cluster.isolate("b")
    yield cluster.advance(12.0)
    assert (yield cluster.owners()) == {record.id: "b"}
    assert cluster["a"].group.counters["adoptionsLeaseLive"] == 1
    cluster.faults["b"].failing = True
    seen: Dict[str, Optional[float]] = {"fenced": None, "adopted": None}
    owners: Dict[str, str] = {}

    def watch() -> None:
        now = cluster.db.seconds()
        if seen["fenced"] is None and b.manager.notifier.fenced:
            seen["fenced"] = now
        holder = [n for n in ("a", "c") if record.id in cluster[n].manager.subscriptions]
        if seen["adopted"] is None and holder:
            seen["adopted"] = now
            owners["by"] = holder[0]

    yield cluster.advance(10.0, each=watch)
    fencedAt, adoptedAt = seen["fenced"], seen["adopted"]
    assert fencedAt is not None and adoptedAt is not None
    # b stopped notifying at least lease_interval before anyone adopted.
    assert adoptedAt - fencedAt >= 1.0
    adopter = cluster[owners["by"]]
    assert (yield cluster.owners()) == {record.id: adopter.name}
    # Fenced: bumped once, or twice when both survivors fenced it.
    fencedEpoch = (yield cluster.lease("b")).epoch
    assert fencedEpoch in (2, 3)
    [adopted] = adopter.notifies()
    assert adopted.cseq().number > record.localCSeq
    # b, fenced, takes a change but holds its NOTIFY back.
    change(cluster, ["b"], "e1", "held-back")
    assert b.notifies() == [] and len(b.manager.notifier.held) == 1
    assert record.id in b.manager.subscriptions
    # The database is back for b: it learns it was fenced.
    cluster.faults["b"].failing = False
    yield cluster.advance(2.0)
    assert b.group.lease.counters["fenced"] == 1
    assert b.manager.subscriptions == {} and b.manager.notifier.held == {}
    assert not b.manager.notifier.fenced
    assert (yield cluster.lease("b")).epoch == b.group.lease.epoch == fencedEpoch + 1
    assert b.notifies() == []
    change(cluster, [adopter.name, "b"], "e2", "after", version=2)
    assert b.notifies() == []
    [after] = adopter.notifies()
    assert b"after" in after.body and after.cseq().number == adopted.cseq().number + 1


@pytest.mark.parametrize("fault", ["failing", "hanging"])
@pytest_twisted.inlineCallbacks
def test_managerThatCannotRenewStopsNotifyingThenResumes(leaseCluster: LeaseCluster, fault: str) -> Any:
    """
    b's lease writes fail (or hang): b holds its NOTIFYs back before its
    lease could expire, so before any survivor may adopt; when a renewal
    with its epoch succeeds again it sends the held state once.
    """
    cluster = leaseCluster
    record = yield watched(cluster, "b")
    b = cluster["b"]
    before = yield cluster.lease("b")
    setattr(cluster.faults["b"], fault, True)
    yield cluster.advance(3.0)
    assert not b.manager.notifier.fenced
    yield cluster.advance(1.0)
    assert b.manager.notifier.fenced
    # The lease in the database still runs for a lease_interval.
    assert before.expiresAt - cluster.db.seconds() == 1.0
    change(cluster, ["b"], "e1", "first")
    change(cluster, ["b"], "e2", "second", version=2)
    assert b.notifies() == []
    assert b.manager.notifier.counters["held"] == 1
    if fault == "failing":
        cluster.faults["b"].failing = False
    else:
        cluster.faults["b"].release()
    yield cluster.advance(1.0)
    assert not b.manager.notifier.fenced and b.group.lease.epoch == 1
    [notify] = b.notifies()
    assert b"second" in notify.body
    assert (yield cluster.owners()) == {record.id: "b"}
    yield cluster.advance(2.0)
    assert b.notifies() == []


@pytest_twisted.inlineCallbacks
def test_fencedManagerAdoptsNothing(leaseCluster: LeaseCluster) -> Any:
    """
    A manager whose own lease is not safe does not adopt a dead peer,
    even with a quorum reachable.
    """
    cluster = leaseCluster
    record = yield watched(cluster, "c")
    cluster["c"].crash()
    cluster.cut("a", "c")
    cluster.cut("b", "c")
    cluster.faults["a"].failing = True
    cluster.faults["b"].failing = True
    yield cluster.advance(12.0)
    assert (yield cluster.owners()) == {record.id: "c"}
    cluster.faults["a"].failing = False
    yield cluster.advance(3.0)
    assert (yield cluster.owners()) == {record.id: "a"}
