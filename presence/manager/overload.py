"""
When a manager refuses new work: 503 with Retry-After under overload.

Why: past what the process or its database can carry, accepting more
only makes every request wait.  Over UDP the senders then retransmit,
which adds load; answers come after their transactions timed out; and
NOTIFYs to existing watchers time out too, ending subscriptions that were
acknowledged.  Refusing new subscriptions and publications early, with a
Retry-After, costs a parse and a small response, keeps the state already
accepted served, and tells well-behaved user agents when to come back
(RFC 3261 §21.5.4).  In-dialog requests (refreshes, un-SUBSCRIBEs) and
refreshes of publications are never refused here: they keep existing
state alive and cost little.

Two signals, either enough:

  - the store's backlog: writes queued or being committed.  Above
    C{maxBacklog} the database does not keep up, and a new request would
    wait behind all of them for its 200;
  - the reactor's lag: how late a probe scheduled every C{interval}
    seconds runs.  Above C{maxLag} the process itself does not keep up
    (its CPU is saturated), and requests wait in the socket buffers.

Both are cheap to read on every request; the probe is one delayed call.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from twisted.logger import Logger


class OverloadGuard:
    """
    Decides, per new request, whether the manager is overloaded.

    @ivar lag: how late the last probe ran, in seconds.
    @ivar counters: C{shed} requests refused, C{episodes} times the
        manager went from serving to shedding.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        backlog: Callable[[], int],
        maxBacklog: int,
        maxLag: float,
        retryAfter: int,
        interval: float = 0.1,
    ) -> None:
        """
        @param clock: provides C{seconds} and C{callLater}.
        @param backlog: the store's writes queued or in flight now.
        @param maxBacklog: most writes waiting before new work is refused;
            0 disables this signal.
        @param maxLag: most seconds of reactor lag before new work is
            refused; 0 disables this signal.
        @param retryAfter: the Retry-After of the 503, in seconds.
        @param interval: seconds between two lag probes.
        """
        self.clock = clock
        self.backlog = backlog
        self.maxBacklog = maxBacklog
        self.maxLag = maxLag
        self.retryAfter = retryAfter
        self.interval = interval
        self.lag = 0.0
        self.counters: Dict[str, int] = {"shed": 0, "episodes": 0}
        self._due = 0.0
        self._call: Any = None
        self._shedding = False

    def start(self) -> None:
        """
        Start probing the reactor's lag (when that signal is on).
        """
        if self.maxLag > 0 and self._call is None:
            self._schedule()

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._probe)

    def _probe(self) -> None:
        self._call = None
        self.lag = max(0.0, self.clock.seconds() - self._due)
        self._schedule()

    def currentLag(self) -> float:
        """
        The reactor's lag now: the last probe's, or more if the next
        probe is overdue (the reactor is busy this very turn).
        """
        if self._call is None:
            return self.lag
        return max(self.lag, self.clock.seconds() - self._due)

    @property
    def shedding(self) -> bool:
        """
        Whether the last new request was refused (for status reports:
        unlike L{overloaded}, it counts nothing).
        """
        return self._shedding

    def overloaded(self) -> bool:
        """
        Whether a new subscription or publication should be refused now.
        Counts the refusal when it is.
        """
        reason = None
        if self.maxBacklog and self.backlog() > self.maxBacklog:
            reason = "store backlog"
        elif self.maxLag and self.currentLag() > self.maxLag:
            reason = "reactor lag"
        if reason is None:
            if self._shedding:
                self._shedding = False
                self.log.info("Overload over: serving new requests again")
            return False
        self.counters["shed"] += 1
        if not self._shedding:
            self._shedding = True
            self.counters["episodes"] += 1
            self.log.warn(
                "Overloaded ({reason}: backlog {backlog}, lag {lag:.2f} s): "
                "answering new SUBSCRIBE and PUBLISH 503",
                reason=reason, backlog=self.backlog(), lag=self.currentLag(),
            )
        return True
