"""
Whether this process should be given traffic (C{/ready}): what a load
balancer, an orchestrator or a dispatcher's operator asks before sending
it requests, as opposed to C{/health}, whether it runs at all.

A process is ready when every part it runs can serve: its database
answers a query, its subscription manager has loaded, its cluster lease
is held (a fenced manager holds its NOTIFYs back), a dispatcher has a
manager in rotation, a billing node has its accounts in memory.  Each part
it does not run is not asked about.  A manager that drains (before
maintenance) is not ready either: it refuses new work.  Everything here runs on the reactor
thread; the database is asked on the store's reader pool, never here.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from presence.admin.collectors import readManager
from presence.admin.console import LiveObjects

#: Seconds the database may take to answer the readiness query.
PROBE_TIMEOUT = 2.0


def _select1(conn: Any) -> int:
    """
    Reader thread: the cheapest query that needs the database to answer.
    """
    import sqlalchemy as sa

    return int(conn.execute(sa.text("SELECT 1")).scalar())


def _firstLine(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DatabaseProbe:
    """
    Asks the store's database a query, at most one at a time: readiness
    checks arriving while one is in flight wait for the same answer, so a
    database that hangs ties up one reader thread, not one per check.
    """

    def __init__(self, clock: Any, timeout: float = PROBE_TIMEOUT) -> None:
        self.clock = clock
        self.timeout = timeout
        self._inFlight = False
        self._waiters: List[Tuple[Deferred, Any]] = []

    def check(self, store: Any) -> Deferred:
        """
        @return: a Deferred firing with L{None} once the database answered,
            else with why not (an error, or no answer within L{timeout}).
        """
        waiter: Deferred = Deferred()
        call = self.clock.callLater(self.timeout, self._timedOut, waiter)
        self._waiters.append((waiter, call))
        if not self._inFlight:
            self._inFlight = True
            store.runRead(_select1).addBoth(self._answered)
        return waiter

    def _timedOut(self, waiter: Deferred) -> None:
        self._waiters = [(d, call) for d, call in self._waiters if d is not waiter]
        waiter.callback("the database did not answer within %g s" % (self.timeout,))

    def _answered(self, result: Any) -> None:
        self._inFlight = False
        reason = None
        if isinstance(result, Failure):
            reason = "the database cannot be reached: %s" % (_firstLine(result.value),)
        waiters, self._waiters = self._waiters, []
        for waiter, call in waiters:
            call.cancel()
            waiter.callback(reason)


class Readiness:
    """
    The readiness checks of one service tree.
    """

    def __init__(self, live: LiveObjects, clock: Any) -> None:
        self.live = live
        self.probe = DatabaseProbe(clock)

    def check(self) -> Deferred:
        """
        @return: a Deferred firing with the reasons this process is not
            ready, one line each; an empty list when it is.
        """
        reasons: List[Optional[str]] = list(self._parts())
        checks = [succeed(reason) for reason in reasons]
        if self.live.service("store") is not None:
            store = self.live.store
            if store is None:
                checks.append(succeed("the store has not started"))
            elif hasattr(store, "runRead"):
                checks.append(self.probe.check(store))
        return gatherResults(checks).addCallback(lambda found: [reason for reason in found if reason])

    def _part(self, name: str, attribute: str) -> Tuple[bool, Any]:
        """
        Whether this process runs the service C{name}, and its live object
        (its attribute C{attribute}), L{None} until it has started.
        """
        running = self.live.service(name)
        return running is not None, getattr(running, attribute, None)

    def _parts(self) -> List[Optional[str]]:
        """
        What the live objects tell without asking anyone.
        """
        reasons: List[Optional[str]] = []
        hasManager, manager = self._part("manager", "manager")
        if hasManager and manager is None:
            reasons.append("the subscription manager is loading")
        elif manager is not None and readManager(manager).draining:
            reasons.append("the subscription manager is draining (presence-admin live resume)")
        hasCluster, group = self._part("cluster", "group")
        if hasCluster and group is None:
            reasons.append("the cluster has not started")
        lease = getattr(group, "lease", None)
        if lease is not None and not lease.holding:
            reasons.append("this manager's lease is not held (fenced: NOTIFYs are held back)")
        hasDispatcher, dispatcher = self._part("dispatcher", "dispatcher")
        if hasDispatcher and dispatcher is None:
            reasons.append("the dispatcher has not started")
        elif dispatcher is not None and not any(m.up and not m.draining for m in dispatcher.managers):
            reasons.append("no subscription manager is in rotation (all down or draining)")
        hasBilling, authorizer = self._part("billing", "authorizer")
        # A billing node's accounts; a manager waits for its own.
        if hasBilling and not hasManager and getattr(authorizer, "loaded", authorizer is not None) is False:
            reasons.append("the accounts are not loaded yet")
        return reasons
