"""
The embedded authorizer: billing answered from an in-memory replica of the
billing tables, kept current by following their change log.

Why a replica and not a cache: every SUBSCRIBE and PUBLISH needs an account
(for its digest credentials) and every SUBSCRIBE a watch decision.  A cache
in front of the database misses for every new user, and under a load of new
users those reads took a quarter to a third of the server's CPU.  The
accounts and watch rules of a server fit in memory (a few hundred bytes per
account), so lookups answer at once from there and the database is read
only to load them and to follow their changes:

  - L{EmbeddedAuthorizer.start} reads where the change log ends, then every
    account and watch rule, in pages (keyset order, a few thousand rows per
    read on the store's reader threads: no read holds a thread long, and
    the reactor only files each page), then applies the changes logged
    since the position it read first, so that nothing changed during the
    load is missed.  Lookups made before that wait, at most
    C{lookupTimeout} seconds: then they fail and the manager answers 500
    with Retry-After.  A failed load is retried after a growing delay.
  - Provisioning appends the AORs it touched to C{billing_changes} in the
    same transaction.  Every C{pollInterval} seconds the authorizer reads
    the new rows, re-reads the accounts of those AORs and their rules as
    presentity, updates the replica, then tells its change listeners (the
    subscription manager re-checks the subscriptions concerned).
  - When changes were pruned before it saw them (it fell a day behind), it
    loads everything again, answering from the old replica until the new
    one is complete, then tells its listeners that anything may have
    changed.

Order: the authorizer's database work is one chain of reads at a time (a
load or a poll), so a re-read never lands after a newer one; and each
chain carries the generation it started in: one abandoned by
L{EmbeddedAuthorizer.stop} (or a new start) changes nothing when its
reads come back late.
"""

from __future__ import annotations

from collections import deque
from types import MappingProxyType
from typing import Any, Callable, Deque, Dict, FrozenSet, Generator, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.billing import db
from presence.billing.errors import BillingUnavailable
from presence.billing.listeners import ChangeListener, ChangeListeners
from presence.billing.policy import decide
from presence.billing.records import ALLOW, AccountInfo
from presence.interfaces import IAuthorizer

#: Runs C{fn(conn)} on a database connection off the reactor thread and
#: returns a Deferred of its (plain) result: C{SQLStore.runRead}.
Reader = Callable[[Callable[[Any], Any]], Deferred]


#: The rules of a presentity that has none.
_NO_RULES: Mapping[str, str] = MappingProxyType({})


class _Superseded(Exception):
    """
    A chain of reads abandoned by L{EmbeddedAuthorizer.stop} or a new
    start: what it read must change nothing.
    """


class ConnectionReader:
    """
    A L{Reader} running each function at once on the calling thread with a
    connection of C{engine}.  For unit tests and tools without a reactor
    only: in the server, reads run on the store's reader threads.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __call__(self, fn: Callable[[Any], Any]) -> Deferred:
        try:
            with self.engine.connect() as conn:
                return succeed(fn(conn))
        except Exception:
            return fail()


@implementer(IAuthorizer)
class EmbeddedAuthorizer(ChangeListeners):
    """
    L{IAuthorizer} from memory: every account and watch rule, loaded from
    the SQL store and kept current by polling its change log.

    @ivar loaded: whether the replica is loaded (lookups answer at once).
    @ivar lastChange: the change log position the replica is at, L{None}
        before the first load.
    @ivar counters: C{lookups} answered from memory, C{waited} lookups
        that had to wait for the first load, C{waitTimeouts} of those that
        failed because it took too long, C{changes} change rows applied,
        C{reloads} complete loads (the first included), C{loadErrors}
        failed attempts at the first load, C{pollErrors} failed polls
        (and reloads) once loaded.
    """

    log = Logger()

    #: AORs re-read per read when following changes (bounds the IN lists).
    refreshBatch = 500

    #: Change log rows per read.
    changePage = 1000

    #: Seconds before the first retry of a failed load; the delay doubles
    #: with each failure, up to L{maxRetryDelay}.
    minRetryDelay = 1.0
    maxRetryDelay = 30.0

    def __init__(
        self,
        read: Reader,
        clock: Any,
        pollInterval: float = 2.0,
        lookupTimeout: float = 5.0,
        pageSize: int = 2000,
    ) -> None:
        """
        @param read: runs billing reads off the reactor thread
            (C{SQLStore.runRead}).
        @param clock: provides C{seconds} and C{callLater}.
        @param pollInterval: seconds between two polls of
            C{billing_changes}; 0 disables polling (tests call L{poll}).
        @param lookupTimeout: how long a lookup made before the replica is
            loaded waits for it before failing.
        @param pageSize: rows per read when loading.
        """
        self._read = read
        self.clock = clock
        self.pollInterval = pollInterval
        self.lookupTimeout = lookupTimeout
        self.pageSize = pageSize
        self._accounts: Dict[str, AccountInfo] = {}
        self._rules: Dict[str, Dict[str, str]] = {}
        self.loaded = False
        self.lastChange: Optional[int] = None
        self.running = False
        self._generation = 0
        self._busy = False
        self._timer: Any = None
        self._loadFailures = 0
        self._failing = False
        # Lookups waiting for the first load: (deadline, Deferred, AOR or
        # watcher, None or presentity), oldest first.
        self._waiting: Deque[Tuple[float, Deferred, str, Optional[str]]] = deque()
        self._waitTimer: Any = None
        self._listeners: List[ChangeListener] = []
        self.counters = {
            "lookups": 0, "waited": 0, "waitTimeouts": 0, "changes": 0, "reloads": 0,
            "loadErrors": 0, "pollErrors": 0,
        }

    @property
    def accountCount(self) -> int:
        """
        Accounts held in memory now.
        """
        return len(self._accounts)

    @property
    def ruleCount(self) -> int:
        """
        Watch rules held in memory now.
        """
        return sum(len(each) for each in self._rules.values())

    # Lifecycle.

    def start(self) -> Deferred:
        """
        Load the replica, then follow the change log.

        @return: a Deferred firing once the first attempt at loading is
            over, whether it worked (lookups then answer from memory) or
            not (it is logged and retried after a growing delay; lookups
            wait meanwhile, within their timeout).  It never fails.
        """
        if self.running:
            return succeed(None)
        self.running = True
        self._generation += 1
        self._busy = False
        return self.poll()

    def stop(self) -> None:
        """
        Stop loading and polling, and drop the reads in flight.  Lookups
        keep answering from memory; those still waiting for the first load
        fail now.
        """
        self.running = False
        self._generation += 1
        self._busy = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._failWaiting(BillingUnavailable("billing stopped before its accounts were loaded"))

    def _schedule(self) -> None:
        if not self.running or self._timer is not None:
            return
        if self.loaded:
            if self.pollInterval <= 0:
                return
            delay = self.pollInterval
        else:
            delay = self._retryDelay()
        self._timer = self.clock.callLater(delay, self._tick)

    def _retryDelay(self) -> float:
        exponent = min(max(self._loadFailures - 1, 0), 16)
        return min(self.maxRetryDelay, self.minRetryDelay * 2.0**exponent)

    def _tick(self) -> None:
        self._timer = None
        self.poll()

    # Loading and following changes.

    def poll(self) -> Deferred:
        """
        Apply the changes logged since the last poll, or load everything
        when nothing is loaded yet or changes were pruned before this
        server saw them.  Does nothing while a load or a poll is in flight:
        they run one at a time, so their reads apply in order.

        @return: a Deferred firing when done.  It never fails: a failure is
            counted, logged, and tried again (the next poll, or a load
            retry).
        """
        if self._busy:
            return succeed(None)
        self._busy = True
        generation = self._generation
        d = self._step(generation)
        d.addBoth(self._stepped, generation)
        return d

    @inlineCallbacks
    def _step(self, generation: int) -> Generator[Deferred, Any, None]:
        after = self.lastChange
        if after is None:
            yield self._load(generation)
            return
        position = yield self._follow(generation, after, self._accounts, self._rules, live=True)
        if position is None:
            self.log.warn(
                "Billing: changes after {after} were pruned before this server saw them; "
                "loading every account and rule again",
                after=self.lastChange,
            )
            yield self._load(generation)

    def _stepped(self, result: Any, generation: int) -> None:
        if generation != self._generation:
            # Abandoned by stop() or a new start: its outcome is not ours.
            return None
        self._busy = False
        if isinstance(result, Failure):
            if self.loaded:
                self.counters["pollErrors"] += 1
                if not self._failing:
                    self._failing = True
                    self.log.failure("Billing: cannot read the change log", result)
            else:
                self._loadFailures += 1
                self.counters["loadErrors"] += 1
                if self._loadFailures == 1:
                    self.log.failure(
                        "Billing: cannot load the accounts; trying again in {delay} s",
                        result,
                        delay=self._retryDelay(),
                    )
                else:
                    self.log.warn(
                        "Billing: still cannot load the accounts ({count} attempts): {error}; "
                        "trying again in {delay} s",
                        count=self._loadFailures,
                        error=result.getErrorMessage(),
                        delay=self._retryDelay(),
                    )
        else:
            self._loadFailures = 0
            if self._failing:
                self._failing = False
                self.log.info("Billing: reading the change log again")
        self._schedule()
        return None

    def _check(self, generation: int) -> None:
        """
        Stop a chain of reads that was abandoned while a read was away.
        """
        if generation != self._generation:
            raise _Superseded()

    @inlineCallbacks
    def _load(self, generation: int) -> Generator[Deferred, Any, None]:
        """
        Read every account and rule into a new replica, bring it up to date
        with the changes logged since the load began, then serve it.
        """
        began = self.clock.seconds()
        last = yield self._read(db.lastChangeId)
        self._check(generation)
        size = self.pageSize
        accounts: Dict[str, AccountInfo] = {}
        afterAOR: Optional[str] = None
        while True:
            page = yield self._read(lambda conn, after=afterAOR: db.accountsPage(conn, after, size))
            self._check(generation)
            for account in page:
                accounts[account.aor] = account
            if len(page) < size:
                break
            afterAOR = page[-1].aor
        rules: Dict[str, Dict[str, str]] = {}
        afterRule: Optional[Tuple[str, str]] = None
        while True:
            rows = yield self._read(lambda conn, after=afterRule: db.rulesPage(conn, after, size))
            self._check(generation)
            for presentity, pattern, action in rows:
                rules.setdefault(presentity, {})[pattern] = action
            if len(rows) < size:
                break
            afterRule = (rows[-1][0], rows[-1][1])
        # The pages are separate reads: what changed since the position
        # read first may be in them or not.  Read those AORs again.
        position = yield self._follow(generation, last, accounts, rules, live=False)
        if position is None:
            raise RuntimeError("the change log was pruned while the accounts were loading")
        first = not self.loaded
        self._accounts, self._rules = accounts, rules
        self.lastChange = position
        self.loaded = True
        self.counters["reloads"] += 1
        self.log.info(
            "Billing: {accounts} accounts and {rules} watch rules in memory (read in {seconds:.1f} s)",
            accounts=len(accounts),
            rules=self.ruleCount,
            seconds=self.clock.seconds() - began,
        )
        if first:
            self._answerWaiting()
        # Whatever a listener holds may predate what was just read.
        self._tell(None)

    @inlineCallbacks
    def _follow(
        self,
        generation: int,
        after: int,
        accounts: Dict[str, AccountInfo],
        rules: Dict[str, Dict[str, str]],
        live: bool,
    ) -> Generator[Deferred, Any, Optional[int]]:
        """
        Apply the changes logged after position C{after} to C{accounts}
        and C{rules}; when C{live} (the replica being served), move
        L{lastChange} and tell the listeners after each page of changes.

        @return: a Deferred firing with the new position, or L{None} when
            changes after C{after} were pruned before we read them.
        """
        limit = self.changePage
        while True:
            rows, oldest = yield self._read(lambda conn, after=after: db.changesSince(conn, after, limit))
            self._check(generation)
            if after > 0 and oldest > after + 1:
                return None
            if not rows:
                return after
            aors = frozenset(aor for _, aor in rows)
            yield self._refresh(generation, aors, accounts, rules)
            after = rows[-1][0]
            self.counters["changes"] += len(rows)
            if live:
                self.lastChange = after
                self.log.info("Billing changed for {aors}", aors=" ".join(sorted(aors)))
                self._tell(aors)
            if len(rows) < limit:
                return after

    @inlineCallbacks
    def _refresh(
        self,
        generation: int,
        aors: FrozenSet[str],
        accounts: Dict[str, AccountInfo],
        rules: Dict[str, Dict[str, str]],
    ) -> Generator[Deferred, Any, None]:
        """
        Read the accounts of C{aors} and their rules as presentity again
        (every change logs the presentities whose rules it touched) and
        put them in C{accounts} and C{rules}.
        """
        ordered = sorted(aors)
        for start in range(0, len(ordered), self.refreshBatch):
            chunk = ordered[start : start + self.refreshBatch]
            found, foundRules = yield self._read(lambda conn, chunk=chunk: db.billingInputs(conn, chunk, chunk))
            self._check(generation)
            for aor in chunk:
                account = found.get(aor)
                if account is None:
                    accounts.pop(aor, None)
                else:
                    accounts[aor] = account
                rules.pop(aor, None)
                new = foundRules.get(aor)
                if new is not None:
                    rules[aor] = new

    # Lookups.

    def account(self, aor: str) -> Deferred:
        """
        See L{IAuthorizer.account}.
        """
        if self.loaded:
            self.counters["lookups"] += 1
            return succeed(self._accounts.get(aor))
        return self._wait(aor, None)

    def watchDecision(self, watcher: str, presentity: str) -> Deferred:
        """
        See L{IAuthorizer.watchDecision}.
        """
        if watcher == presentity:
            return succeed(ALLOW)
        if self.loaded:
            self.counters["lookups"] += 1
            return succeed(self._decide(watcher, presentity))
        return self._wait(watcher, presentity)

    def _decide(self, watcher: str, presentity: str) -> str:
        accounts = self._accounts
        return decide(
            watcher,
            presentity,
            accounts.get(watcher),
            accounts.get(presentity),
            self._rules.get(presentity, _NO_RULES),
        )

    def _wait(self, aor: str, presentity: Optional[str]) -> Deferred:
        """
        A lookup made before the first load: answered by it, or failed
        after L{lookupTimeout} seconds.
        """
        if not self.running:
            return fail(BillingUnavailable("billing is not running and its accounts are not loaded"))
        d: Deferred = Deferred()
        self._waiting.append((self.clock.seconds() + self.lookupTimeout, d, aor, presentity))
        self.counters["waited"] += 1
        if self._waitTimer is None:
            self._waitTimer = self.clock.callLater(self.lookupTimeout, self._expire)
        return d

    def _expire(self) -> None:
        """
        Fail the lookups that waited L{lookupTimeout} seconds (one timer
        for all: deadlines come in the order lookups do).
        """
        self._waitTimer = None
        now = self.clock.seconds()
        waiting = self._waiting
        expired: List[Deferred] = []
        while waiting and waiting[0][0] <= now:
            expired.append(waiting.popleft()[1])
        if waiting:
            self._waitTimer = self.clock.callLater(max(waiting[0][0] - now, 0.0), self._expire)
        if not expired:
            return
        self.counters["waitTimeouts"] += len(expired)
        self.log.warn(
            "Billing: {count} lookups failed: the accounts are still not loaded after {timeout} s",
            count=len(expired),
            timeout=self.lookupTimeout,
        )
        error = Failure(BillingUnavailable("the accounts are not loaded yet"))
        for d in expired:
            if not d.called:
                d.errback(error)

    def _takeWaiting(self) -> List[Tuple[Deferred, str, Optional[str]]]:
        """
        The lookups still waiting for the first load, as (Deferred, AOR,
        presentity), the wait timer cancelled.
        """
        if self._waitTimer is not None:
            self._waitTimer.cancel()
            self._waitTimer = None
        waiting, self._waiting = self._waiting, deque()
        return [(d, aor, presentity) for _, d, aor, presentity in waiting if not d.called]

    def _answerWaiting(self) -> None:
        for d, aor, presentity in self._takeWaiting():
            self.counters["lookups"] += 1
            d.callback(self._accounts.get(aor) if presentity is None else self._decide(aor, presentity))

    def _failWaiting(self, error: Exception) -> None:
        failure = Failure(error)
        for d, _, _ in self._takeWaiting():
            d.errback(failure)


@implementer(IAuthorizer)
class OpenAuthorizer:
    """
    Billing that knows no account and allows every watcher: what a manager
    runs with when it was given no authorizer (unit tests of other parts,
    tools).  Never use it where SIP requests come from untrusted networks.
    """

    def account(self, aor: str) -> Deferred:
        return succeed(None)

    def watchDecision(self, watcher: str, presentity: str) -> Deferred:
        return succeed(ALLOW)

    def addChangeListener(self, listener: ChangeListener) -> None:
        pass

    def removeChangeListener(self, listener: ChangeListener) -> None:
        pass
