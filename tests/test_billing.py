"""
Tests for L{presence.billing}: the SQL functions (on SQLite and
PostgreSQL), the policy, the embedded authorizer's in-memory replica and
change polling (with a Clock), the remote authorizer's cache, the billing
service, the secret file and the [billing] configuration.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterator, List, Optional

import pytest
import pytest_twisted
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from presence.billing import db
from presence.billing.authorizer import ConnectionReader, EmbeddedAuthorizer, OpenAuthorizer
from presence.billing.errors import BillingUnavailable
from presence.billing.cache import _MISSING, TTLCache
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
from tests.conftest import postgresSchema

ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
CAROL = "sip:carol@other.test"


# Databases.


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
    with postgresSchema("billing_test") as value:
        _upgrade(value)
        yield value


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


# The remote authorizer's cache.


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


# The embedded authorizer: billing in memory.

AARON = "sip:aaron@example.test"
DAVE = "sip:dave@example.test"


class Billing:
    """
    An authorizer on an in-memory database, read synchronously.  Reads can
    be held (each with the result of the moment it was issued) and
    released later, made to fail, or preceded by a hook.
    """

    def __init__(self, pollInterval: float = 2.0, pageSize: int = 2000) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.engine = createEngine("sqlite://")
        self.write(schema.upgrade)
        self.reader = ConnectionReader(self.engine)
        self.reads = 0
        self.held: Optional[List[Deferred]] = None
        self.failing = False
        self.beforeRead: Optional[Callable[[int], None]] = None
        self.authorizer = EmbeddedAuthorizer(self.read, self.clock, pollInterval, pageSize=pageSize)
        self.changes: List[Any] = []
        self.authorizer.addChangeListener(self.changes.append)

    def read(self, fn: Any) -> Deferred:
        self.reads += 1
        if self.beforeRead is not None:
            self.beforeRead(self.reads)
        if self.failing:
            return fail(RuntimeError("database down"))
        result = self.reader(fn)
        if self.held is None:
            return result
        d: Deferred = Deferred()
        self.held.append(d)
        result.addBoth(lambda r: setattr(d, "_result_", r))
        return d

    def releaseOne(self) -> None:
        """
        Deliver the oldest held read; the next reads are held too.
        """
        assert self.held
        d = self.held.pop(0)
        d.callback(getattr(d, "_result_"))

    def release(self) -> None:
        """
        Deliver every held read; the next reads are not held.
        """
        held, self.held = self.held or [], None
        for d in held:
            d.callback(getattr(d, "_result_"))

    def write(self, work: Any) -> Any:
        with self.engine.begin() as conn:
            return work(conn)

    def position(self) -> int:
        return self.write(db.lastChangeId)

    def value(self, d: Deferred) -> Any:
        results: List[Any] = []

        def keep(result: Any) -> None:
            results.append(result)

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


def provision(billing: Billing) -> None:
    """
    Alice and bob of acme, carol of globex; bob lets carol watch him, alice
    lets nobody.
    """
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
    billing.write(lambda conn: db.addAccount(conn, BOB, "pw", "acme"))
    billing.write(lambda conn: db.addAccount(conn, CAROL, "pw", "globex"))
    billing.write(lambda conn: db.setRule(conn, BOB, CAROL, "allow"))
    billing.write(lambda conn: db.setRule(conn, ALICE, "*", "block"))


def test_providesIAuthorizer(billing):
    verifyObject(IAuthorizer, billing.authorizer)
    verifyObject(IAuthorizer, OpenAuthorizer())


def test_loadedAtStartInPages():
    """
    start() reads every account and rule, a page per read, notes the
    change log position, and tells the listeners to re-check everything;
    then lookups answer at once without reading.
    """
    b = Billing(pageSize=2)
    try:
        provision(b)
        a = b.authorizer
        assert not a.loaded
        assert b.value(a.start()) is None
        # Where the log ends, 2 + 1 pages of accounts, 2 + 0 of rules,
        # then the changes since the first read (none).
        assert b.reads == 6
        assert a.loaded and a.lastChange == b.position()
        assert (a.accountCount, a.ruleCount) == (3, 2)
        assert b.changes == [None] and a.counters["reloads"] == 1
        d = a.account(ALICE)
        assert d.called and b.value(d).customer == "acme"
        assert b.value(a.account("sip:nobody@example.test")) is None
        assert b.value(a.watchDecision(CAROL, BOB)) == "allow"
        assert b.value(a.watchDecision(ALICE, BOB)) == "allow"
        assert b.value(a.watchDecision(BOB, ALICE)) == "block"
        assert b.value(a.watchDecision(CAROL, ALICE)) == "block"
        # The owner is not even counted.
        assert b.value(a.watchDecision(BOB, BOB)) == "allow"
        assert b.reads == 6 and a.counters["lookups"] == 6
    finally:
        b.close()


def test_lookupsBeforeTheLoadWaitForIt(billing):
    provision(billing)
    a = billing.authorizer
    billing.held = []
    started = a.start()
    assert not started.called
    account, decision, own = a.account(ALICE), a.watchDecision(CAROL, BOB), a.watchDecision(BOB, BOB)
    assert not account.called and not decision.called
    assert billing.value(own) == "allow"
    assert a.counters["waited"] == 2
    billing.release()
    assert billing.value(started) is None and a.loaded
    assert billing.value(account).aor == ALICE
    assert billing.value(decision) == "allow"
    assert a.counters["waitTimeouts"] == 0 and a.counters["lookups"] == 2
    # Only the poll timer is left: the lookups' timeout is gone.
    assert len(billing.clock.getDelayedCalls()) == 1


def test_lookupsFailWhenNotLoadedInTime(billing):
    """
    While the load fails, lookups wait lookupTimeout seconds each, then
    fail (the manager answers 500).
    """
    a = billing.authorizer
    billing.failing = True
    assert billing.value(a.start()) is None
    assert not a.loaded and a.counters["loadErrors"] == 1
    first = a.account(ALICE)
    billing.clock.advance(3)
    second = a.watchDecision(ALICE, BOB)
    billing.clock.advance(1.9)
    assert not first.called and not second.called
    billing.clock.advance(0.1)
    assert billing.value(first).check(BillingUnavailable)
    assert not second.called
    billing.clock.advance(3)
    assert billing.value(second).check(BillingUnavailable)
    assert a.counters["waitTimeouts"] == 2 and a.counters["waited"] == 2


def test_failedLoadIsRetriedWithAGrowingDelay(billing):
    provision(billing)
    a = billing.authorizer
    billing.failing = True
    billing.value(a.start())
    assert billing.reads == 1 and a.counters["loadErrors"] == 1
    billing.clock.advance(1)
    assert billing.reads == 2
    billing.clock.advance(1)
    assert billing.reads == 2
    billing.clock.advance(1)
    assert billing.reads == 3 and a.counters["loadErrors"] == 3
    waiting = a.account(ALICE)
    billing.failing = False
    billing.clock.advance(4)
    assert a.loaded and billing.value(waiting).aor == ALICE
    assert billing.changes == [None]
    # Now it polls.
    reads = billing.reads
    billing.clock.advance(2)
    assert billing.reads == reads + 1


def test_stopFailsWaitingLookups(billing):
    a = billing.authorizer
    billing.failing = True
    billing.value(a.start())
    waiting = a.account(ALICE)
    a.stop()
    assert billing.value(waiting).check(BillingUnavailable)
    assert billing.value(a.account(BOB)).check(BillingUnavailable)
    assert billing.clock.getDelayedCalls() == []


def test_changesUpdateTheReplicaAndTellListeners(billing):
    a = billing.authorizer
    billing.value(a.start())
    assert a.lastChange == 0 and billing.changes == [None]
    assert billing.value(a.account(ALICE)) is None
    assert billing.value(a.watchDecision(ALICE, BOB)) == "allow"
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", "acme"))
    # Nothing changes until the next poll...
    assert billing.value(a.account(ALICE)) is None
    billing.clock.advance(2.0)
    assert billing.changes[-1] == frozenset([ALICE])
    assert billing.value(a.account(ALICE)).customer == "acme"
    assert billing.value(a.watchDecision(ALICE, BOB)) == "block"
    # ... and it keeps polling.
    billing.write(lambda conn: db.addAccount(conn, BOB, "pw", "acme"))
    billing.write(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    billing.clock.advance(2.0)
    assert billing.changes[-1] == frozenset([BOB])
    assert billing.value(a.watchDecision(ALICE, BOB)) == "ask"
    assert (a.accountCount, a.ruleCount) == (2, 1)
    # Removing alice removes bob's rule naming her: both are re-read.
    billing.write(lambda conn: db.removeAccount(conn, ALICE))
    billing.clock.advance(2.0)
    assert billing.changes[-1] == frozenset([ALICE, BOB])
    assert billing.value(a.account(ALICE)) is None
    assert (a.accountCount, a.ruleCount) == (1, 0)
    assert billing.value(a.watchDecision(ALICE, BOB)) == "block"
    assert a.counters["changes"] == 5 and a.lastChange == billing.position()
    assert len(billing.clock.getDelayedCalls()) == 1
    a.stop()
    assert billing.clock.getDelayedCalls() == []


def test_changesDuringTheLoadAreNotMissed():
    """
    The pages are separate reads: a change made while they are read may
    land in a page already read.  The changes logged since the position
    noted before the first page are read again before anything is served.
    """
    b = Billing(pageSize=2)
    try:
        provision(b)

        def meanwhile(n: int) -> None:
            # After the position and the first page (alice, bob).
            if n == 3:
                b.write(lambda conn: db.setStatus(conn, ALICE, "blocked"))
                b.write(lambda conn: db.addAccount(conn, AARON, "pw", "acme"))
                b.write(lambda conn: db.clearRules(conn, ALICE))

        b.beforeRead = meanwhile
        b.value(b.authorizer.start())
        a = b.authorizer
        assert a.loaded and a.lastChange == b.position()
        assert b.value(a.account(ALICE)).status == "blocked"
        assert b.value(a.account(AARON)).customer == "acme"
        assert (a.accountCount, a.ruleCount) == (4, 1)
        assert b.value(a.watchDecision(BOB, ALICE)) == "block"
        assert b.value(a.watchDecision(CAROL, BOB)) == "allow"
        # Listeners re-check everything once, nothing in between.
        assert b.changes == [None]
    finally:
        b.close()


def test_prunedChangesReloadEverything(billing):
    """
    Changes pruned before this server saw them: everything is read again,
    the old replica answering meanwhile, and listeners re-check everything.
    """
    a = billing.authorizer
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw", now=1.0))
    billing.value(a.start())
    assert a.lastChange == 1
    billing.write(lambda conn: db.addAccount(conn, BOB, "pw", now=2.0))
    billing.write(lambda conn: db.recordChanges(conn, [CAROL], now=5.0 + db.CHANGE_RETENTION))
    billing.held = []
    billing.clock.advance(2.0)
    billing.releaseOne()  # the changes: bob's was pruned
    assert billing.value(a.account(ALICE)).aor == ALICE
    assert billing.value(a.account(BOB)) is None
    billing.release()
    assert billing.changes == [None, None]
    assert billing.value(a.account(BOB)).aor == BOB
    assert a.lastChange == 3 and a.counters["reloads"] == 2


def test_anAbandonedReadNeverUndoesANewerChange(billing):
    """
    Reads are one chain at a time, and a chain abandoned by stop() changes
    nothing when its reads come back: a re-read that predates a change
    never overwrites what a later one read.
    """
    a = billing.authorizer
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.value(a.start())
    billing.write(lambda conn: db.setStatus(conn, ALICE, "blocked"))
    billing.held = []
    a.poll()
    billing.releaseOne()  # the change; the re-read of alice (blocked) is held
    assert len(billing.held) == 1
    # No second chain while one is in flight.
    assert a.poll().called and len(billing.held) == 1
    a.stop()
    billing.held, late = None, billing.held
    billing.write(lambda conn: db.setStatus(conn, ALICE, "active"))
    billing.value(a.start())
    assert billing.value(a.account(ALICE)).status == "active"
    assert billing.changes[-1] == frozenset([ALICE]) and a.lastChange == 3
    told = len(billing.changes)
    for d in late:
        d.callback(getattr(d, "_result_"))
    assert billing.value(a.account(ALICE)).status == "active"
    assert a.lastChange == 3 and len(billing.changes) == told


def test_pollFailuresAreRetried(billing):
    a = billing.authorizer
    billing.value(a.start())
    billing.failing = True
    billing.clock.advance(2.0)
    billing.clock.advance(2.0)
    assert a.counters["pollErrors"] == 2 and a.loaded
    billing.failing = False
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.clock.advance(2.0)
    assert billing.changes == [None, frozenset([ALICE])]
    assert billing.value(a.account(ALICE)).aor == ALICE


def test_listenerErrorsAreContained(billing):
    a = billing.authorizer

    def broken(aors: Any) -> None:
        raise RuntimeError("listener bug")

    a.addChangeListener(broken)
    billing.value(a.start())
    billing.write(lambda conn: db.addAccount(conn, ALICE, "pw"))
    billing.value(a.poll())
    assert billing.changes == [None, frozenset([ALICE])]
    a.removeChangeListener(broken)
    a.removeChangeListener(broken)


def test_loadPagesCoverEveryRow(url):
    """
    The keyset pages, on each backend: every account and rule once, in
    order, whatever the page size.
    """
    aors = ["sip:u%02d@example.test" % (i,) for i in range(7)]

    def work(conn: Any) -> None:
        for aor in aors:
            db.addAccount(conn, aor, "pw")
        for pattern in ("*", "@other.test", aors[1]):
            db.setRule(conn, aors[0], pattern, "ask")
        db.setRule(conn, aors[2], "*", "block")

    transaction(url, work)

    def scan(conn: Any, pageFn: Any, key: Any) -> List[Any]:
        rows: List[Any] = []
        after = None
        while True:
            page = pageFn(conn, after, 3)
            rows.extend(page)
            if len(page) < 3:
                return rows
            after = key(page[-1])

    accounts = transaction(url, lambda conn: scan(conn, db.accountsPage, lambda account: account.aor))
    assert [account.aor for account in accounts] == aors
    rules = transaction(url, lambda conn: scan(conn, db.rulesPage, lambda rule: rule[:2]))
    assert sorted(rules) == rules and len(rules) == 4
    assert set(rules) == {
        (aors[0], "*", "ask"), (aors[0], "@other.test", "ask"), (aors[0], aors[1], "ask"), (aors[2], "*", "block"),
    }
    # What repeats across accounts is one string each.
    assert accounts[0].customer is accounts[1].customer and accounts[0].status is accounts[1].status


# The service, on a real store.


@pytest_twisted.inlineCallbacks
def test_serviceOnStore(tmp_path):
    """
    The billing service loads accounts through the store's reader threads,
    never on the reactor thread, is ready once they are in memory, answers
    from there, and sees what presence-admin writes.
    """
    from twisted.application import service

    from presence.store import StoreService

    url = "sqlite:///%s" % (tmp_path / "p.sqlite",)
    _upgrade(url)
    transaction(url, lambda conn: db.addAccount(conn, BOB, "pw", "acme"))
    root = service.MultiService()
    sqlStore = SQLStore(url)
    threads: List[str] = []
    original = sqlStore.runRead

    def spy(fn: Any) -> Deferred:
        def wrapped(conn: Any) -> Any:
            threads.append(threading.current_thread().name)
            return fn(conn)

        return original(wrapped)

    sqlStore.runRead = spy  # type: ignore[method-assign]
    store = StoreService(sqlStore)
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
        assert authorizer.loaded and authorizer.accountCount == 1
        assert threads and all("presence-store-reader" in t for t in threads)
        found = authorizer.account(BOB)
        assert found.called and (yield found).customer == "acme"
        assert (yield authorizer.account(ALICE)) is None
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
    state = svc.__getstate__()
    assert not {"authorizer", "digest", "_outcome", "_waiters"} & set(state)
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
