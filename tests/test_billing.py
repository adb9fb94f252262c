"""
Tests for L{presence.billing}: the SQL functions (on SQLite and
PostgreSQL), the policy, the embedded authorizer's cache and change
polling (with a Clock), its service, the secret file and the [billing]
configuration.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Iterator, List, Optional

import pytest
import pytest_twisted
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from presence.billing import db
from presence.billing.authorizer import _MISSING, ConnectionReader, EmbeddedAuthorizer, OpenAuthorizer, TTLCache
from presence.billing.policy import decide
from presence.billing.records import (
    AccountInfo,
    BillingError,
    DuplicateAccount,
    UnknownAccount,
    parseAOR,
    parseCustomer,
    parsePattern,
)
from presence.billing.service import BillingService, SecretError, billingProblem, loadSecret
from presence.config import Config, ConfigError
from presence.interfaces import IAuthorizer
from presence.sip.digest import MD5, SHA256, computeHA1
from presence.store import SQLStore, schema
from presence.store.sql import createEngine
from tests.conftest import requirePostgres

ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
CAROL = "sip:carol@other.test"


# Databases.


def _adminExecute(url: str, statement: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: Any, tmp_path: Any) -> Iterator[str]:
    """
    The URL of an empty database with the current schema, per backend.
    """
    if request.param == "sqlite":
        value = "sqlite:///%s" % (tmp_path / "billing.sqlite",)
        _upgrade(value)
        yield value
        return
    base = requirePostgres()
    name = "billing_test_%s" % (uuid.uuid4().hex[:12],)
    _adminExecute(base, 'CREATE SCHEMA "%s"' % (name,))
    try:
        value = "%s%soptions=-csearch_path%%3D%s" % (base, "&" if "?" in base else "?", name)
        _upgrade(value)
        yield value
    finally:
        _adminExecute(base, 'DROP SCHEMA "%s" CASCADE' % (name,))


def _upgrade(url: str) -> None:
    transaction(url, schema.upgrade)


def transaction(url: str, work: Any) -> Any:
    """
    One transaction, as presence-admin runs its commands.
    """
    engine = createEngine(url, poolSize=1)
    try:
        with engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                return work(conn)
    finally:
        engine.dispose()


# Input checks.


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alice@example.test", ALICE),
        ("sip:alice@example.test", ALICE),
        ("sips:alice@EXAMPLE.test", ALICE),
        ("  alice@example.test ", ALICE),
        ("al%69ce@example.test", ALICE),
        ("Alice@example.test", "sip:Alice@example.test"),
    ],
)
def test_parseAOR(text, expected):
    assert parseAOR(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "example.test", "sip:example.test", "alice@", "alice@example.test:5060", "alice@example.test;transport=tcp",
     "alice:pw@example.test", "a b@example.test", "tel:+123", "alice@exa mple.test", "x" * 300 + "@example.test"],
)
def test_parseAORRefuses(text):
    with pytest.raises(BillingError):
        parseAOR(text)


def test_parsePatternAndCustomer():
    assert parsePattern("*") == "*"
    assert parsePattern("@Example.TEST") == "@example.test"
    assert parsePattern("bob@example.test") == BOB
    for bad in ("@", "@bad domain", "**", "@-x.test"):
        with pytest.raises(BillingError):
            parsePattern(bad)
    assert parseCustomer(" acme ") == "acme"
    for bad in ("", "a b", "@acme", "x" * 129):
        with pytest.raises(BillingError):
            parseCustomer(bad)


@given(st.text(max_size=80))
def test_parseAORNeverCrashes(text):
    try:
        aor = parseAOR(text)
    except BillingError:
        return
    assert aor.startswith("sip:") and "@" in aor
    assert parseAOR(aor) == aor


# The policy.


def account(aor: str, customer: str = "acme", status: str = "active", presence: bool = True) -> AccountInfo:
    return AccountInfo(aor, aor[4:].split("@")[0], aor.rpartition("@")[2], "m", "s", status, presence, customer)


@pytest.mark.parametrize(
    "watcher, watcherAccount, presentityAccount, rules, expected",
    [
        (ALICE, account(ALICE), account(BOB), {}, "allow"),
        (CAROL, account(CAROL, "globex"), account(BOB), {}, "block"),
        (ALICE, None, account(BOB), {}, "block"),  # implicit customer example.test != acme
        (ALICE, None, None, {}, "allow"),  # both of the implicit customer example.test
        (CAROL, None, None, {}, "block"),  # other.test != example.test
        (ALICE, account(ALICE, "example.test"), None, {}, "allow"),
        (CAROL, account(CAROL, "globex"), account(BOB), {CAROL: "allow"}, "allow"),
        (CAROL, account(CAROL, "globex"), account(BOB), {"@other.test": "ask"}, "ask"),
        (CAROL, account(CAROL, "globex"), account(BOB), {"*": "allow"}, "allow"),
        (ALICE, account(ALICE), account(BOB), {ALICE: "block"}, "block"),
        (ALICE, account(ALICE), account(BOB), {ALICE: "ask", "@example.test": "block"}, "ask"),
        (ALICE, account(ALICE), account(BOB), {"@example.test": "block", "*": "allow"}, "block"),
        (ALICE, account(ALICE), account(BOB), {"*": "block"}, "block"),
        (ALICE, account(ALICE, status="blocked"), account(BOB), {ALICE: "allow"}, "block"),
        (ALICE, account(ALICE, presence=False), account(BOB), {}, "block"),
        (ALICE, account(ALICE), account(BOB, presence=False), {"*": "allow"}, "block"),
        (ALICE, account(ALICE), account(BOB, status="blocked"), {ALICE: "allow"}, "block"),
    ],
)
def test_decide(watcher, watcherAccount, presentityAccount, rules, expected):
    assert decide(watcher, BOB, watcherAccount, presentityAccount, rules) == expected


def test_ownerAlwaysAllowed():
    assert decide(BOB, BOB, account(BOB), account(BOB), {"*": "block", BOB: "block"}) == "allow"


# The SQL functions.


def test_accountsStoreOnlyHA1(url):
    created = transaction(url, lambda conn: db.addAccount(conn, ALICE, "s3cret", "acme"))
    assert created.username == "alice" and created.realm == "example.test" and created.customer == "acme"
    assert created.ha1Md5 == computeHA1("alice", "example.test", "s3cret", MD5)
    assert created.ha1Sha256 == computeHA1("alice", "example.test", "s3cret", SHA256)
    assert created.status == "active" and created.presenceEnabled

    def raw(conn: Any) -> List[Any]:
        return [tuple(row) for row in conn.execute(sa.select(schema.accounts))]

    assert "s3cret" not in repr(transaction(url, raw))
    again = transaction(url, lambda conn: db.getAccount(conn, ALICE))
    assert again == created


def test_accountDefaults(url):
    created = transaction(url, lambda conn: db.addAccount(conn, BOB, "pw", username="b0b", status="blocked", presenceEnabled=False))
    assert (created.customer, created.username, created.status, created.presenceEnabled) == ("example.test", "b0b", "blocked", False)
    assert created.ha1Md5 == computeHA1("b0b", "example.test", "pw", MD5)


def test_duplicateAndUnknown(url):
    transaction(url, lambda conn: db.addAccount(conn, ALICE, "pw"))
    with pytest.raises(DuplicateAccount):
        transaction(url, lambda conn: db.addAccount(conn, ALICE, "other"))
    for work in (
        lambda conn: db.removeAccount(conn, BOB),
        lambda conn: db.setPassword(conn, BOB, "x"),
        lambda conn: db.setStatus(conn, BOB, "blocked"),
        lambda conn: db.setPresenceEnabled(conn, BOB, False),
        lambda conn: db.setRule(conn, BOB, ALICE, "allow"),
        lambda conn: db.clearRules(conn, BOB),
    ):
        with pytest.raises(UnknownAccount):
            transaction(url, work)
    with pytest.raises(BillingError):
        transaction(url, lambda conn: db.addAccount(conn, BOB, ""))
    with pytest.raises(BillingError):
        transaction(url, lambda conn: db.setRule(conn, ALICE, BOB, "maybe"))


def test_everyChangeIsLoggedInItsTransaction(url):
    """
    Each provisioning change appends the AORs it touched; a failed one
    (rolled back) leaves neither its change nor its log row.
    """
    assert transaction(url, db.lastChangeId) == 0
    transaction(url, lambda conn: db.addAccount(conn, ALICE, "pw"))
    transaction(url, lambda conn: db.addAccount(conn, BOB, "pw"))
    transaction(url, lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    transaction(url, lambda conn: db.setRule(conn, ALICE, BOB, "block"))
    first = transaction(url, db.lastChangeId)
    rows, oldest = transaction(url, lambda conn: db.changesSince(conn, 0))
    assert [aor for _, aor in rows] == [ALICE, BOB, BOB, ALICE]
    assert [i for i, _ in rows] == sorted(i for i, _ in rows) and rows[-1][0] == first
    assert oldest == rows[0][0]

    def failing(conn: Any) -> None:
        db.setStatus(conn, ALICE, "blocked")
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError):
        transaction(url, failing)
    assert transaction(url, db.lastChangeId) == first
    assert transaction(url, lambda conn: db.getAccount(conn, ALICE)).status == "active"
    # Removing bob drops his rules and alice's rule naming him; both change.
    transaction(url, lambda conn: db.removeAccount(conn, BOB))
    rows, _ = transaction(url, lambda conn: db.changesSince(conn, first))
    assert sorted(aor for _, aor in rows) == [ALICE, BOB]
    assert transaction(url, lambda conn: db.rulesOf(conn, ALICE)) == {}
    assert transaction(url, lambda conn: db.rulesOf(conn, BOB)) == {}


def test_rules(url):
    transaction(url, lambda conn: db.addAccount(conn, BOB, "pw"))
    transaction(url, lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    transaction(url, lambda conn: db.setRule(conn, BOB, ALICE, "allow"))
    transaction(url, lambda conn: db.setRule(conn, BOB, "@other.test", "block"))
    transaction(url, lambda conn: db.setRule(conn, BOB, "*", "ask"))
    assert transaction(url, lambda conn: db.rulesOf(conn, BOB)) == {ALICE: "allow", "@other.test": "block", "*": "ask"}
    assert transaction(url, lambda conn: db.clearRules(conn, BOB, "*")) == 1
    watcher, presentity, rules = transaction(url, lambda conn: db.watchInputs(conn, ALICE, BOB))
    assert watcher is None and presentity.aor == BOB and rules == {ALICE: "allow", "@other.test": "block"}
    assert transaction(url, lambda conn: db.clearRules(conn, BOB)) == 2


def test_oldChangesArePruned(url):
    transaction(url, lambda conn: db.addAccount(conn, ALICE, "pw", now=1000.0))
    transaction(url, lambda conn: db.recordChanges(conn, [BOB], now=1000.0 + db.CHANGE_RETENTION + 1))
    rows, oldest = transaction(url, lambda conn: db.changesSince(conn, 0))
    assert [aor for _, aor in rows] == [BOB] and oldest == rows[0][0]


def test_listAndWatchers(url):
    transaction(url, lambda conn: db.addAccount(conn, BOB, "pw", "acme"))
    transaction(url, lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
    transaction(url, lambda conn: db.addAccount(conn, CAROL, "pw", "globex"))
    assert [a.aor for a in transaction(url, lambda conn: db.listAccounts(conn))] == [ALICE, BOB, CAROL]
    assert [a.aor for a in transaction(url, lambda conn: db.listAccounts(conn, "acme"))] == [ALICE, BOB]
    assert transaction(url, lambda conn: db.watchersOf(conn, BOB)) == []


def test_concurrentAddsLogInCommitOrder(url):
    """
    Provisioning from several threads at once: every change is logged, and
    ids increase in commit order (the poller never skips a change).
    """
    errors: List[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                transaction(url, lambda conn: db.addAccount(conn, "sip:u%d-%d@example.test" % (n, i), "pw"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows, _ = transaction(url, lambda conn: db.changesSince(conn, 0))
    assert len(rows) == 20 and len({aor for _, aor in rows}) == 20


# The cache.


def test_ttlCache():
    clock = Clock()
    cache = TTLCache(clock, ttl=10.0, maxEntries=3)
    cache.put("a", 1, ("x",))
    cache.put("b", 2, ("x", "y"))
    cache.put("c", 3, ("z",))
    assert cache.get("a") == 1
    cache.put("d", 4, ("y",))  # evicts b, the least recently used
    assert len(cache) == 3 and cache.get("b") is _MISSING
    assert cache.invalidate(["y"]) == 1 and cache.get("d") is _MISSING
    clock.advance(10)
    assert cache.get("a") is _MISSING and len(cache) == 1
    assert cache.invalidate(["x", "z"]) == 1
    assert len(cache) == 0 and cache._byAOR == {}


class Billing:
    """
    An authorizer on an in-memory database, read synchronously.
    """

    def __init__(self, ttl: float = 30.0, pollInterval: float = 2.0) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.engine = createEngine("sqlite://")
        self.write(schema.upgrade)
        self.reader = ConnectionReader(self.engine)
        self.reads = 0
        self.held: Optional[List[Deferred]] = None
        self.authorizer = EmbeddedAuthorizer(self.read, self.clock, ttl, pollInterval)
        self.changes: List[Any] = []
        self.authorizer.addChangeListener(self.changes.append)

    def read(self, fn: Any) -> Deferred:
        self.reads += 1
        result = self.reader(fn)
        if self.held is None:
            return result
        d: Deferred = Deferred()
        self.held.append(d)
        result.addBoth(lambda r: setattr(d, "_result_", r))
        return d

    def release(self) -> None:
        held, self.held = self.held or [], None
        for d in held:
            d.callback(getattr(d, "_result_"))

    def write(self, work: Any) -> Any:
        with self.engine.begin() as conn:
            return work(conn)

    def value(self, d: Deferred) -> Any:
        results: List[Any] = []

        def keep(result: Any) -> Any:
            results.append(result)
            return result

        d.addBoth(keep)
        assert len(results) == 1, "Deferred has not fired"
        return results[0]

    def close(self) -> None:
        self.authorizer.stop()
        self.engine.dispose()


@pytest.fixture
def billing() -> Iterator[Billing]:
    b = Billing()
    yield b
    b.close()
    assert b.clock.getDelayedCalls() == []


def test_providesIAuthorizer(billing):
    verifyObject(IAuthorizer, billing.authorizer)
    verifyObject(IAuthorizer, OpenAuthorizer())


def test_lookupsAreCachedCountedAndExpire(billing):
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
    billing.write(lambda conn: db.addAccount(conn, BOB, "pw", "acme"))
    a = billing.authorizer
    assert billing.value(a.account(ALICE)).customer == "acme"
    assert billing.value(a.account("sip:nobody@example.test")) is None
    assert billing.value(a.watchDecision(ALICE, BOB)) == "allow"
    reads = billing.reads
    assert billing.value(a.account(ALICE)).customer == "acme"
    assert billing.value(a.account("sip:nobody@example.test")) is None
    assert billing.value(a.watchDecision(ALICE, BOB)) == "allow"
    # The decision also cached bob's account.
    assert billing.value(a.account(BOB)).aor == BOB
    assert billing.reads == reads
    assert a.counters["hits"] == 4 and a.counters["misses"] == 3
    billing.clock.advance(31)
    billing.value(a.account(ALICE))
    assert billing.reads == reads + 1 and a.counters["misses"] == 4
    # The owner is never looked up.
    assert billing.value(a.watchDecision(BOB, BOB)) == "allow"
    assert billing.reads == reads + 1


def test_noCacheWithZeroTtl():
    b = Billing(ttl=0.0)
    try:
        b.value(b.authorizer.account(ALICE))
        b.value(b.authorizer.account(ALICE))
        assert b.reads == 2 and b.authorizer.cacheSize == 0
    finally:
        b.close()


def test_concurrentLookupsShareOneRead(billing):
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.held = []
    a = billing.authorizer
    d1, d2 = a.account(ALICE), a.account(ALICE)
    e1, e2 = a.watchDecision(ALICE, BOB), a.watchDecision(ALICE, BOB)
    f = a.account(CAROL)
    # One read in flight; what came meanwhile waits for the next batch.
    assert billing.reads == 1
    billing.release()
    assert billing.reads == 2 and a.counters["batches"] == 2
    assert billing.value(f) is None
    assert billing.value(d1) == billing.value(d2) and billing.value(d1).aor == ALICE
    assert billing.value(e1) == billing.value(e2) == "allow"


def test_readBeforeAChangeIsNotCached(billing):
    """
    A lookup whose read raced with a change answers its caller but is not
    cached: it may predate the change.
    """
    a = billing.authorizer
    billing.value(a.start())
    billing.held = []
    d = a.account(ALICE)
    billing.held, held = None, billing.held
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.value(a.poll())
    billing.held = held
    billing.release()
    assert billing.value(d) is None
    assert billing.value(a.account(ALICE)).aor == ALICE


def test_lookupAfterAChangeDoesNotJoinAnOlderRead(billing):
    """
    A lookup made after a change gets an answer read after it, never the
    answer of a read that was already in flight (and may predate it).
    """
    a = billing.authorizer
    billing.value(a.start())
    billing.held = []
    before = a.account(ALICE)
    billing.held, held = None, billing.held
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.value(a.poll())
    billing.held = held
    after = a.account(ALICE)
    billing.release()
    assert billing.value(before) is None
    assert billing.value(after).aor == ALICE


def test_pollingInvalidatesAndTellsListeners(billing):
    a = billing.authorizer
    billing.value(a.start())
    assert a.lastChange == 0
    assert billing.value(a.account(ALICE)) is None
    assert billing.value(a.watchDecision(ALICE, BOB)) == "allow"
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
    # Nothing changes until the next poll...
    assert billing.value(a.account(ALICE)) is None
    billing.clock.advance(2.0)
    assert billing.changes == [frozenset([ALICE])]
    assert billing.value(a.account(ALICE)).customer == "acme"
    assert billing.value(a.watchDecision(ALICE, BOB)) == "block"
    # ... and it keeps polling.
    billing.write(lambda conn: db.setRule(conn, ALICE, BOB, "ask"))
    billing.write(lambda conn: db.setStatus(conn, ALICE, "blocked"))
    billing.clock.advance(2.0)
    assert billing.changes[-1] == frozenset([ALICE])
    assert a.counters["changes"] == 3
    assert len(billing.clock.getDelayedCalls()) == 1
    a.stop()
    assert billing.clock.getDelayedCalls() == []


def test_pollFailuresAreRetried(billing):
    a = billing.authorizer
    billing.value(a.start())
    good = a._read
    a._read = lambda fn: fail(RuntimeError("database down"))
    billing.clock.advance(2.0)
    billing.clock.advance(2.0)
    assert a.counters["pollErrors"] == 2
    a._read = good
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.clock.advance(2.0)
    assert billing.changes == [frozenset([ALICE])]


def test_startFailureInitialisesOnNextPoll(billing):
    a = billing.authorizer
    good = a._read
    a._read = lambda fn: fail(RuntimeError("database down"))
    billing.value(a.start())
    assert a.lastChange is None
    a._read = good
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.clock.advance(2.0)
    # It could not know what changed meanwhile: everything is re-checked.
    assert billing.changes == [None] and a.lastChange == 1


def test_prunedChangesDropEverything(billing):
    a = billing.authorizer
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", now=1.0))
    billing.value(a.start())
    assert a.lastChange == 1
    billing.value(a.account(ALICE))
    billing.write(lambda conn: db.addAccount(conn, BOB, "pw", now=2.0))
    billing.write(lambda conn: db.recordChanges(conn, [CAROL], now=5.0 + db.CHANGE_RETENTION))
    billing.clock.advance(2.0)
    assert billing.changes == [None] and a.cacheSize == 0
    assert a.lastChange == 3


def test_listenerErrorsAreContained(billing):
    a = billing.authorizer

    def broken(aors: Any) -> None:
        raise RuntimeError("listener bug")

    a.addChangeListener(broken)
    a.invalidate(frozenset([ALICE]))
    assert billing.changes == [frozenset([ALICE])]
    a.removeChangeListener(broken)
    a.removeChangeListener(broken)


# The service, on a real store.


@pytest_twisted.inlineCallbacks
def test_serviceOnStore(tmp_path):
    """
    The billing service reads through the store's reader threads, never on
    the reactor thread, and sees what presence-admin writes.
    """
    from twisted.application import service

    from presence.store import StoreService

    url = "sqlite:///%s" % (tmp_path / "p.sqlite",)
    root = service.MultiService()
    store = StoreService(SQLStore(url))
    store.setName("store")
    store.setServiceParent(root)
    config = Config(billingPollInterval=0.05)
    billingService = BillingService(config)
    billingService.setServiceParent(root)
    root.startService()
    try:
        ready = yield billingService.whenReady()
        assert ready is billingService and billingService.digest is not None
        authorizer = billingService.authorizer
        threads: List[str] = []
        original = authorizer._read

        def spy(fn: Any) -> Deferred:
            def wrapped(conn: Any) -> Any:
                threads.append(threading.current_thread().name)
                return fn(conn)

            return original(wrapped)

        authorizer._read = spy
        assert (yield authorizer.account(ALICE)) is None
        assert threads and all("presence-store-reader" in t for t in threads)
        transaction(url, lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
        changed: Deferred = Deferred()
        authorizer.addChangeListener(lambda aors: changed.called or changed.callback(aors))
        aors = yield changed
        assert aors == frozenset([ALICE])
        found = yield authorizer.account(ALICE)
        assert found.customer == "acme"
    finally:
        yield root.stopService()


def test_servicePicklesConfigurationOnly():
    import pickle

    svc = BillingService(Config())
    svc.authorizer = object()  # type: ignore[assignment]
    copy = pickle.loads(pickle.dumps(svc))
    assert copy.config == svc.config and copy.authorizer is None and copy.name == "billing"


# The secret and the configuration.


def test_secretFile(tmp_path):
    assert len(loadSecret("")) == 32 and loadSecret("") != loadSecret("")
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdef0123\n")
    os.chmod(path, 0o600)
    assert loadSecret(str(path)) == b"0123456789abcdef0123"
    assert billingProblem(Config(billingSecretFile=str(path))) is None
    os.chmod(path, 0o640)
    with pytest.raises(SecretError, match="chmod 600"):
        loadSecret(str(path))
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(SecretError, match="at least 16"):
        loadSecret(str(path))
    assert "cannot read" in billingProblem(Config(billingSecretFile=str(tmp_path / "missing")))


def test_billingConfig():
    config = Config.fromString(
        "[billing]\nno_auth_domains = Trusted.test, lab.test\ncache_ttl = 5\npoll_interval = 0.5\n"
        "algorithms = md5\nmax_auth_failures = 3\nauth_failure_window = 10\nnonce_lifetime = 60\n"
    )
    assert config.billingNoAuthDomains == ("trusted.test", "lab.test")
    assert (config.billingCacheTtl, config.billingPollInterval) == (5.0, 0.5)
    assert config.billingAlgorithms == ("MD5",)
    assert (config.billingMaxAuthFailures, config.billingAuthFailureWindow, config.billingNonceLifetime) == (3, 10.0, 60.0)
    defaults = Config()
    assert defaults.billingNoAuthDomains == () and defaults.billingAlgorithms == ("SHA-256", "MD5")
    assert defaults.billingCacheTtl == 30.0 and defaults.billingPollInterval == 2.0
    for bad in ("algorithms = SHA-1", "poll_interval = 0", "cache_ttl = -1", "colour = red"):
        with pytest.raises(ConfigError):
            Config.fromString("[billing]\n" + bad + "\n")


@pytest_twisted.inlineCallbacks
def test_storeStoppedByTheTreeOnly(tmp_path):
    """
    The server's store leaves its stopping to the service tree, which
    stops it after the manager has issued the writes of requests that were
    waiting for billing (a reactor trigger would refuse them).
    """
    store = SQLStore("sqlite:///%s" % (tmp_path / "s.sqlite",), stopOnShutdown=False)
    yield store.start()
    try:
        assert store._shutdownTrigger is None
    finally:
        yield store.stop()
    import pickle

    assert pickle.loads(pickle.dumps(store)).stopOnShutdown is False
