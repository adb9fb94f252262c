"""
The embedded authorizer: billing answers read from the SQL store, cached.

Why a cache: every SUBSCRIBE and PUBLISH needs an account (for its digest
credentials) and every SUBSCRIBE a watch decision; reading them from the
database each time would put a thread hop and a query on the hot path.
Answers are kept for C{cacheTtl} seconds, which bounds how stale one can
be if a change is ever missed, and dropped at once when an account or a
policy changes: provisioning appends the AORs it touched to
C{billing_changes} in the same transaction, and the authorizer polls that
table every C{pollInterval} seconds on the store's reader threads, drops
what those AORs touched, then tells its change listeners (the subscription
manager re-evaluates the subscriptions concerned).

Unknown accounts are cached too (as L{None}): an attacker cycling through
user names costs one query per name and TTL, not one per request, and
adding the account invalidates the entry.

Misses are read in batches: one batch at a time goes to a reader thread,
and the misses that come meanwhile go together in the next one, so a burst
of new users (a restart, a load test) costs a few reads, not one thread
hop per request.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, Hashable, Iterable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.billing import db
from presence.billing.policy import decide
from presence.billing.records import ALLOW
from presence.interfaces import IAuthorizer

#: Runs C{fn(conn)} on a database connection off the reactor thread and
#: returns a Deferred of its (plain) result: C{SQLStore.runRead}.
Reader = Callable[[Callable[[Any], Any]], Deferred]

ChangeListener = Callable[[Optional[FrozenSet[str]]], None]

_MISSING = object()


class TTLCache:
    """
    A bounded mapping whose entries live C{ttl} seconds and are indexed by
    the AORs they depend on, so that a change to one AOR drops exactly the
    entries it may have changed.  Least recently used entries go first when
    it is full.
    """

    def __init__(self, clock: Any, ttl: float, maxEntries: int) -> None:
        self.clock = clock
        self.ttl = ttl
        self.maxEntries = maxEntries
        self._entries: OrderedDict[Hashable, Tuple[Any, float, Tuple[str, ...]]] = OrderedDict()
        self._byAOR: Dict[str, Set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """
        The live value for C{key}, or C{_MISSING}.
        """
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        if entry[1] <= self.clock.seconds():
            self._drop(key)
            return _MISSING
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, aors: Tuple[str, ...]) -> None:
        """
        Remember C{value} for C{key}; it depends on C{aors}.
        """
        if self.ttl <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self.clock.seconds() + self.ttl, aors)
        for aor in aors:
            self._byAOR.setdefault(aor, set()).add(key)
        while len(self._entries) > self.maxEntries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for aor in entry[2]:
            keys = self._byAOR.get(aor)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._byAOR[aor]

    def invalidate(self, aors: Iterable[str]) -> int:
        """
        Drop every entry depending on one of C{aors}.

        @return: how many entries were dropped.
        """
        dropped = 0
        for aor in aors:
            for key in list(self._byAOR.get(aor, ())):
                self._drop(key)
                dropped += 1
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._byAOR.clear()


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
class EmbeddedAuthorizer:
    """
    L{IAuthorizer} on the SQL store, with a TTL cache and change polling.

    @ivar counters: C{hits} and C{misses} of the cache (per lookup),
        C{batches} database reads the misses took, C{invalidated} entries
        dropped by changes, C{changes} change rows seen, C{pollErrors}
        polls that failed.
    """

    log = Logger()

    #: Most lookups in one batch (bounds the size of the IN lists).
    maxBatch = 500

    def __init__(
        self,
        read: Reader,
        clock: Any,
        cacheTtl: float = 30.0,
        pollInterval: float = 2.0,
        maxEntries: int = 100000,
    ) -> None:
        """
        @param read: runs billing reads off the reactor thread
            (C{SQLStore.runRead}).
        @param clock: provides C{seconds} and C{callLater}.
        @param cacheTtl: how long an answer is kept; 0 disables the cache.
        @param pollInterval: seconds between two polls of
            C{billing_changes}; 0 disables polling (tests call L{poll}).
        """
        self._read = read
        self.clock = clock
        self.cacheTtl = cacheTtl
        self.pollInterval = pollInterval
        self._accounts = TTLCache(clock, cacheTtl, maxEntries)
        self._decisions = TTLCache(clock, cacheTtl, maxEntries)
        self._waiting: Dict[Tuple[str, ...], List[Deferred]] = {}
        self._queued: List[Tuple[str, ...]] = []
        self._busy = False
        self._generation = 0
        self._listeners: List[ChangeListener] = []
        self.lastChange: Optional[int] = None
        self._timer: Any = None
        self._polling = False
        self._failing = False
        self.running = False
        self.counters = {
            "hits": 0, "misses": 0, "batches": 0, "invalidated": 0, "changes": 0, "pollErrors": 0,
        }

    @property
    def cacheSize(self) -> int:
        """
        Entries cached now (accounts and decisions).
        """
        return len(self._accounts) + len(self._decisions)

    # Lifecycle.

    def start(self) -> Deferred:
        """
        Find where the change log ends, then poll it.  Fires when the first
        read is done; a failure is logged and the next poll tries again.
        """
        self.running = True
        d = self._read(db.lastChangeId)

        def started(last: int) -> None:
            if self.lastChange is None:
                self.lastChange = last

        def failed(failure: Failure) -> None:
            self.log.failure("Billing: cannot read the change log; will retry", failure)

        d.addCallbacks(started, failed)
        d.addBoth(lambda _: self._schedule())
        return d

    def stop(self) -> None:
        """
        Stop polling.  Lookups keep working.
        """
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if self.running and self._timer is None and self.pollInterval > 0:
            self._timer = self.clock.callLater(self.pollInterval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.poll().addBoth(lambda _: self._schedule())

    # Changes.

    def poll(self) -> Deferred:
        """
        Read the changes since the last poll once, invalidate what they
        touched and tell the listeners.  Never fails.
        """
        if self._polling:
            return succeed(None)
        self._polling = True
        after = self.lastChange
        if after is None:
            d = self._read(db.lastChangeId)
            d.addCallback(self._initialised)
        else:
            d = self._read(lambda conn: db.changesSince(conn, after))
            d.addCallback(self._changesRead, after)
        d.addCallbacks(self._pollSucceeded, self._pollFailed)
        return d

    def _initialised(self, last: int) -> None:
        if self.lastChange is None:
            self.lastChange = last
        # We did not know where the log ended: anything may have changed.
        self.invalidateAll()

    def _changesRead(self, result: Tuple[List[Tuple[int, str]], int], after: int) -> None:
        rows, oldest = result
        if after > 0 and oldest > after + 1:
            self.log.warn(
                "Billing: changes after {after} were pruned before this server saw them; "
                "dropping every cached answer",
                after=after,
            )
            self.lastChange = rows[-1][0] if rows else oldest - 1
            self.invalidateAll()
            return
        if not rows:
            return
        self.lastChange = rows[-1][0]
        self.counters["changes"] += len(rows)
        self.invalidate(frozenset(aor for _, aor in rows))

    def _pollSucceeded(self, _: Any) -> None:
        self._polling = False
        if self._failing:
            self._failing = False
            self.log.info("Billing: reading the change log again")

    def _pollFailed(self, failure: Failure) -> None:
        self._polling = False
        self.counters["pollErrors"] += 1
        if not self._failing:
            self._failing = True
            self.log.failure("Billing: cannot read the change log", failure)

    def invalidate(self, aors: FrozenSet[str]) -> None:
        """
        Drop every cached answer involving C{aors} and tell the listeners.
        """
        self._generation += 1
        dropped = self._accounts.invalidate(aors) + self._decisions.invalidate(aors)
        self.counters["invalidated"] += dropped
        self.log.info("Billing changed for {aors}", aors=" ".join(sorted(aors)))
        self._tell(frozenset(aors))

    def invalidateAll(self) -> None:
        """
        Drop every cached answer; listeners re-check everything.
        """
        self._generation += 1
        self.counters["invalidated"] += self.cacheSize
        self._accounts.clear()
        self._decisions.clear()
        self._tell(None)

    def _tell(self, aors: Optional[FrozenSet[str]]) -> None:
        for listener in list(self._listeners):
            try:
                listener(aors)
            except Exception:
                self.log.failure("Billing change listener failed")

    def addChangeListener(self, listener: ChangeListener) -> None:
        """
        See L{IAuthorizer.addChangeListener}.
        """
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeChangeListener(self, listener: ChangeListener) -> None:
        """
        See L{IAuthorizer.removeChangeListener}.
        """
        if listener in self._listeners:
            self._listeners.remove(listener)

    # Lookups.

    def account(self, aor: str) -> Deferred:
        """
        See L{IAuthorizer.account}.
        """
        cached = self._accounts.get(aor)
        if cached is not _MISSING:
            self.counters["hits"] += 1
            return succeed(cached)
        self.counters["misses"] += 1
        return self._lookup(("account", aor))

    def watchDecision(self, watcher: str, presentity: str) -> Deferred:
        """
        See L{IAuthorizer.watchDecision}.
        """
        if watcher == presentity:
            return succeed(ALLOW)
        cached = self._decisions.get((watcher, presentity))
        if cached is not _MISSING:
            self.counters["hits"] += 1
            return succeed(cached)
        self.counters["misses"] += 1
        return self._lookup(("decision", watcher, presentity))

    def _lookup(self, key: Tuple[str, ...]) -> Deferred:
        """
        Read C{key} from the database, batched: while one batch of reads is
        in flight, the misses that come are queued and go together in the
        next one (one thread hop and two queries for any number of them),
        as the store's writer does with group commit.  Concurrent lookups
        of one key share one read, but only within one generation: a lookup
        made after a change never joins a read that may predate it.
        """
        d: Deferred = Deferred()
        pending = (self._generation,) + key
        waiters = self._waiting.get(pending)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[pending] = [d]
        self._queued.append(pending)
        self._flush()
        return d

    def _flush(self) -> None:
        if self._busy or not self._queued:
            return
        keys = self._queued[: self.maxBatch]
        del self._queued[: self.maxBatch]
        aors: Set[str] = set()
        presentities: Set[str] = set()
        for pending in keys:
            key = pending[1:]
            aors.update(key[1:])
            if key[0] == "decision":
                presentities.add(key[2])
        self._busy = True
        self.counters["batches"] += 1
        generation = self._generation
        d = self._read(lambda conn: db.billingInputs(conn, aors, presentities))
        d.addBoth(self._batchRead, keys, generation)

    def _batchRead(self, result: Any, keys: List[Tuple[str, ...]], generation: int) -> None:
        """
        Answer every lookup of a batch; cache the answers unless something
        changed while they were read (they might predate the change).
        """
        self._busy = False
        try:
            if isinstance(result, Failure):
                for pending in keys:
                    for waiter in self._waiting.pop(pending, []):
                        waiter.errback(result)
                return
            accounts, rules = result
            remember = generation == self._generation
            answers: List[Tuple[List[Deferred], Any]] = []
            for pending in keys:
                key = pending[1:]
                if key[0] == "account":
                    aor = key[1]
                    value: Any = accounts.get(aor)
                    if remember:
                        self._accounts.put(aor, value, (aor,))
                else:
                    watcher, presentity = key[1], key[2]
                    watcherAccount, presentityAccount = accounts.get(watcher), accounts.get(presentity)
                    value = decide(watcher, presentity, watcherAccount, presentityAccount, rules.get(presentity, {}))
                    if remember:
                        self._decisions.put((watcher, presentity), value, (watcher, presentity))
                        self._accounts.put(watcher, watcherAccount, (watcher,))
                        self._accounts.put(presentity, presentityAccount, (presentity,))
                answers.append((self._waiting.pop(pending, []), value))
            for waiters, value in answers:
                for waiter in waiters:
                    waiter.callback(value)
        finally:
            self._flush()


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
