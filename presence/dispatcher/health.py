"""
Which managers are alive: an OPTIONS ping to each every C{interval}
seconds, and a manager that has not answered for C{deadAfter} seconds is
taken out.

A manager that answers 503 is alive but draining (before maintenance,
C{presence-admin live drain}): it gets no new requests nor dialogs it
does not hold, while the requests already sent to it are still answered
there; it is back in rotation with its first other answer.

Every answer pushes the manager's deadline C{deadAfter} seconds on, so a
manager that dies is out at most C{deadAfter} seconds after its last
answer, whatever the ping phase: with the defaults (0.5 s pings, 1.5 s)
within two seconds of its death.  One answer puts it back.  Managers start
out: none gets a request before it has answered once.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, List, Optional, Set

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.dispatcher.links import ManagerLink
from presence.dispatcher.managers import ManagerSpec
from presence.sip.message import Request, Response
from presence.sip.target import Target


class ManagerState:
    """
    What the dispatcher knows of one manager.

    @ivar up: whether it answered within the last C{deadAfter} seconds.
    @ivar draining: whether its last answer was a 503: alive, but out of
        rotation.
    @ivar inFlight: requests forwarded to it still waiting for a final
        response (the C{least_loaded} measure).
    @ivar pending: the relays of those requests, to fail them over when
        it goes down.
    @ivar link: the TCP connection to it, for a TCP manager.
    """

    def __init__(self, spec: ManagerSpec, link: Optional[ManagerLink] = None, index: int = 0) -> None:
        """
        @param index: its place in the configured list (round robin order).
        """
        self.spec = spec
        self.name = spec.name
        self.index = index
        self.link = link
        self.up = False
        self.draining = False
        self.inFlight = 0
        self.pending: Set[Any] = set()
        self.pings = 0
        self.answers = 0
        self.lastAnswer: Optional[float] = None
        self._ping: Any = None
        self._pingSentAt = 0.0
        self._deadline: Optional[IDelayedCall] = None
        self._udp = Target("UDP", spec.host, spec.port)

    def target(self) -> Optional[Target]:
        """
        Where requests for this manager go now, or L{None} when a TCP
        manager has no open connection.
        """
        if self.link is None:
            return self._udp
        return self.link.target()

    def __repr__(self) -> str:
        return "<ManagerState %s %s inFlight=%d>" % (self.spec, "up" if self.up else "down", self.inFlight)


class HealthChecker:
    """
    Pings the managers and reports each change of their state.
    """

    log = Logger()

    def __init__(
        self,
        core: Any,
        clock: Any,
        managers: Iterable[ManagerState],
        interval: float,
        deadAfter: float,
        changed: Callable[[ManagerState, bool], None],
    ) -> None:
        """
        @param core: the L{SIPCore} to send the pings through.
        @param clock: an C{IReactorTime}.
        @param changed: called with the manager and its new state.
        """
        self.core = core
        self.clock = clock
        self.managers: List[ManagerState] = list(managers)
        self.interval = interval
        self.deadAfter = deadAfter
        self.changed = changed
        self._tick: Optional[IDelayedCall] = None
        self._cseq = 0
        self._callId = os.urandom(8).hex()

    def start(self) -> None:
        self._pingAll()

    def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for manager in self.managers:
            if manager._deadline is not None:
                manager._deadline.cancel()
                manager._deadline = None
            self._cancelPing(manager)

    def _pingAll(self) -> None:
        self._tick = self.clock.callLater(self.interval, self._pingAll)
        for manager in self.managers:
            try:
                self._ping(manager)
            except Exception:
                self.log.failure("Cannot ping manager {name}", name=manager.name)

    def _ping(self, manager: ManagerState) -> None:
        """
        Send an OPTIONS unless one is still waiting for its answer; over
        UDP the transaction retransmits it meanwhile.  One unanswered for
        C{deadAfter} is given up.
        """
        now = self.clock.seconds()
        if manager._ping is not None:
            if now - manager._pingSentAt < self.deadAfter:
                return
            self._cancelPing(manager)
        target = manager.target()
        if target is None:
            return
        request = self._options(manager, target)
        manager.pings += 1
        manager._pingSentAt = now
        tx = self.core.sendRequest(request, target)
        if tx.deferred.called:
            return  # Could not be sent (a synthesised 503): no answer.
        manager._ping = tx
        tx.deferred.addCallbacks(self._answered, self._cancelled, (manager, tx), None, (manager, tx))

    def _options(self, manager: ManagerState, target: Target) -> Request:
        self._cseq = (self._cseq + 1) % 2**31 or 1
        spec = manager.spec
        host = "[%s]" % (spec.host,) if ":" in spec.host else spec.host
        uri = "sip:%s:%d" % (host, spec.port)
        request = Request("OPTIONS", uri)
        headers = request.headers
        headers["max-forwards"] = ["70"]
        headers["from"] = ["<sip:dispatcher@%s>;tag=%s" % (self.core.localHost(target), self._callId[:8])]
        headers["to"] = ["<%s>" % (uri,)]
        headers["call-id"] = [self._callId + "." + manager.name]
        headers["cseq"] = ["%d OPTIONS" % (self._cseq,)]
        headers["accept"] = ["application/sdp"]
        return request

    def _answered(self, response: Response, manager: ManagerState, tx: Any) -> None:
        if manager._ping is tx:
            manager._ping = None
        # A response the transaction made up (408 on Timer F, 503 when it
        # could not send) copies our To, which has no tag; every real
        # answer to an out-of-dialog request carries one (RFC 3261 §8.2.6.2).
        if not _hasToTag(response):
            return
        draining = response.code == 503
        if draining != manager.draining:
            manager.draining = draining
            if draining:
                self.log.warn("Manager {name} is draining: out of rotation", name=manager.name)
            else:
                self.log.info("Manager {name} is back in rotation", name=manager.name)
        self.alive(manager)

    def alive(self, manager: ManagerState) -> None:
        """
        C{manager} answered: it is up for C{deadAfter} seconds more.
        """
        manager.answers += 1
        manager.lastAnswer = self.clock.seconds()
        if manager._deadline is not None and manager._deadline.active():
            manager._deadline.reset(self.deadAfter)
        else:
            manager._deadline = self.clock.callLater(self.deadAfter, self._expired, manager)
        if not manager.up:
            manager.up = True
            self._report(manager, True)

    def _expired(self, manager: ManagerState) -> None:
        manager._deadline = None
        self.down(manager)

    def down(self, manager: ManagerState) -> None:
        """
        Take C{manager} out now (no answer in time, or its connection
        closed).
        """
        if manager._deadline is not None:
            if manager._deadline.active():
                manager._deadline.cancel()
            manager._deadline = None
        self._cancelPing(manager)
        if manager.up:
            manager.up = False
            self._report(manager, False)

    def _report(self, manager: ManagerState, up: bool) -> None:
        try:
            self.changed(manager, up)
        except Exception:
            self.log.failure("Manager state change handler failed")

    def _cancelled(self, failure: Failure, manager: ManagerState, tx: Any) -> None:
        failure.trap(CancelledError)
        if manager._ping is tx:
            manager._ping = None

    def _cancelPing(self, manager: ManagerState) -> None:
        tx = manager._ping
        manager._ping = None
        if tx is not None and not tx.deferred.called:
            tx.deferred.cancel()


def _hasToTag(response: Response) -> bool:
    try:
        return bool(response.toAddr().tag)
    except ValueError:
        return False
