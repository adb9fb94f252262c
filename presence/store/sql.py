"""
The SQL implementation of L{IStore}: SQLAlchemy Core on a private thread pool,
with group commit.

Why group commit: a SUBSCRIBE may be answered only once its row is durable,
and a durable commit costs an fsync (SQLite) or a WAL flush (PostgreSQL).
Paying that per request caps the server at a few hundred requests a second.
Instead, writes are queued on the reactor thread; one batch at a time runs on
the store's single writer thread, and everything queued while it ran goes
into the next batch as B{one} transaction, using C{executemany} for runs of
similar operations.  Under load, batches grow by themselves and a thousand
writes cost a handful of commits; when idle, a write goes to the writer at
the end of the reactor turn that issued it, with every other write of that
turn.  Each write's Deferred fires only after its batch committed.

If a batch fails, it is rolled back and replayed in a new transaction with a
savepoint around each operation, so a bad write (say, a duplicate id) fails
only its own Deferred while the others still commit.

Reads run on a separate reader pool, never on the reactor thread, and return
plain records built inside the thread.

Durability on SQLite: the database runs in WAL mode with
C{PRAGMA synchronous=NORMAL}.  A commit then writes the transaction to the
WAL file with C{write()} before returning, and the WAL is fsync'ed only at
checkpoints.  Data handed to the kernel survives the death of the process
(C{kill -9}, a crash, an OOM kill) because the page cache belongs to the
kernel; what NORMAL gives up is durability against power loss or a kernel
crash, where the last commits may roll back (the database stays
consistent).  That is the promise we make: an acknowledged subscription
survives a process crash.  Pass C{sqliteSynchronous="FULL"} to fsync every
commit and survive power loss too, at the cost of one fsync per batch.  On
PostgreSQL durability is the server's business (C{synchronous_commit=on}
by default).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from presence.interfaces import IBindingStore, ILeaseStore, IStore
from presence.latency import LatencyHistogram
from presence.store import schema
from presence.store.driversql import DriverStatement
from presence.store.errors import DuplicateRecord, NoSuchRecord, StoreNotRunning
from presence.store.records import (
    BINDING_FIELDS,
    PUBLICATION_FIELDS,
    SUBSCRIPTION_FIELDS,
    BindingRecord,
    LeaseRecord,
    PublicationRecord,
    SubscriptionRecord,
    checkSubscriptionChanges,
)

# Write operation kinds.  An operation is a tuple (kind, key, payload).
_ADD_SUB = "addSubscription"
_UPDATE_SUB = "updateSubscription"
_REMOVE_SUB = "removeSubscription"
_PUT_PUB = "putPublication"
_REMOVE_PUB = "removePublication"
_REPLACE_PUB = "replacePublication"
_EXPIRE = "removeExpired"
_PUT_BINDING = "putBinding"
_REMOVE_BINDING = "removeBinding"
# Manager leases (ILeaseStore): the payload is (action, arguments).
_LEASE = "lease"

_SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")

_subs = schema.subscriptions
_pubs = schema.publications
_binds = schema.bindings

_SUB_SELECT = sa.select(*[_subs.c[schema.SUBSCRIPTION_COLUMNS[f]] for f in SUBSCRIPTION_FIELDS])
_PUB_SELECT = sa.select(*[_pubs.c[schema.PUBLICATION_COLUMNS[f]] for f in PUBLICATION_FIELDS])
_ROUTE_INDEX = SUBSCRIPTION_FIELDS.index("routeSet")
_SUB_ITEMS = tuple(schema.SUBSCRIPTION_COLUMNS.items())
_PUB_ITEMS = tuple(schema.PUBLICATION_COLUMNS.items())
_BIND_SELECT = sa.select(*[_binds.c[schema.BINDING_COLUMNS[f]] for f in BINDING_FIELDS])
_BIND_ITEMS = tuple(schema.BINDING_COLUMNS.items())

# The writes of the hot path, run through the driver (see driversql).
def _deleteByKey(table: sa.Table, key: Any) -> DriverStatement:
    return DriverStatement(
        sa.delete(table).where(key == sa.bindparam("p_key")),
        sa.delete(table).where(key == sa.func.any(sa.bindparam("p_keys"))),
    )


_INSERT_SUB = DriverStatement(sa.insert(_subs))
_DELETE_SUB = _deleteByKey(_subs, _subs.c.id)
_INSERT_PUB = DriverStatement(sa.insert(_pubs))
_DELETE_PUB = _deleteByKey(_pubs, _pubs.c.etag)
_INSERT_BIND = DriverStatement(sa.insert(_binds))
_DELETE_BIND = _deleteByKey(_binds, _binds.c.id)


def _encodeRoute(routeSet: Sequence[str]) -> str:
    """
    Serialise a route set for the C{route_set} text column.
    """
    return json.dumps(list(routeSet), separators=(",", ":"))


def _subscriptionRow(record: SubscriptionRecord) -> Dict[str, Any]:
    """
    Map a record to bind parameters named after the columns.
    """
    row = {column: getattr(record, name) for name, column in _SUB_ITEMS}
    row["route_set"] = _encodeRoute(record.routeSet)
    return row


def _publicationRow(record: PublicationRecord) -> Dict[str, Any]:
    """
    Map a record to bind parameters named after the columns.
    """
    return {column: getattr(record, name) for name, column in _PUB_ITEMS}


def _bindingRow(record: BindingRecord) -> Dict[str, Any]:
    """
    Map a record to bind parameters named after the columns.
    """
    return {column: getattr(record, name) for name, column in _BIND_ITEMS}


def _subscriptionFromRow(row: Sequence[Any]) -> SubscriptionRecord:
    """
    Build a record from a row selected with C{_SUB_SELECT}.
    """
    values = list(row)
    values[_ROUTE_INDEX] = tuple(json.loads(values[_ROUTE_INDEX]))
    return SubscriptionRecord(*values)


def _publicationFromRow(row: Sequence[Any]) -> PublicationRecord:
    """
    Build a record from a row selected with C{_PUB_SELECT}.
    """
    values = list(row)
    body = values[3]
    if not isinstance(body, bytes):
        values[3] = bytes(body)
    return PublicationRecord(*values)


def _bindingFromRow(row: Sequence[Any]) -> BindingRecord:
    """
    Build a record from a row selected with C{_BIND_SELECT}.
    """
    return BindingRecord(*row)


def isMemorySQLite(url: str) -> bool:
    """
    Whether C{url} names an in-memory SQLite database, which lives in a
    single connection and so must be used from a single thread.
    """
    parsed = sa.engine.make_url(url)
    return parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    )


def createEngine(
    url: str,
    poolSize: int = 3,
    sqliteSynchronous: str = "NORMAL",
    busyTimeout: float = 10.0,
) -> Engine:
    """
    Build an engine configured as the store uses it; tools that touch the
    database outside the store (C{presence-admin initdb}) should use it too.

    On SQLite, event listeners give every pooled connection WAL mode,
    C{synchronous}, a busy timeout, and real transactions: the sqlite3
    module's legacy mode does not BEGIN before DDL or SAVEPOINT, which would
    make upgrade steps and the writer's savepoints non-transactional.  A
    connection with the execution option C{presenceWrite=True} begins with
    C{BEGIN IMMEDIATE}, so a writer waits for another process's lock up
    front (up to C{busyTimeout}) instead of failing half-way through.
    On pg8000, a connect listener turns Nagle's algorithm off (see
    L{_pg8000NoDelay}).

    @param poolSize: connections kept (writer plus readers).
    @param sqliteSynchronous: C{NORMAL}, C{FULL} or C{EXTRA}; see the module
        docstring for what each survives.
    @param busyTimeout: SQLite: seconds to wait for a lock.
    """
    synchronous = sqliteSynchronous.upper()
    if synchronous not in _SYNCHRONOUS_MODES:
        raise ValueError("sqliteSynchronous must be one of %s" % (", ".join(_SYNCHRONOUS_MODES),))
    memory = isMemorySQLite(url)
    options: Dict[str, Any] = {}
    parsed = sa.engine.make_url(url)
    if parsed.drivername == "postgresql+pg8000" and "options" in parsed.query:
        # pg8000 (the PostgreSQL driver on PyPy, where psycopg's ctypes
        # binding fails) takes libpq's "options" (-csearch_path=...) as a
        # startup parameter, not as a connection argument of its own.
        options["connect_args"] = {"startup_params": {"options": parsed.query["options"]}}
        url = parsed.difference_update_query(["options"])  # type: ignore[assignment]
    if memory:
        options["poolclass"] = sa.pool.StaticPool
        options["connect_args"] = {"check_same_thread": False}
    else:
        options["pool_size"] = poolSize
        options["max_overflow"] = 0
        if sa.engine.make_url(url).get_backend_name() != "sqlite":
            # A write batch must not fail because the server restarted
            # since the last one: test a pooled connection before use.
            options["pool_pre_ping"] = True
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        _configureSQLite(engine, not memory, synchronous, int(busyTimeout * 1000))
    elif engine.dialect.driver == "pg8000":
        sa.event.listen(engine, "connect", _pg8000NoDelay)
    return engine


def _pg8000NoDelay(dbapiConnection: Any, connectionRecord: Any) -> None:
    """
    Turn Nagle's algorithm off on a pg8000 connection's TCP socket, as
    libpq (psycopg) does.  pg8000 leaves it on, so the small messages it
    sends after a large one (Sync after a long Parse, Execute and Sync
    after a long Bind) wait for the server's delayed ACK: 40 ms added to
    a write batch of a few dozen rows and more, measured on loopback.
    """
    # pg8000 has no option for it: _usock is the socket it reads and
    # writes (a test fails if a pg8000 release renames it).
    sock = getattr(dbapiConnection, "_usock", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _configureSQLite(engine: Engine, fileBacked: bool, synchronous: str, busyMs: int) -> None:
    """
    Install the connect and begin listeners described in L{createEngine}.
    """

    def onConnect(dbapiConnection: Any, connectionRecord: Any) -> None:
        dbapiConnection.isolation_level = None
        cursor = dbapiConnection.cursor()
        try:
            if fileBacked:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=%s" % (synchronous,))
            cursor.execute("PRAGMA busy_timeout=%d" % (busyMs,))
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    def onBegin(conn: Connection) -> None:
        if conn.get_execution_options().get("presenceWrite"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    sa.event.listen(engine, "connect", onConnect)
    sa.event.listen(engine, "begin", onBegin)


class _BatchResult:
    """
    What the writer thread reports about one batch; plain data only.

    @ivar outcomes: per operation, its result value or a L{Failure}.
    @ivar committed: whether a transaction was committed.
    @ivar replayed: whether the batch failed and was replayed one by one.
    @ivar firstError: the error that made the batch fail, as text.
    @ivar latency: seconds spent in the database, begin to commit.
    """

    def __init__(
        self,
        outcomes: List[Any],
        committed: bool,
        replayed: bool,
        firstError: str,
        latency: float,
    ) -> None:
        self.outcomes = outcomes
        self.committed = committed
        self.replayed = replayed
        self.firstError = firstError
        self.latency = latency


@implementer(IStore, IBindingStore, ILeaseStore)
class SQLStore:
    """
    L{IStore} on SQLite (embedded default) or PostgreSQL (cluster database).

    A plain object: L{start} builds the engine and the thread pools and
    upgrades the schema; L{stop} flushes queued writes and tears them down.
    Only configuration is pickled, so the store can sit in a service tree
    saved to a C{.tap} file (see L{presence.store.service.StoreService}).

    Metrics, read by the manhole and later a metrics endpoint:

    @ivar batchCount: write batches run.
    @ivar commitCount: transactions committed by the writer.
    @ivar replayCount: batches that failed and were replayed one by one.
    @ivar writeCount: write operations completed (successfully or not).
    @ivar lastBatchSize: operations in the last batch.
    @ivar lastCommitLatency: seconds the last batch spent in the database.
    @ivar commitLatency: the seconds of every committed batch, a
        L{LatencyHistogram}.
    @ivar schemaVersion: the schema version after start, else C{None}.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        readThreads: int = 2,
        maxBatchSize: int = 1000,
        sqliteSynchronous: str = "NORMAL",
        busyTimeout: float = 10.0,
        stopOnShutdown: bool = True,
    ) -> None:
        """
        @param url: a SQLAlchemy URL: C{sqlite:///path/to/file} or
            C{postgresql+psycopg://user@host:port/db}.  For PostgreSQL, a
            schema is chosen with C{?options=-csearch_path%3Dname}.
            C{sqlite://} (in memory) works but then reads share the writer
            thread and nothing is durable.
        @param reactor: provides C{IReactorThreads}; the global reactor,
            looked up at start, if C{None}.  Not pickled.
        @param readThreads: size of the reader pool.
        @param maxBatchSize: most operations per transaction, bounding the
            latency of one batch.
        @param sqliteSynchronous: C{NORMAL} (survives a process crash) or
            C{FULL}/C{EXTRA} (also survives power loss); see the module
            docstring.
        @param busyTimeout: SQLite: seconds to wait for another process's
            lock before failing.
        @param stopOnShutdown: stop by itself when the reactor shuts down.
            A service tree that stops it in order (L{presence.root}: after
            the services that still have writes to issue) turns this off,
            or the store would refuse those writes as soon as shutdown
            begins.
        """
        if sqliteSynchronous.upper() not in _SYNCHRONOUS_MODES:
            raise ValueError("sqliteSynchronous must be one of %s" % (", ".join(_SYNCHRONOUS_MODES),))
        if readThreads < 1 or maxBatchSize < 1:
            raise ValueError("readThreads and maxBatchSize must be positive")
        self.url = url
        self.readThreads = readThreads
        self.maxBatchSize = maxBatchSize
        self.sqliteSynchronous = sqliteSynchronous.upper()
        self.busyTimeout = busyTimeout
        self.stopOnShutdown = stopOnShutdown
        self._reactor = reactor
        self._resetRuntime()

    _CONFIG = ("url", "readThreads", "maxBatchSize", "sqliteSynchronous", "busyTimeout", "stopOnShutdown")

    def _resetRuntime(self) -> None:
        """
        (Re)initialise everything that is not configuration.
        """
        self._engine: Optional[Engine] = None
        self._writePool: Optional[ThreadPool] = None
        self._readPool: Optional[ThreadPool] = None
        self._queue: List[Tuple[Tuple[Any, ...], Deferred]] = []
        self._busy = False
        self._turnCall: Any = None
        self._inFlight = 0
        self._running = False
        self._starting = False
        self._stopping: Optional[Deferred] = None
        self._drainWaiters: List[Deferred] = []
        self._readsInFlight = 0
        self._startWaiters: List[Deferred] = []
        self._shutdownTrigger: Any = None
        self._upsert: Any = None
        self._bindingUpsert: Any = None
        self.batchCount = 0
        self.commitCount = 0
        self.replayCount = 0
        self.writeCount = 0
        self.lastBatchSize = 0
        self.lastCommitLatency = 0.0
        self.commitLatency = LatencyHistogram()
        self.schemaVersion: Optional[int] = None

    def __getstate__(self) -> Dict[str, Any]:
        """
        Keep only configuration: engines, pools and reactors are rebuilt by
        L{start} after unpickling.
        """
        return {name: getattr(self, name, True) for name in self._CONFIG}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """
        Restore configuration; the runtime starts out stopped.
        """
        self.__dict__.update(state)
        self._reactor = None
        self._resetRuntime()

    def __repr__(self) -> str:
        return "<SQLStore %s>" % (sa.engine.make_url(self.url).render_as_string(hide_password=True),)

    # --- lifecycle ---------------------------------------------------------

    def _createEngine(self) -> Engine:
        """
        Build the engine for this store's configuration.
        """
        return createEngine(
            self.url,
            poolSize=self.readThreads + 1,
            sqliteSynchronous=self.sqliteSynchronous,
            busyTimeout=self.busyTimeout,
        )

    def _buildUpsert(self, dialectName: str, table: sa.Table = _pubs) -> Any:
        """
        The statement inserting a row of C{table} (publications by default)
        or replacing the row with the same primary key, or C{None} where
        only delete-then-insert works.
        """
        if dialectName == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialectName == "postgresql":
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        else:
            return None
        (key,) = table.primary_key.columns
        stmt = insert(table)
        return DriverStatement(
            stmt.on_conflict_do_update(
                index_elements=[key],
                set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name != key.name},
            ),
            upsertKey=key.name,
        )

    def start(self) -> Deferred:
        """
        Build the engine and the thread pools, then create or upgrade the
        schema on the writer thread.  See L{IStore.start}.
        """
        if self._running or self._starting:
            return fail(RuntimeError("store already started"))
        if self._reactor is None:
            from twisted.internet import reactor as globalReactor

            self._reactor = globalReactor
        self._starting = True
        try:
            engine = self._createEngine()
        except Exception:
            self._starting = False
            return fail()
        self._engine = engine
        self._upsert = self._buildUpsert(engine.dialect.name)
        self._bindingUpsert = self._buildUpsert(engine.dialect.name, _binds)
        self._writePool = ThreadPool(1, 1, name="presence-store-writer")
        if isMemorySQLite(self.url):
            self._readPool = self._writePool
        else:
            self._readPool = ThreadPool(1, self.readThreads, name="presence-store-reader")
        self._writePool.start()
        if self._readPool is not self._writePool:
            self._readPool.start()
        d = deferToThreadPool(self._reactor, self._writePool, self._upgradeInThread)

        def started(version: int) -> None:
            self._starting = False
            self._running = True
            self.schemaVersion = version
            if getattr(self, "stopOnShutdown", True):
                self._shutdownTrigger = self._reactor.addSystemEventTrigger(
                    "before", "shutdown", self._stopForShutdown
                )
            self.log.info("store {store!r} started, schema version {version}", store=self, version=version)
            self._fireStartWaiters()

        def failed(reason: Failure) -> Deferred:
            # No log line: the caller says why, once (presence.startup).
            self._starting = False
            d2 = self._teardown()
            d2.addCallback(lambda _: self._fireStartWaiters())
            d2.addCallback(lambda _: reason)
            return d2

        d.addCallbacks(started, failed)
        return d

    def _fireStartWaiters(self) -> None:
        """
        Let a L{stop} issued during L{start} proceed.
        """
        waiters, self._startWaiters = self._startWaiters, []
        for d in waiters:
            d.callback(None)

    def _upgradeInThread(self) -> int:
        """
        Writer thread: create or upgrade the schema in one transaction.
        """
        assert self._engine is not None
        with self._engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                return schema.upgrade(conn)

    def _stopForShutdown(self) -> Deferred:
        """
        Reactor shutdown trigger: flush and stop if nobody stopped us.
        """
        self._shutdownTrigger = None
        return self.stop()

    def stop(self) -> Deferred:
        """
        Refuse new work, commit everything queued, wait for reads, then stop
        the pools and dispose of the engine.  See L{IStore.stop}.
        """
        if self._stopping is not None:
            d = Deferred()
            self._stopping.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        if self._starting:
            waiter = Deferred()
            self._startWaiters.append(waiter)
            waiter.addCallback(lambda _: self.stop())
            return waiter
        if not self._running:
            return succeed(None)
        if self._shutdownTrigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        self._stopping = Deferred()
        drained = Deferred()
        self._drainWaiters.append(drained)
        self._flush()
        d = drained
        d.addBoth(lambda _: self._teardown())

        def stopped(result: Any) -> None:
            stopping = self._stopping
            self._running = False
            self._stopping = None
            self.log.info(
                "store {store!r} stopped after {batches} batches, {commits} commits",
                store=self,
                batches=self.batchCount,
                commits=self.commitCount,
            )
            assert stopping is not None
            stopping.callback(None)

        d.addCallback(stopped)
        return d

    def _teardown(self) -> Deferred:
        """
        Dispose of the engine on the writer thread, then stop both pools.
        """
        engine, writePool, readPool = self._engine, self._writePool, self._readPool
        self._engine = None
        if writePool is None or engine is None:
            return succeed(None)
        d = deferToThreadPool(self._reactor, writePool, engine.dispose)

        def stopPools(result: Any) -> Any:
            self._writePool = self._readPool = None
            # Both pools are idle now: joining their threads is immediate.
            writePool.stop()
            if readPool is not None and readPool is not writePool:
                readPool.stop()
            if isinstance(result, Failure):
                self.log.failure("disposing of the engine failed", result)
            return None

        d.addBoth(stopPools)
        return d

    def _refuse(self) -> Optional[Deferred]:
        """
        @return: a failed Deferred if work may not be issued now, else C{None}.
        """
        if not self._running:
            return fail(StoreNotRunning("store %r is not running" % (self,)))
        if self._stopping is not None:
            return fail(StoreNotRunning("store %r is stopping" % (self,)))
        return None

    # --- writes ------------------------------------------------------------

    def addSubscription(self, record: SubscriptionRecord) -> Deferred:
        """
        See L{IStore.addSubscription}.
        """
        if not isinstance(record, SubscriptionRecord):
            return fail(TypeError("expected a SubscriptionRecord, got %r" % (type(record),)))
        return self._enqueue((_ADD_SUB, record.id, record))

    def updateSubscription(self, subscriptionId: str, **changes: Any) -> Deferred:
        """
        See L{IStore.updateSubscription}.
        """
        try:
            checked = checkSubscriptionChanges(changes)
        except (TypeError, ValueError):
            return fail()
        if "routeSet" in checked:
            checked["routeSet"] = _encodeRoute(checked["routeSet"])
        params = {"p_" + schema.SUBSCRIPTION_COLUMNS[k]: v for k, v in checked.items()}
        return self._enqueue((_UPDATE_SUB, subscriptionId, params))

    def removeSubscription(self, subscriptionId: str) -> Deferred:
        """
        See L{IStore.removeSubscription}.
        """
        return self._enqueue((_REMOVE_SUB, subscriptionId, None))

    def putPublication(self, record: PublicationRecord) -> Deferred:
        """
        See L{IStore.putPublication}.
        """
        if not isinstance(record, PublicationRecord):
            return fail(TypeError("expected a PublicationRecord, got %r" % (type(record),)))
        return self._enqueue((_PUT_PUB, record.etag, record))

    def replacePublication(self, oldEtag: str, record: PublicationRecord) -> Deferred:
        """
        See L{IStore.replacePublication}.
        """
        if not isinstance(record, PublicationRecord):
            return fail(TypeError("expected a PublicationRecord, got %r" % (type(record),)))
        return self._enqueue((_REPLACE_PUB, oldEtag, record))

    def removePublication(self, etag: str) -> Deferred:
        """
        See L{IStore.removePublication}.
        """
        return self._enqueue((_REMOVE_PUB, etag, None))

    def removeExpired(self, now: float) -> Deferred:
        """
        See L{IStore.removeExpired}.
        """
        return self._enqueue((_EXPIRE, None, float(now)))

    def putBinding(self, record: BindingRecord) -> Deferred:
        """
        See L{IBindingStore.putBinding}.
        """
        if not isinstance(record, BindingRecord):
            return fail(TypeError("expected a BindingRecord, got %r" % (type(record),)))
        return self._enqueue((_PUT_BINDING, record.id, record))

    def removeBinding(self, bindingId: str) -> Deferred:
        """
        See L{IBindingStore.removeBinding}.
        """
        return self._enqueue((_REMOVE_BINDING, bindingId, None))

    def _enqueue(self, op: Tuple[Any, ...], first: bool = False) -> Deferred:
        """
        Queue one write and start a batch if the writer is idle.

        @param first: put it at the head of the queue, ahead of the
            writes already waiting (a lease renewal must not wait behind
            a backlog of subscription writes, or a busy manager would
            fence itself).
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        d = Deferred()
        if first:
            self._queue.insert(0, (op, d))
        else:
            self._queue.append((op, d))
        if not self._busy and self._turnCall is None:
            self._turnCall = self._reactor.callLater(0, self._turnEnded)
        return d

    @property
    def pendingWrites(self) -> int:
        """
        Writes queued or being committed now: how far the database is
        behind (see L{presence.manager.overload}).
        """
        return len(self._queue) + self._inFlight

    def _turnEnded(self) -> None:
        """
        The reactor turn that queued the first write since the writer was
        last handed work has ended: every request read from the sockets in
        that turn has issued its write by now, so they share one batch (one
        thread hand-off, one commit) instead of the first going alone.
        """
        self._turnCall = None
        self._flush()

    def _flush(self) -> None:
        """
        Hand the queued writes to the writer thread, unless a batch is in
        flight (then they go when it completes).
        """
        if self._turnCall is not None:
            self._turnCall.cancel()
            self._turnCall = None
        if self._busy:
            return
        if not self._queue:
            self._checkDrained()
            return
        batch = self._queue[: self.maxBatchSize]
        del self._queue[: self.maxBatchSize]
        self._busy = True
        self._inFlight = len(batch)
        assert self._writePool is not None
        d = deferToThreadPool(self._reactor, self._writePool, self._writeBatch, [op for op, _ in batch])
        d.addBoth(self._batchDone, batch)

    def _batchDone(self, result: Any, batch: List[Tuple[Tuple[Any, ...], Deferred]]) -> None:
        """
        Reactor thread: record metrics, fire each write's Deferred, start the
        next batch.  Writes issued by those callbacks join the next batch.
        """
        self.batchCount += 1
        self._inFlight = 0
        self.lastBatchSize = len(batch)
        self.writeCount += len(batch)
        if isinstance(result, Failure):
            # Even the replay could not run (e.g. the database is gone):
            # nothing was committed.
            self.log.failure("write batch of {size} failed", result, size=len(batch))
            outcomes: List[Any] = [result] * len(batch)
        else:
            outcomes = result.outcomes
            self.lastCommitLatency = result.latency
            if result.committed:
                self.commitCount += 1
                self.commitLatency.observe(result.latency)
            if result.replayed:
                self.replayCount += 1
                self.log.warn(
                    "write batch of {size} failed ({error}); replayed one by one",
                    size=len(batch),
                    error=result.firstError,
                )
        try:
            for (op, d), outcome in zip(batch, outcomes):
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
        finally:
            self._busy = False
            self._flush()

    def _checkDrained(self) -> None:
        """
        Fire the waiters of L{stop} once no write is queued or in flight and
        no read is in flight.
        """
        if self._busy or self._queue or self._readsInFlight or not self._drainWaiters:
            return
        waiters, self._drainWaiters = self._drainWaiters, []
        for d in waiters:
            d.callback(None)

    # --- writer thread -----------------------------------------------------

    def _writeBatch(self, ops: List[Tuple[Any, ...]]) -> _BatchResult:
        """
        Writer thread: apply a batch as one transaction; on failure, replay it
        with a savepoint per operation.
        """
        assert self._engine is not None
        began = time.monotonic()
        with self._engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            try:
                with conn.begin():
                    outcomes = self._applyOps(conn, ops)
                return _BatchResult(outcomes, True, False, "", time.monotonic() - began)
            except Exception as e:
                firstError = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            began = time.monotonic()
            outcomes = []
            with conn.begin():
                for op in ops:
                    try:
                        with conn.begin_nested():
                            outcomes.extend(self._applyGroup(conn, op[0], [op]))
                    except sa.exc.IntegrityError as e:
                        if op[0] == _ADD_SUB and self._subscriptionExists(conn, op[1]):
                            error: Exception = DuplicateRecord("subscription %r exists" % (op[1],))
                            error.__cause__ = e
                            outcomes.append(Failure(error))
                        else:
                            outcomes.append(Failure())
                    except Exception:
                        outcomes.append(Failure())
            return _BatchResult(outcomes, True, True, firstError, time.monotonic() - began)

    @staticmethod
    def _subscriptionExists(conn: Connection, subscriptionId: str) -> bool:
        """
        Writer thread: whether a subscription id is taken, to tell a
        duplicate from another integrity error.
        """
        return conn.execute(sa.select(_subs.c.id).where(_subs.c.id == subscriptionId)).first() is not None

    def _applyOps(self, conn: Connection, ops: List[Tuple[Any, ...]]) -> List[Any]:
        """
        Apply operations in order, grouping runs that one C{executemany}
        can carry.  Raises on the first error.
        """
        outcomes: List[Any] = []
        i, n = 0, len(ops)
        while i < n:
            kind = ops[i][0]
            j = i + 1
            if kind == _UPDATE_SUB:
                shape = frozenset(ops[i][2])
                while j < n and ops[j][0] == kind and frozenset(ops[j][2]) == shape:
                    j += 1
            elif kind in (_PUT_PUB, _PUT_BINDING):
                # One statement must not touch the same key twice
                # (PostgreSQL refuses ON CONFLICT on a row twice).
                seen = {ops[i][1]}
                while j < n and ops[j][0] == kind and ops[j][1] not in seen:
                    seen.add(ops[j][1])
                    j += 1
            elif kind != _EXPIRE:
                while j < n and ops[j][0] == kind:
                    j += 1
            outcomes.extend(self._applyGroup(conn, kind, ops[i:j]))
            i = j
        return outcomes

    def _applyGroup(self, conn: Connection, kind: str, group: List[Tuple[Any, ...]]) -> List[Any]:
        """
        Apply a run of operations of one kind; return one outcome each.
        """
        if kind == _ADD_SUB:
            _INSERT_SUB.executemany(conn, [_subscriptionRow(op[2]) for op in group])
        elif kind == _UPDATE_SUB:
            self._applyUpdates(conn, group)
        elif kind == _REMOVE_SUB:
            _DELETE_SUB.executemany(conn, [{"p_key": op[1]} for op in group])
        elif kind == _PUT_PUB:
            rows = [_publicationRow(op[2]) for op in group]
            if self._upsert is not None:
                self._upsert.executemany(conn, rows)
            else:
                _DELETE_PUB.executemany(conn, [{"p_key": op[1]} for op in group])
                _INSERT_PUB.executemany(conn, rows)
        elif kind == _REMOVE_PUB:
            _DELETE_PUB.executemany(conn, [{"p_key": op[1]} for op in group])
        elif kind == _REPLACE_PUB:
            # The old rows must all exist; if one is gone (another manager
            # replaced it first) the batch fails and its replay, one
            # operation per savepoint, fails just that replacement.
            if _DELETE_PUB.executemany(conn, [{"p_key": op[1]} for op in group]) != len(group):
                raise NoSuchRecord("a publication replaced in a batch of %d is gone" % (len(group),))
            rows = [_publicationRow(op[2]) for op in group]
            if self._upsert is not None:
                self._upsert.executemany(conn, rows)
            else:
                _INSERT_PUB.executemany(conn, rows)
        elif kind == _PUT_BINDING:
            rows = [_bindingRow(op[2]) for op in group]
            if self._bindingUpsert is not None:
                self._bindingUpsert.executemany(conn, rows)
            else:
                _DELETE_BIND.executemany(conn, [{"p_key": op[1]} for op in group])
                _INSERT_BIND.executemany(conn, rows)
        elif kind == _REMOVE_BINDING:
            _DELETE_BIND.executemany(conn, [{"p_key": op[1]} for op in group])
        elif kind == _LEASE:
            return [self._applyLease(conn, op[1], op[2]) for op in group]
        elif kind == _EXPIRE:
            (op,) = group
            now = op[2]
            subs = conn.execute(sa.delete(_subs).where(_subs.c.expires_at <= now)).rowcount
            pubs = conn.execute(sa.delete(_pubs).where(_pubs.c.expires_at <= now)).rowcount
            return [(subs, pubs)]
        else:
            raise AssertionError("unknown write %r" % (kind,))
        return [None] * len(group)

    @staticmethod
    def _adopt(conn: Connection, formerOwner: str, owner: str) -> List[SubscriptionRecord]:
        """
        Writer thread: move every subscription of C{formerOwner} to
        C{owner}; return them as they now are.  One C{UPDATE ...
        RETURNING}, so that of two managers adopting the same dead one at
        once, each row goes to exactly one (the second waits for the
        first's row locks, then finds the rows no longer match).
        """
        stmt = (
            sa.update(_subs)
            .where(_subs.c.owner == formerOwner)
            .values(owner=owner)
            .returning(*_SUB_SELECT.selected_columns)
        )
        return [_subscriptionFromRow(row) for row in conn.execute(stmt)]

    def _applyUpdates(self, conn: Connection, group: List[Tuple[Any, ...]]) -> None:
        """
        Apply updates sharing one set of columns; raise L{NoSuchRecord} if
        any of them matched no row (the replay then tells which).
        """
        columns = sorted(group[0][2])
        stmt = (
            sa.update(_subs)
            .where(_subs.c.id == sa.bindparam("p_key"))
            .values({name[2:]: sa.bindparam(name) for name in columns})
        )
        params = [dict(op[2], p_key=op[1]) for op in group]
        if len(params) == 1 or not conn.dialect.supports_sane_multi_rowcount:
            for op, p in zip(group, params):
                if conn.execute(stmt, p).rowcount != 1:
                    raise NoSuchRecord("no subscription %r" % (op[1],))
            return
        if conn.execute(stmt, params).rowcount != len(params):
            raise NoSuchRecord("an update in a batch of %d matched no subscription" % (len(params),))

    # --- reads -------------------------------------------------------------

    def _read(self, fn: Callable[[Connection], Any]) -> Deferred:
        """
        Run C{fn(conn)} on the reader pool; it must return plain data.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        assert self._readPool is not None
        d = deferToThreadPool(self._reactor, self._readPool, self._readInThread, fn)
        self._readsInFlight += 1

        def done(result: Any) -> Any:
            self._readsInFlight -= 1
            self._checkDrained()
            return result

        d.addBoth(done)
        return d

    def runRead(self, fn: Callable[[Connection], Any]) -> Deferred:
        """
        Run C{fn(conn)} on the reader pool, for other parts reading their own
        tables in this database (billing's accounts and policies): a
        connection in a read transaction, never the reactor thread, and the
        same refusal when the store is not running.  C{fn} must return plain
        data, never rows or results.

        @return: a Deferred firing with what C{fn} returned.
        """
        return self._read(fn)

    def _readInThread(self, fn: Callable[[Connection], Any]) -> Any:
        """
        Reader thread: one connection, one read-only transaction.
        """
        assert self._engine is not None
        with self._engine.connect() as conn:
            return fn(conn)

    def getSubscription(self, subscriptionId: str) -> Deferred:
        """
        See L{IStore.getSubscription}.
        """

        def get(conn: Connection) -> Optional[SubscriptionRecord]:
            row = conn.execute(_SUB_SELECT.where(_subs.c.id == subscriptionId)).first()
            return None if row is None else _subscriptionFromRow(row)

        return self._read(get)

    def loadSubscriptions(
        self, owner: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None
    ) -> Deferred:
        """
        See L{IStore.loadSubscriptions}.
        """
        stmt = _SUB_SELECT if owner is None else _SUB_SELECT.where(_subs.c.owner == owner)
        if after is not None:
            stmt = stmt.where(_subs.c.id > after)
        if after is not None or limit is not None:
            stmt = stmt.order_by(_subs.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)

        def load(conn: Connection) -> List[SubscriptionRecord]:
            return [_subscriptionFromRow(row) for row in conn.execute(stmt)]

        return self._read(load)

    def findSubscription(self, presentity: str, callId: str, localTag: str) -> Deferred:
        """
        See L{IStore.findSubscription}.
        """
        stmt = _SUB_SELECT.where(
            _subs.c.presentity == presentity, _subs.c.call_id == callId, _subs.c.local_tag == localTag
        )

        def find(conn: Connection) -> Optional[SubscriptionRecord]:
            row = conn.execute(stmt).first()
            return None if row is None else _subscriptionFromRow(row)

        return self._read(find)

    def getPublication(self, etag: str) -> Deferred:
        """
        See L{IStore.getPublication}.
        """

        def get(conn: Connection) -> Optional[PublicationRecord]:
            row = conn.execute(_PUB_SELECT.where(_pubs.c.etag == etag)).first()
            return None if row is None else _publicationFromRow(row)

        return self._read(get)

    def loadPublications(self) -> Deferred:
        """
        See L{IStore.loadPublications}.
        """

        def load(conn: Connection) -> List[PublicationRecord]:
            return [_publicationFromRow(row) for row in conn.execute(_PUB_SELECT)]

        return self._read(load)

    def loadBindings(self, owner: Optional[str] = None) -> Deferred:
        """
        See L{IBindingStore.loadBindings}.
        """
        stmt = _BIND_SELECT if owner is None else _BIND_SELECT.where(_binds.c.owner == owner)

        def load(conn: Connection) -> List[BindingRecord]:
            return [_bindingFromRow(row) for row in conn.execute(stmt)]

        return self._read(load)

    # --- manager leases (ILeaseStore) --------------------------------------

    #: Where lease times come from, if not the database: a callable
    #: returning epoch seconds, called on the writer thread.  Tests set it
    #: to a C{Clock}'s C{seconds}; L{None} (production) reads the
    #: database's clock (see L{_leaseNow}).
    leaseClock: Optional[Callable[[], float]] = None

    def registerLease(self, node: str, duration: float) -> Deferred:
        """
        See L{ILeaseStore.registerLease}.
        """
        return self._enqueue((_LEASE, node, ("register", float(duration), 0)), first=True)

    def renewLease(self, node: str, epoch: int, duration: float) -> Deferred:
        """
        See L{ILeaseStore.renewLease}: a write like any other, so it
        shares the group commit, at the head of the queue (it waits for
        the batch in flight, not for the backlog); a renewal stuck behind
        a slow batch is late, which the lease keeper counts as not
        renewed.
        """
        return self._enqueue((_LEASE, node, ("renew", float(duration), int(epoch))), first=True)

    def fenceAndAdopt(self, formerOwner: str, owner: str) -> Deferred:
        """
        See L{ILeaseStore.fenceAndAdopt}.  Atomic on both backends: on
        PostgreSQL the fencing C{UPDATE} takes the lease row's lock, so a
        renewal racing it either commits first (the fence then re-reads
        the row, finds it live and matches nothing) or waits and finds
        the epoch changed; two adopters may both fence, but the
        subscriptions' C{UPDATE} gives each row to one.  SQLite writers
        are serialised by C{BEGIN IMMEDIATE}.
        """
        return self._enqueue((_LEASE, formerOwner, ("fenceAndAdopt", 0.0, owner)))

    def loadLeases(self) -> Deferred:
        """
        See L{ILeaseStore.loadLeases}.
        """
        leases = schema.manager_leases
        stmt = sa.select(leases.c.node, leases.c.expires_at, leases.c.epoch)

        def load(conn: Connection) -> List[LeaseRecord]:
            return [LeaseRecord(row[0], float(row[1]), int(row[2])) for row in conn.execute(stmt)]

        return self._read(load)

    def _leaseNow(self, conn: Connection) -> float:
        """
        Writer thread: now, for leases.  On PostgreSQL the server's
        C{clock_timestamp()}: every manager measures leases with the one
        clock of the database, so their own clocks may disagree.  On
        SQLite the host's clock, which every process using the file
        shares.
        """
        clock = self.leaseClock
        if clock is not None:
            return float(clock())
        if conn.dialect.name == "postgresql":
            return float(conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar())
        return time.time()

    def _applyLease(self, conn: Connection, node: str, payload: Tuple[str, float, Any]) -> Any:
        """
        Writer thread: one lease operation, in the batch's transaction.
        """
        action, duration, argument = payload
        leases = schema.manager_leases
        now = self._leaseNow(conn)
        mine = leases.c.node == node
        if action == "register":
            row = conn.execute(
                sa.update(leases)
                .where(mine)
                .values(epoch=leases.c.epoch + 1, expires_at=now + duration)
                .returning(leases.c.epoch)
            ).first()
            if row is None:
                conn.execute(sa.insert(leases).values(node=node, expires_at=now + duration, epoch=1))
                return LeaseRecord(node, now + duration, 1)
            return LeaseRecord(node, now + duration, int(row[0]))
        if action == "renew":
            renewed = conn.execute(
                sa.update(leases).where(mine, leases.c.epoch == argument).values(expires_at=now + duration)
            ).rowcount
            return LeaseRecord(node, now + duration, argument) if renewed == 1 else None
        if action == "fenceAndAdopt":
            fenced = conn.execute(
                sa.update(leases).where(mine, leases.c.expires_at < now).values(epoch=leases.c.epoch + 1)
            ).rowcount
            if not fenced:
                expiresAt = conn.execute(sa.select(leases.c.expires_at).where(mine)).scalar()
                if expiresAt is not None:
                    return (None, max(0.0, float(expiresAt) - now))
            return (self._adopt(conn, node, argument), 0.0)
        raise AssertionError("unknown lease operation %r" % (action,))
