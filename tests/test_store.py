"""
Tests for L{presence.store}: the IStore contract on MemoryStore, SQLite and
PostgreSQL alike, then what only the SQL store does (group commit, flush on
stop, schema upgrades, SQLite pragmas, pickling).

PostgreSQL tests run in a schema of their own, created and dropped per test,
so parallel runs do not collide; they skip when the server is unreachable
unless PRESENCE_REQUIRE_ALL=1.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import socket
import threading
from typing import Any, Dict, Iterator, List

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer
from zope.interface.verify import verifyObject

from presence.interfaces import IStore
from presence.store import (
    CURRENT_VERSION,
    BindingRecord,
    DuplicateRecord,
    MemoryStore,
    NoSuchRecord,
    PublicationRecord,
    SchemaTooNew,
    SQLStore,
    StoreNotRunning,
    StoreService,
    SubscriptionRecord,
)
from presence.store import schema
from presence.store.driversql import arrayLiteral
from presence.store.sql import createEngine
from tests.conftest import postgresSchema, skipOrFail

@pytest.fixture
def pgUrl() -> Iterator[str]:
    """
    A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards.
    """
    with postgresSchema("presence_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-pg8000"])
def sqlUrl(request: Any, tmp_path: Any) -> str:
    """
    A URL of an empty database, for each SQL backend (and PostgreSQL
    driver).
    """
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "store.sqlite",)
    if request.param == "postgresql-pg8000":
        return pg8000Url(request.getfixturevalue("pgUrl"))
    return request.getfixturevalue("pgUrl")


@pytest.fixture
def sqlStore(sqlUrl: str) -> Iterator[SQLStore]:
    """
    A started SQLStore on each SQL backend.
    """
    store = SQLStore(sqlUrl)
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


def pg8000Url(url: str) -> str:
    """
    C{url} with the pg8000 driver: the PostgreSQL driver of the PyPy
    deployment (psycopg's ctypes binding fails on Debian's PyPy), whose
    positional parameters take another path through the store's writer.
    """
    try:
        import pg8000  # noqa: F401
    except ImportError:
        skipOrFail("pg8000 is not installed (pip install '.[test]')")
    return sa.engine.make_url(url).set(drivername="postgresql+pg8000").render_as_string(hide_password=False)


@pytest.fixture(params=["memory", "sqlite", "postgresql", "postgresql-pg8000"])
def anyStore(request: Any, tmp_path: Any) -> Iterator[Any]:
    """
    A started store of every implementation: the contract tests run on each.
    """
    if request.param == "memory":
        store: Any = MemoryStore()
    elif request.param == "sqlite":
        store = SQLStore("sqlite:///%s" % (tmp_path / "store.sqlite",))
    elif request.param == "postgresql-pg8000":
        store = SQLStore(pg8000Url(request.getfixturevalue("pgUrl")))
    else:
        store = SQLStore(request.getfixturevalue("pgUrl"))
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


def _storeThreads() -> List[str]:
    return [t.name for t in threading.enumerate() if "presence-store" in t.name]


@pytest.fixture(autouse=True)
def noStoreThreadsLeft() -> Iterator[None]:
    """
    Fail a test that leaves store threads running (conftest's cleanReactor
    checks delayed calls and descriptors).
    """
    yield
    assert not _storeThreads(), "store threads left behind: %r" % (_storeThreads(),)


def sub(n: Any, **changes: Any) -> SubscriptionRecord:
    """
    A subscription record numbered C{n}, with C{changes} applied.
    """
    fields: Dict[str, Any] = dict(
        id="sub-%s" % (n,),
        callId="call-%s@192.0.2.10" % (n,),
        localTag="lt%s" % (n,),
        remoteTag="rt%s" % (n,),
        watcher="sip:alice%s@example.test" % (n,),
        presentity="sip:bob@example.test",
        event="presence",
        accept="application/pidf+xml",
        remoteTarget="sip:alice@192.0.2.10:5060;transport=udp",
        expiresAt=2000000000.5,
        state="active",
        owner="manager-a",
        transport="udp",
        peerHost="192.0.2.10",
        peerPort=5060,
        createdAt=1700000000.25,
        routeSet=("<sip:proxy1.example.test;lr>", "<sip:proxy2.example.test;lr>"),
        eventId="",
        localCSeq=1,
        remoteCSeq=314159,
        flowToken="flow-%s" % (n,),
    )
    fields.update(changes)
    return SubscriptionRecord(**fields)


def pub(etag: str, **changes: Any) -> PublicationRecord:
    """
    A publication record with entity-tag C{etag}, with C{changes} applied.
    """
    fields: Dict[str, Any] = dict(
        etag=etag,
        presentity="sip:bob@example.test",
        contentType="application/pidf+xml",
        body=b"<?xml version='1.0'?><presence entity='sip:bob@example.test'/>\x00\xff",
        expiresAt=2000000000.0,
        modifiedAt=1700000000.125,
        version=1,
    )
    fields.update(changes)
    return PublicationRecord(**fields)


def _outcomes(results: List[Any]) -> List[Any]:
    """
    DeferredList results -> value, or the exception type for a failure.
    """
    return [value if ok else value.type for ok, value in results]


# --- records ------------------------------------------------------------------


def test_recordsAreFrozenValues() -> None:
    """
    Records are immutable, normalise the route set to a tuple and refuse
    bad states and text bodies.
    """
    record = sub(1, routeSet=["<sip:p;lr>"])
    assert record.routeSet == ("<sip:p;lr>",)
    assert record == sub(1, routeSet=("<sip:p;lr>",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.state = "terminated"  # type: ignore[misc]
    with pytest.raises(ValueError):
        sub(1, state="bogus")
    with pytest.raises(TypeError):
        sub(1, routeSet="<sip:p;lr>")
    with pytest.raises(TypeError):
        pub("e", body="text")


# --- the IStore contract, on every implementation -----------------------------


def test_providesIStore(anyStore: Any) -> None:
    assert verifyObject(IStore, anyStore)


@pytest_twisted.inlineCallbacks
def test_subscriptionRoundTrip(anyStore: Any) -> Any:
    """
    A subscription reads back equal, field for field, as a plain record.
    """
    record = sub(1, eventId="ev;1", localCSeq=2**31 - 1, routeSet=())
    result = yield anyStore.addSubscription(record)
    assert result is None
    got = yield anyStore.getSubscription(record.id)
    assert got == record
    assert type(got) is SubscriptionRecord
    assert type(got.routeSet) is tuple
    assert (yield anyStore.getSubscription("nope")) is None
    yield anyStore.addSubscription(sub(2))
    loaded = yield anyStore.loadSubscriptions()
    assert sorted(loaded, key=lambda r: r.id) == [record, sub(2)]
    assert all(type(r) is SubscriptionRecord for r in loaded)


@pytest_twisted.inlineCallbacks
def test_loadSubscriptionsByOwner(anyStore: Any) -> Any:
    yield defer.gatherResults(
        [anyStore.addSubscription(sub(i, owner="manager-%s" % ("ab"[i % 2],))) for i in range(6)]
    )
    mine = yield anyStore.loadSubscriptions(owner="manager-b")
    assert sorted(r.id for r in mine) == ["sub-1", "sub-3", "sub-5"]
    assert (yield anyStore.loadSubscriptions(owner="manager-z")) == []


@pytest_twisted.inlineCallbacks
def test_loadSubscriptionsInPages(anyStore: Any) -> Any:
    """
    Pages of one owner's subscriptions in id order: after the last id of
    the previous page, at most limit of them.
    """
    for i in range(7):
        yield anyStore.addSubscription(sub(i, owner="m1" if i != 3 else "m2"))
    pages, after = [], None
    while True:
        page = yield anyStore.loadSubscriptions("m1", after, 4)
        pages.append([r.id for r in page])
        if len(page) < 4:
            break
        after = page[-1].id
    assert pages == [["sub-0", "sub-1", "sub-2", "sub-4"], ["sub-5", "sub-6"]]


@pytest_twisted.inlineCallbacks
def test_updateSubscription(anyStore: Any) -> Any:
    """
    Only the named fields change.
    """
    yield anyStore.addSubscription(sub(1))
    yield anyStore.addSubscription(sub(2))
    changes = dict(
        localCSeq=7, expiresAt=2100000000.75, state="terminated", routeSet=["<sip:x;lr>"], peerPort=5070
    )
    result = yield anyStore.updateSubscription("sub-1", **changes)
    assert result is None
    assert (yield anyStore.getSubscription("sub-1")) == sub(1, **changes)
    assert (yield anyStore.getSubscription("sub-2")) == sub(2)


@pytest_twisted.inlineCallbacks
def test_updateSubscriptionRefusesBadChanges(anyStore: Any) -> Any:
    yield anyStore.addSubscription(sub(1))
    for bad in [{}, {"id": "x"}, {"colour": "red"}, {"state": "bogus"}]:
        with pytest.raises(ValueError):
            yield anyStore.updateSubscription("sub-1", **bad)
    with pytest.raises(TypeError):
        yield anyStore.updateSubscription("sub-1", routeSet="<sip:x;lr>")
    assert (yield anyStore.getSubscription("sub-1")) == sub(1)


@pytest_twisted.inlineCallbacks
def test_updateMissingSubscriptionFails(anyStore: Any) -> Any:
    with pytest.raises(NoSuchRecord):
        yield anyStore.updateSubscription("sub-404", localCSeq=2)


@pytest_twisted.inlineCallbacks
def test_removeSubscription(anyStore: Any) -> Any:
    """
    Removal deletes one subscription; removing a missing one succeeds.
    """
    yield anyStore.addSubscription(sub(1))
    yield anyStore.addSubscription(sub(2))
    assert (yield anyStore.removeSubscription("sub-1")) is None
    assert (yield anyStore.getSubscription("sub-1")) is None
    assert (yield anyStore.removeSubscription("sub-1")) is None
    assert [r.id for r in (yield anyStore.loadSubscriptions())] == ["sub-2"]


@pytest_twisted.inlineCallbacks
def test_duplicateSubscriptionFails(anyStore: Any) -> Any:
    yield anyStore.addSubscription(sub(1))
    with pytest.raises(DuplicateRecord):
        yield anyStore.addSubscription(sub(1, owner="someone-else"))
    assert (yield anyStore.getSubscription("sub-1")) == sub(1)


@pytest_twisted.inlineCallbacks
def test_publicationRoundTrip(anyStore: Any) -> Any:
    """
    putPublication inserts, then replaces by entity-tag; bodies stay bytes.
    """
    yield anyStore.putPublication(pub("e1"))
    yield anyStore.putPublication(pub("e2", presentity="sip:carol@example.test"))
    loaded = yield anyStore.loadPublications()
    assert sorted(loaded, key=lambda r: r.etag) == [pub("e1"), pub("e2", presentity="sip:carol@example.test")]
    assert all(type(r) is PublicationRecord and type(r.body) is bytes for r in loaded)
    replacement = pub("e1", body=b"<new/>", version=2, modifiedAt=1700000001.0, expiresAt=2000000500.0)
    assert (yield anyStore.putPublication(replacement)) is None
    loaded = yield anyStore.loadPublications()
    assert sorted(loaded, key=lambda r: r.etag)[0] == replacement
    assert len(loaded) == 2
    assert (yield anyStore.removePublication("e1")) is None
    assert (yield anyStore.removePublication("e1")) is None
    assert [r.etag for r in (yield anyStore.loadPublications())] == ["e2"]


@pytest_twisted.inlineCallbacks
def test_replacePublication(anyStore: Any) -> Any:
    """
    replacePublication swaps an entity-tag for a new one only while the
    old one is stored: of two replacements of one tag issued together
    (two managers refreshing it at once), the first wins and the second
    fails with NoSuchRecord, changing nothing.
    """
    yield anyStore.putPublication(pub("e1"))
    yield anyStore.putPublication(pub("e9", presentity="sip:carol@example.test"))
    assert (yield anyStore.replacePublication("e1", pub("e2", version=2))) is None
    assert sorted(r.etag for r in (yield anyStore.loadPublications())) == ["e2", "e9"]
    with pytest.raises(NoSuchRecord):
        yield anyStore.replacePublication("e1", pub("e3"))
    results = yield defer.DeferredList(
        [
            anyStore.replacePublication("e2", pub("e4", version=3)),
            anyStore.replacePublication("e2", pub("e5", version=3)),
            anyStore.putPublication(pub("e6", presentity="sip:dave@example.test")),
        ],
        consumeErrors=True,
    )
    assert _outcomes(results) == [None, NoSuchRecord, None]
    assert sorted(r.etag for r in (yield anyStore.loadPublications())) == ["e4", "e6", "e9"]


@pytest_twisted.inlineCallbacks
def test_removeExpired(anyStore: Any) -> Any:
    yield anyStore.addSubscription(sub(1, expiresAt=100.0))
    yield anyStore.addSubscription(sub(2, expiresAt=200.0))
    yield anyStore.putPublication(pub("e1", expiresAt=100.0))
    yield anyStore.putPublication(pub("e2", expiresAt=300.0))
    assert (yield anyStore.removeExpired(99.0)) == (0, 0)
    assert (yield anyStore.removeExpired(100.0)) == (1, 1)
    assert [r.id for r in (yield anyStore.loadSubscriptions())] == ["sub-2"]
    assert [r.etag for r in (yield anyStore.loadPublications())] == ["e2"]


@pytest_twisted.inlineCallbacks
def test_failingWriteFailsOnlyItself(anyStore: Any) -> Any:
    """
    Writes issued together (one batch on the SQL store) where two are bad:
    only those two fail, the others are committed.
    """
    yield anyStore.addSubscription(sub(0))
    ds = [
        anyStore.addSubscription(sub(1)),
        anyStore.addSubscription(sub(2)),
        anyStore.addSubscription(sub(0)),
        anyStore.addSubscription(sub(3)),
        anyStore.updateSubscription("sub-404", localCSeq=9),
        anyStore.updateSubscription("sub-1", localCSeq=9),
        anyStore.putPublication(pub("e1")),
    ]
    results = yield defer.DeferredList(ds, consumeErrors=True)
    assert _outcomes(results) == [None, None, DuplicateRecord, None, NoSuchRecord, None, None]
    loaded = yield anyStore.loadSubscriptions()
    assert sorted(loaded, key=lambda r: r.id) == [sub(0), sub(1, localCSeq=9), sub(2), sub(3)]
    assert (yield anyStore.loadPublications()) == [pub("e1")]
    if isinstance(anyStore, SQLStore):
        assert anyStore.replayCount == 1


@pytest_twisted.inlineCallbacks
def test_writesApplyInOrder(anyStore: Any) -> Any:
    """
    Writes issued together touching the same rows apply in issue order.
    """
    ds = [
        anyStore.addSubscription(sub(1)),
        anyStore.updateSubscription("sub-1", localCSeq=2),
        anyStore.updateSubscription("sub-1", localCSeq=3),
        anyStore.removeSubscription("sub-1"),
        anyStore.addSubscription(sub(1, owner="manager-b")),
        anyStore.updateSubscription("sub-1", state="pending"),
        anyStore.putPublication(pub("e1", version=1)),
        anyStore.putPublication(pub("e1", version=2)),
        anyStore.removePublication("e1"),
        anyStore.putPublication(pub("e1", version=3)),
    ]
    yield defer.gatherResults(ds)
    assert (yield anyStore.loadSubscriptions()) == [sub(1, owner="manager-b", state="pending")]
    assert (yield anyStore.loadPublications()) == [pub("e1", version=3)]


@pytest_twisted.inlineCallbacks
def test_samePublicationTwiceInOneBatch(anyStore: Any) -> Any:
    """
    Two puts of one entity-tag in one batch: the later one is stored,
    without failing the batch (on pg8000 the puts share one upsert, which
    PostgreSQL refuses when it would update a row twice).
    """
    yield defer.gatherResults([anyStore.putPublication(pub("e1", version=v)) for v in (1, 2, 3)])
    if isinstance(anyStore, SQLStore):
        assert anyStore.replayCount == 0, "the batch failed; its one-by-one replay hides why"
    assert (yield anyStore.loadPublications()) == [pub("e1", version=3)]


#: Text that must be quoted or escaped on its way to the database.
AWKWARD = [
    "",
    "NULL",
    'a "quoted" word',
    "back\\slash\\",
    "{braces},commas and spaces",
    "tab\tnewline\n'single' \u00e9\u2603\U0001d11e",
]


@pytest_twisted.inlineCallbacks
def test_awkwardValuesInOneBatch(anyStore: Any) -> Any:
    """
    Writes sharing one batch (on pg8000, one statement per table carrying
    an array per column) store awkward text, arbitrary bytes, unusual
    floats, big integers and NULL as they are, and delete by awkward keys.
    """
    subs = [
        sub(i, watcher=text, remoteTarget=text[::-1], eventId=text, routeSet=(text,), createdAt=1e-07, localCSeq=2**40)
        for i, text in enumerate(AWKWARD)
    ]
    pubs = [
        pub("e%d %s" % (i, text), body=text.encode("utf-8") + bytes(range(256)), modifiedAt=-0.5, version=2**62)
        for i, text in enumerate(AWKWARD)
    ]
    bindings = [
        BindingRecord(
            id="b%d %s" % (i, text),
            aor="sip:bob@example.test",
            contact="sip:bob@192.0.2.1;x=%s" % (text,),
            expiresAt=2000000000.5,
            registeredAt=1700000000.25,
            callId=text,
            cseq=i,
            owner="manager-a",
            transport="TCP",
            peerHost="192.0.2.1",
            peerPort=5060,
            instance=text,
            q=None if i % 2 else i / 10.0,
        )
        for i, text in enumerate(AWKWARD)
    ]
    ds = [anyStore.addSubscription(r) for r in subs]
    ds += [anyStore.putPublication(r) for r in pubs]
    ds += [anyStore.putBinding(r) for r in bindings]
    yield defer.gatherResults(ds)
    if isinstance(anyStore, SQLStore):
        assert anyStore.replayCount == 0, "the batch failed; its one-by-one replay hides why"
    assert sorted((yield anyStore.loadSubscriptions()), key=lambda r: r.id) == subs
    assert sorted((yield anyStore.loadPublications()), key=lambda r: r.etag) == pubs
    assert sorted((yield anyStore.loadBindings()), key=lambda r: r.id) == bindings
    yield defer.gatherResults([anyStore.removePublication(r.etag) for r in pubs[1::2]])
    yield defer.gatherResults([anyStore.removeSubscription(r.id) for r in subs[::2]])
    if isinstance(anyStore, SQLStore):
        assert anyStore.replayCount == 0
    assert sorted((yield anyStore.loadPublications()), key=lambda r: r.etag) == pubs[::2]
    assert sorted((yield anyStore.loadSubscriptions()), key=lambda r: r.id) == subs[1::2]


@pytest_twisted.inlineCallbacks
def test_duplicateInOneBatch(anyStore: Any) -> Any:
    """
    Two new subscriptions with one id in the same batch: the batch fails
    on the duplicate, and its replay keeps the first and fails the second
    alone.
    """
    ds = [
        anyStore.addSubscription(sub(1)),
        anyStore.addSubscription(sub(2)),
        anyStore.addSubscription(sub(1, owner="manager-b")),
        anyStore.addSubscription(sub(3)),
    ]
    results = yield defer.DeferredList(ds, consumeErrors=True)
    assert _outcomes(results) == [None, None, DuplicateRecord, None]
    assert sorted((yield anyStore.loadSubscriptions()), key=lambda r: r.id) == [sub(1), sub(2), sub(3)]
    if isinstance(anyStore, SQLStore):
        assert anyStore.replayCount == 1


@pytest_twisted.inlineCallbacks
def test_refusedWhenNotRunning(anyStore: Any) -> Any:
    """
    After stop(), reads and writes fail with StoreNotRunning; stop() again
    is harmless.  Wrong record types are refused.
    """
    with pytest.raises(TypeError):
        yield anyStore.addSubscription(pub("e1"))
    with pytest.raises(TypeError):
        yield anyStore.putPublication(sub(1))
    yield anyStore.stop()
    for call in [
        lambda: anyStore.addSubscription(sub(1)),
        lambda: anyStore.updateSubscription("sub-1", localCSeq=2),
        lambda: anyStore.removeSubscription("sub-1"),
        lambda: anyStore.putPublication(pub("e1")),
        lambda: anyStore.removePublication("e1"),
        lambda: anyStore.removeExpired(0.0),
        lambda: anyStore.getSubscription("sub-1"),
        lambda: anyStore.loadSubscriptions(),
        lambda: anyStore.loadPublications(),
    ]:
        with pytest.raises(StoreNotRunning):
            yield call()
    yield anyStore.stop()


# --- SQL store only ---------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_groupCommit(sqlStore: SQLStore) -> Any:
    """
    500 writes issued without waiting take a handful of commits.
    """
    batches, commits = sqlStore.batchCount, sqlStore.commitCount
    ds = [sqlStore.addSubscription(sub(i)) for i in range(400)]
    ds += [sqlStore.updateSubscription("sub-%d" % (i,), localCSeq=i + 10) for i in range(50)]
    ds += [sqlStore.putPublication(pub("e%d" % (i,))) for i in range(50)]
    results = yield defer.gatherResults(ds)
    assert results == [None] * 500
    assert sqlStore.batchCount - batches <= 3
    assert sqlStore.commitCount - commits <= 3
    assert sqlStore.writeCount == 500
    assert sqlStore.replayCount == 0
    assert sqlStore.lastBatchSize >= 400
    assert sqlStore.lastCommitLatency > 0
    assert len((yield sqlStore.loadSubscriptions())) == 400
    assert (yield sqlStore.getSubscription("sub-49")).localCSeq == 59


@pytest_twisted.inlineCallbacks
def test_writesOfOneTurnShareABatch(sqlStore: SQLStore) -> Any:
    """
    Writes issued in one reactor turn go to the writer together, the
    first one included: it waits for the end of the turn rather than
    leaving alone and making the others wait for its commit.
    """
    batches, commits = sqlStore.batchCount, sqlStore.commitCount
    ds = [sqlStore.addSubscription(sub(i)) for i in range(3)]
    assert sqlStore.pendingWrites == 3
    yield defer.gatherResults(ds)
    assert sqlStore.pendingWrites == 0
    assert sqlStore.batchCount - batches == 1
    assert sqlStore.commitCount - commits == 1
    assert sqlStore.lastBatchSize == 3


@pytest_twisted.inlineCallbacks
def test_replacePublicationAcrossStores(sqlStore: SQLStore, sqlUrl: str) -> Any:
    """
    Two stores on one database (two managers of a cluster) replacing the
    same entity-tag at once: exactly one succeeds, the database keeps its
    replacement only.
    """
    other = SQLStore(sqlUrl)
    yield other.start()
    try:
        for round in range(5):
            old = "r%d" % (round,)
            yield sqlStore.putPublication(pub(old))
            results = yield defer.DeferredList(
                [
                    sqlStore.replacePublication(old, pub(old + "-a")),
                    other.replacePublication(old, pub(old + "-b")),
                ],
                consumeErrors=True,
            )
            outcomes = _outcomes(results)
            assert sorted(outcomes, key=repr) == sorted([None, NoSuchRecord], key=repr)
            winner = old + ("-a" if outcomes[0] is None else "-b")
            etags = {r.etag for r in (yield other.loadPublications()) if r.etag.startswith(old)}
            assert etags == {winner}
    finally:
        yield other.stop()


@pytest_twisted.inlineCallbacks
def test_leaseWritesJumpTheQueue(sqlUrl: str) -> Any:
    """
    A lease registration or renewal issued behind a backlog of writes goes
    in the next batch, not after the backlog: a busy manager must not
    fence itself for want of a timely renewal.
    """
    store = SQLStore(sqlUrl, maxBatchSize=10)
    yield store.start()
    try:
        order: List[str] = []
        writes = [store.addSubscription(sub(i)).addCallback(lambda _: order.append("sub")) for i in range(60)]
        lease = store.registerLease("m1", 5.0).addCallback(lambda _: order.append("lease"))
        yield defer.gatherResults(writes + [lease])
        assert order.index("lease") <= 10
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_maxBatchSize(sqlUrl: str) -> Any:
    """
    A batch never carries more than maxBatchSize writes.
    """
    store = SQLStore(sqlUrl, maxBatchSize=40)
    yield store.start()
    try:
        yield defer.gatherResults([store.addSubscription(sub(i)) for i in range(200)])
        assert store.batchCount >= 5
        assert store.lastBatchSize <= 40
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_batchBeyondParameterLimit(sqlUrl: str) -> Any:
    """
    One batch of more new subscriptions than one statement could carry as
    bind parameters, one per column and row (PostgreSQL takes 65535), and
    of as many deletes by key.
    """
    store = SQLStore(sqlUrl, maxBatchSize=10000)
    yield store.start()
    try:
        count = 65535 // len(schema.subscriptions.columns) + 1
        yield defer.gatherResults([store.addSubscription(sub(i)) for i in range(count)])
        assert store.lastBatchSize == count
        assert len((yield store.loadSubscriptions())) == count
        yield defer.gatherResults([store.removeSubscription("sub-%d" % (i,)) for i in range(count)])
        assert store.lastBatchSize == count
        assert (yield store.loadSubscriptions()) == []
    finally:
        yield store.stop()


def test_arrayLiteral() -> None:
    """
    Arrays go to PostgreSQL in its text form: text quoted and escaped,
    bytes in hex, None as NULL, numbers as Python writes them.
    """
    values = ["", "NULL", 'say "hi"', "a\\b", b"\x00\xff", None, 1.5, -7, 2**62]
    assert arrayLiteral(values) == '{"","NULL","say \\"hi\\"","a\\\\b","\\\\x00ff",NULL,1.5,-7,4611686018427387904}'


def test_pg8000NoDelay(pgUrl: str) -> None:
    """
    pg8000 connections have Nagle's algorithm off, as libpq's have: with
    it on, a write batch of a few dozen rows waits 40 ms for a delayed
    ACK.
    """
    engine = createEngine(pg8000Url(pgUrl))
    try:
        with engine.connect() as conn:
            sock = conn.connection.driver_connection._usock  # type: ignore[union-attr]
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                pytest.skip("PostgreSQL is reached over a Unix socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        engine.dispose()


@pytest_twisted.inlineCallbacks
def test_stopFlushesQueuedWrites(sqlUrl: str) -> Any:
    """
    stop() commits every write queued before it, and a new store on the same
    database sees them all.
    """
    store = SQLStore(sqlUrl)
    yield store.start()
    ds = [store.addSubscription(sub(i)) for i in range(300)]
    ds.append(store.putPublication(pub("e1")))
    reading = store.loadPublications()
    stopped = store.stop()
    with pytest.raises(StoreNotRunning):
        yield store.addSubscription(sub(999))
    yield stopped
    results = yield defer.DeferredList(ds, consumeErrors=True)
    assert all(ok for ok, _ in results)
    assert isinstance((yield reading), list)
    assert not _storeThreads()
    again = SQLStore(sqlUrl)
    yield again.start()
    try:
        assert len((yield again.loadSubscriptions())) == 300
        assert (yield again.loadPublications()) == [pub("e1")]
        assert again.schemaVersion == CURRENT_VERSION
    finally:
        yield again.stop()


@pytest_twisted.inlineCallbacks
def test_stopWhileStarting(sqlUrl: str) -> Any:
    """
    stop() called before start() has finished waits for it, then stops.
    """
    store = SQLStore(sqlUrl)
    starting = store.start()
    stopping = store.stop()
    yield starting
    yield stopping
    assert not _storeThreads()
    with pytest.raises(StoreNotRunning):
        yield store.loadSubscriptions()


@pytest_twisted.inlineCallbacks
def test_committedWhenFired(sqlStore: SQLStore, sqlUrl: str) -> Any:
    """
    When a write's Deferred fires, an independent connection sees the row.
    """
    seen = []

    def check(_: Any) -> None:
        engine = createEngine(sqlUrl)
        try:
            with engine.connect() as conn:
                seen.append(conn.execute(sa.select(sa.func.count()).select_from(schema.subscriptions)).scalar())
        finally:
            engine.dispose()

    yield sqlStore.addSubscription(sub(1)).addCallback(check)
    assert seen == [1]


@pytest_twisted.inlineCallbacks
def test_databaseWorkOffReactorThread(sqlStore: SQLStore) -> Any:
    """
    Reads run on the reader pool and writes on the single writer thread,
    never on the reactor thread.
    """
    reactorThread = threading.get_ident()
    readThread = yield sqlStore._read(lambda conn: threading.current_thread().name)
    assert "presence-store-reader" in readThread
    writerThreads = set()
    original = sqlStore._applyOps

    def spy(conn: Any, ops: Any) -> Any:
        writerThreads.add(threading.get_ident())
        return original(conn, ops)

    sqlStore._applyOps = spy  # type: ignore[method-assign]
    for i in range(3):
        yield defer.gatherResults([sqlStore.addSubscription(sub("%d-%d" % (i, j))) for j in range(5)])
    assert len(writerThreads) == 1
    assert reactorThread not in writerThreads


@pytest_twisted.inlineCallbacks
def test_freshSchemaMatchesMetadata(sqlStore: SQLStore, sqlUrl: str) -> Any:
    """
    Running every upgrade step yields exactly the tables, columns, keys and
    indexes that METADATA (which the queries use) describes.
    """
    assert sqlStore.schemaVersion == CURRENT_VERSION == len(schema.UPGRADE_STEPS)

    def describe(conn: Any) -> Dict[str, Any]:
        inspector = sa.inspect(conn)
        result = {}
        for table in schema.METADATA.sorted_tables:
            result[table.name] = (
                {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)},
                sorted(inspector.get_pk_constraint(table.name)["constrained_columns"]),
                sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table.name)),
            )
        result["version"] = schema.getSchemaVersion(conn)
        return result

    actual = yield sqlStore._read(describe)
    expected: Dict[str, Any] = {}
    for table in schema.METADATA.sorted_tables:
        expected[table.name] = (
            {c.name: c.nullable and not c.primary_key for c in table.columns},
            sorted(c.name for c in table.primary_key.columns),
            sorted((i.name, tuple(c.name for c in i.columns)) for i in table.indexes),
        )
    expected["version"] = CURRENT_VERSION
    assert actual == expected


def _addAccounts(conn: Any) -> None:
    """
    A future upgrade step: a new table and a new column.
    """
    md = sa.MetaData()
    sa.Table("future_things", md, sa.Column("aor", sa.Text, primary_key=True), sa.Column("active", sa.Boolean))
    md.create_all(conn)
    conn.execute(sa.text("ALTER TABLE publications ADD COLUMN origin TEXT NOT NULL DEFAULT ''"))


def _brokenStep(conn: Any) -> None:
    """
    An upgrade step that fails after doing some DDL.
    """
    conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
    raise RuntimeError("step failed")


def _withEngine(url: str, fn: Any) -> Any:
    engine = createEngine(url)
    try:
        with engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                return fn(conn)
    finally:
        engine.dispose()


@pytest_twisted.inlineCallbacks
def test_upgradeFromOlderVersion(sqlUrl: str) -> Any:
    """
    Upgrade steps run in order from the recorded version: an empty database
    is created step by step, and a database with data takes a later step
    (a new table and column) keeping its rows.
    """
    assert _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, target=0)) == 0
    assert _withEngine(sqlUrl, schema.getSchemaVersion) == 0
    store = SQLStore(sqlUrl)
    yield store.start()
    assert store.schemaVersion == CURRENT_VERSION
    yield store.addSubscription(sub(1))
    yield store.putPublication(pub("e1"))
    yield store.stop()

    steps = schema.UPGRADE_STEPS + [_addAccounts]
    assert _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, steps=steps)) == CURRENT_VERSION + 1

    def check(conn: Any) -> Any:
        inspector = sa.inspect(conn)
        return (
            schema.getSchemaVersion(conn),
            inspector.has_table("future_things"),
            "origin" in [c["name"] for c in inspector.get_columns("publications")],
            conn.execute(sa.select(schema.subscriptions.c.id)).scalars().all(),
            conn.execute(sa.text("SELECT etag, origin FROM publications")).all(),
        )

    assert _withEngine(sqlUrl, check) == (CURRENT_VERSION + 1, True, True, ["sub-1"], [("e1", "")])
    # Running the upgrade again is a no-op.
    assert _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, steps=steps)) == CURRENT_VERSION + 1


@pytest_twisted.inlineCallbacks
def test_failedUpgradeStepRollsBack(sqlUrl: str) -> Any:
    """
    DDL is transactional on both backends: a failing step leaves the
    database at its previous version without half its changes.
    """
    store = SQLStore(sqlUrl)
    yield store.start()
    yield store.stop()
    with pytest.raises(RuntimeError):
        _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, steps=schema.UPGRADE_STEPS + [_brokenStep]))

    def check(conn: Any) -> Any:
        return schema.getSchemaVersion(conn), sa.inspect(conn).has_table("half_done")

    assert _withEngine(sqlUrl, check) == (CURRENT_VERSION, False)


@pytest_twisted.inlineCallbacks
def test_refusesNewerSchema(sqlUrl: str) -> Any:
    """
    A database upgraded by newer code makes start() fail and clean up.
    """
    _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, steps=schema.UPGRADE_STEPS + [_addAccounts]))
    store = SQLStore(sqlUrl)
    with pytest.raises(SchemaTooNew):
        yield store.start()
    assert not _storeThreads()
    with pytest.raises(StoreNotRunning):
        yield store.getSubscription("sub-1")
    yield store.stop()


def _insertOldSubscription(conn: Any) -> None:
    """
    Insert C{sub(1)} into a database older than step 5, with only the
    columns it has (step 5 added C{package_state}).
    """
    conn.execute(sa.insert(schema.subscriptions), [dict(
        {
            column: getattr(sub(1), name)
            for name, column in schema.SUBSCRIPTION_COLUMNS.items()
            if column != "package_state"
        },
        route_set="[]",
    )])


@pytest_twisted.inlineCallbacks
def test_schemaStep4AddsLeases(sqlUrl: str) -> Any:
    """
    A version-3 database (subscriptions, publications, billing, bindings)
    takes step 4 (the managers' leases) with its rows intact, and records
    version 4.
    """
    assert _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, target=3)) == 3

    def fill(conn: Any) -> None:
        assert not sa.inspect(conn).has_table("manager_leases")
        _insertOldSubscription(conn)

    _withEngine(sqlUrl, fill)
    store = SQLStore(sqlUrl)
    yield store.start()
    try:
        assert store.schemaVersion == CURRENT_VERSION >= 4
        assert [r.id for r in (yield store.loadSubscriptions())] == ["sub-1"]
        lease = yield store.registerLease("manager-a", 5.0)
        assert lease.epoch == 1 and (yield store.loadLeases()) == [lease]
    finally:
        yield store.stop()

    def check(conn: Any) -> Any:
        return schema.getSchemaVersion(conn), schema.upgrade(conn)

    assert _withEngine(sqlUrl, check) == (CURRENT_VERSION, CURRENT_VERSION)


@pytest_twisted.inlineCallbacks
def test_startFailureCleansUp(tmp_path: Any) -> Any:
    """
    An unusable database makes start() fail without leaving threads.
    """
    store = SQLStore("sqlite:///%s" % (tmp_path / "missing-dir" / "store.sqlite",))
    with pytest.raises(sa.exc.OperationalError):
        yield store.start()
    assert not _storeThreads()


@pytest_twisted.inlineCallbacks
def test_sqlitePragmas(tmp_path: Any) -> Any:
    """
    SQLite file databases run in WAL mode with synchronous=NORMAL (durable
    against a process crash); FULL can be asked for.
    """
    for mode, expected in [("NORMAL", 1), ("FULL", 2)]:
        store = SQLStore("sqlite:///%s" % (tmp_path / ("%s.sqlite" % (mode,)),), sqliteSynchronous=mode)
        yield store.start()
        try:
            pragmas = yield store._read(
                lambda conn: (
                    conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                    conn.exec_driver_sql("PRAGMA synchronous").scalar(),
                )
            )
            assert pragmas == ("wal", expected)
        finally:
            yield store.stop()
    with pytest.raises(ValueError):
        SQLStore("sqlite:///x.sqlite", sqliteSynchronous="OFF")


@pytest_twisted.inlineCallbacks
def test_sqliteInMemory() -> Any:
    """
    An in-memory SQLite URL works (one connection, one thread).
    """
    store = SQLStore("sqlite://")
    yield store.start()
    try:
        yield store.addSubscription(sub(1))
        assert (yield store.loadSubscriptions()) == [sub(1)]
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_pickleKeepsOnlyConfiguration(tmp_path: Any) -> Any:
    """
    A started store pickles to its configuration; the copy starts afresh on
    the same database.
    """
    url = "sqlite:///%s" % (tmp_path / "store.sqlite",)
    store = SQLStore(url, readThreads=3, maxBatchSize=77)
    yield store.start()
    yield store.addSubscription(sub(1))
    data = pickle.dumps(store)
    yield store.stop()
    assert b"Engine" not in data and b"ThreadPool" not in data
    copy = pickle.loads(data)
    assert (copy.url, copy.readThreads, copy.maxBatchSize) == (url, 3, 77)
    assert copy.batchCount == 0 and copy.schemaVersion is None
    yield copy.start()
    try:
        assert (yield copy.loadSubscriptions()) == [sub(1)]
    finally:
        yield copy.stop()


@pytest_twisted.inlineCallbacks
def test_storeService(tmp_path: Any) -> Any:
    """
    StoreService starts the store, signals readiness, survives pickling
    (as in a .tap file) and flushes on stopService.
    """
    url = "sqlite:///%s" % (tmp_path / "store.sqlite",)
    svc = StoreService(SQLStore(url))
    early = svc.whenReady()
    svc.startService()
    store = yield early
    assert store is svc.store
    assert (yield svc.whenReady()) is store
    written = store.addSubscription(sub(1))
    copy = pickle.loads(pickle.dumps(svc))
    assert not copy.running and copy.store.url == url
    yield svc.stopService()
    yield written
    copy.startService()
    try:
        assert (yield (yield copy.whenReady()).loadSubscriptions()) == [sub(1)]
    finally:
        yield copy.stopService()


@pytest_twisted.inlineCallbacks
def test_storeServiceStartFailure(tmp_path: Any) -> Any:
    svc = StoreService(SQLStore("sqlite:///%s" % (tmp_path / "missing-dir" / "x.sqlite",)))
    svc.startService()
    with pytest.raises(sa.exc.OperationalError):
        yield svc.whenReady()
    yield svc.stopService()


# --- SQL stores against the in-memory model --------------------------------

_KEYS = ["a", "b", "c"]


def _randomOperation(rng: random.Random) -> Any:
    kind = rng.choice(["add", "add", "update", "updateState", "remove", "put", "put", "unpublish", "expire"])
    if kind in ("add", "update", "put", "expire"):
        return (kind, rng.choice(_KEYS), rng.randint(0, 3))
    if kind == "updateState":
        return (kind, rng.choice(_KEYS), rng.choice(["active", "terminated"]))
    return (kind, rng.choice(_KEYS))


def _issue(store: Any, operation: Any) -> Any:
    kind = operation[0]
    if kind == "add":
        return store.addSubscription(sub(operation[1], expiresAt=float(operation[2])))
    if kind == "update":
        return store.updateSubscription("sub-%s" % (operation[1],), localCSeq=operation[2])
    if kind == "updateState":
        return store.updateSubscription("sub-%s" % (operation[1],), state=operation[2])
    if kind == "remove":
        return store.removeSubscription("sub-%s" % (operation[1],))
    if kind == "put":
        return store.putPublication(pub(operation[1], expiresAt=float(operation[2]), version=operation[2]))
    if kind == "unpublish":
        return store.removePublication(operation[1])
    return store.removeExpired(float(operation[2]))


@pytest_twisted.inlineCallbacks
def test_behavesLikeMemoryStore(sqlStore: SQLStore) -> Any:
    """
    Random write sequences issued without waiting (so they are grouped into
    batches and, when one is bad, replayed) give the SQL store the same
    per-write outcomes and the same final contents as MemoryStore.
    """
    for seed in range(20):
        rng = random.Random(seed)
        model = MemoryStore()
        model.start()
        yield sqlStore.removeExpired(float("inf"))
        for _ in range(2):
            operations = [_randomOperation(rng) for _ in range(rng.randint(1, 25))]
            expected = _outcomes(
                (yield defer.DeferredList([_issue(model, op) for op in operations], consumeErrors=True))
            )
            actual = _outcomes(
                (yield defer.DeferredList([_issue(sqlStore, op) for op in operations], consumeErrors=True))
            )
            assert actual == expected, "seed %d: %r" % (seed, operations)
        subs = yield sqlStore.loadSubscriptions()
        pubs = yield sqlStore.loadPublications()
        assert sorted(subs, key=lambda r: r.id) == sorted(model.subscriptions.values(), key=lambda r: r.id), seed
        assert sorted(pubs, key=lambda r: r.etag) == sorted(model.publications.values(), key=lambda r: r.etag), seed
    assert sqlStore.replayCount > 0


@pytest_twisted.inlineCallbacks
def test_schemaStep5AddsEventPackages(sqlUrl: str) -> Any:
    """
    A version-4 database takes step 5 (event packages) with its rows
    intact: its publications are presence's, its subscriptions have no
    package state; both are written and read back afterwards.
    """
    assert _withEngine(sqlUrl, lambda conn: schema.upgrade(conn, target=4)) == 4

    def fill(conn: Any) -> None:
        conn.execute(sa.text(
            "INSERT INTO publications (etag, presentity, content_type, body, expires_at, modified_at, version) "
            "VALUES ('e1', 'sip:p@example.test', 'application/pidf+xml', :body, 10.0, 5.0, 3)"
        ), {"body": b"<presence/>"})
        _insertOldSubscription(conn)

    _withEngine(sqlUrl, fill)
    store = SQLStore(sqlUrl)
    yield store.start()
    try:
        assert store.schemaVersion == CURRENT_VERSION >= 5
        (publication,) = yield store.loadPublications()
        assert (publication.etag, publication.event, publication.version) == ("e1", "presence", 3)
        (subscription,) = yield store.loadSubscriptions()
        assert subscription.packageState == ""
        yield store.updateSubscription("sub-1", packageState="7")
        assert (yield store.getSubscription("sub-1")).packageState == "7"
        yield store.putPublication(pub("e2", event="dialog"))
        assert (yield store.getPublication("e2")).event == "dialog"
    finally:
        yield store.stop()
