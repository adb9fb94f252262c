"""
This manager's lease in the shared database: the liveness that fencing
rests on (see the module docstring of L{presence.cluster.group}).

PB links say whether two managers can talk to each other, not whether a
manager is alive: one cut off from its peers may still reach the database
and the dispatcher, and serve its watchers.  So each manager of a cluster
keeps a row in C{manager_leases} (L{presence.interfaces.ILeaseStore})
and renews it every C{interval} seconds for C{leaseTime} seconds, through
the store's writer (group commit; never on the reactor thread).  A
survivor adopts a peer's subscriptions only once the peer's lease has
expired by the database's clock, bumping the peer's C{epoch} in the same
transaction.

The holder (L{presence.cluster.group.PeerGroup}) is told when it may act
as the owner of its subscriptions and when it must stop:

  - C{leaseLost(reason)}: stop sending NOTIFYs now.  Either no renewal has
    completed for C{leaseTime - interval} seconds, counted from when the
    last successful one was I{issued} (so the database's expiry, set no
    earlier than that, is at least C{interval} seconds away: no survivor
    may adopt yet), or a renewal found the epoch changed (a survivor
    fenced us and adopted our subscriptions).
  - C{leaseTaken(epoch)}: a new epoch is registered (at start, and after
    being fenced); the holder drops what the store no longer says is its
    own, and returns a Deferred firing when done.
  - C{leaseHeld()}: the lease is registered, reconciled and renewed in
    time: serve again.

Only durations of the local clock are compared with each other, and only
the database's times with each other, so the managers' clocks may differ
(they only need to run at about the same rate).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure


class ManagerLease:
    """
    Registers and renews one manager's lease, and tells its holder when
    the lease stops or starts being safe to act on.

    @ivar epoch: the epoch held, 0 before the first registration.
    @ivar validUntil: local clock time until which the last successful
        renewal makes it safe to notify (issue time + C{leaseTime -
        interval}).
    @ivar ready: the holder has reconciled its subscriptions with the
        current epoch.
    @ivar holding: what the holder was last told: C{True} after
        C{leaseHeld}, C{False} after C{leaseLost} (and at first).
    @ivar counters: registrations, renewals, failed writes, times fenced
        by a peer and times the lease ran out unrenewed.
    """

    log = Logger()

    def __init__(
        self,
        node: str,
        store: Any,
        clock: Any,
        holder: Any,
        leaseTime: float = 5.0,
        interval: float = 1.0,
    ) -> None:
        """
        @param store: an L{presence.interfaces.ILeaseStore}.
        @param holder: what to tell (see the module docstring).
        @param leaseTime: seconds a renewal extends the lease by; more
            than twice C{interval}, so that a late renewal or two does not
            fence a healthy manager.
        @param interval: seconds between renewals, and the safety margin
            by which this manager stops before its lease could expire.
        """
        if not leaseTime > 2 * interval > 0:
            raise ValueError("leaseTime must be more than twice the renewal interval")
        self.node = node
        self.store = store
        self.clock = clock
        self.holder = holder
        self.leaseTime = leaseTime
        self.interval = interval
        self.epoch = 0
        self.validUntil = float("-inf")
        self.ready = False
        self.holding = False
        self.counters: Dict[str, int] = {
            "registrations": 0,
            "renewals": 0,
            "failures": 0,
            "fenced": 0,
            "ranOut": 0,
        }
        self._running = False
        self._mustRegister = True
        self._pending: Optional[Deferred] = None
        self._tickCall: Any = None
        self._deadlineCall: Any = None

    @property
    def margin(self) -> float:
        """
        How long before the database could see the lease expire this
        manager stops notifying.
        """
        return self.interval

    def start(self) -> None:
        """
        Register now, then renew every C{interval} seconds.
        """
        if self._running:
            return
        self._running = True
        self._tick()

    def stop(self) -> None:
        """
        Stop renewing.  The lease runs out by itself; the holder is not
        told (it is going away).
        """
        self._running = False
        for name in ("_tickCall", "_deadlineCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    # Timers.

    def _tick(self) -> None:
        self._tickCall = self.clock.callLater(self.interval, self._tick)
        if self._pending is not None:
            # One lease write at a time: a stuck one is late already, and
            # the deadline fences us if it stays stuck.
            return
        if self._mustRegister:
            self._register()
        else:
            self._renew()

    def _armDeadline(self) -> None:
        call = self._deadlineCall
        if call is not None and call.active():
            call.cancel()
        self._deadlineCall = None
        delay = self.validUntil - self.clock.seconds()
        if self._running and delay > 0:
            self._deadlineCall = self.clock.callLater(delay, self._ranOut)

    def _ranOut(self) -> None:
        self._deadlineCall = None
        if self.holding:
            self.counters["ranOut"] += 1
            self.log.warn(
                "Lease of {node}: no renewal completed for {seconds:.1f}s; holding NOTIFYs back",
                node=self.node, seconds=self.leaseTime - self.margin,
            )
        self._update("ran out")

    def _update(self, reason: str) -> None:
        """
        Tell the holder if the lease just became safe, or stopped being.
        """
        valid = self._running and self.ready and self.clock.seconds() < self.validUntil
        if valid == self.holding:
            return
        self.holding = valid
        if valid:
            self.holder.leaseHeld()
        else:
            self.holder.leaseLost(reason)

    def _issue(self, d: Deferred) -> Deferred:
        self._pending = d

        def settled(result: Any) -> Any:
            if self._pending is d:
                self._pending = None
            return result

        return d.addBoth(settled)

    # Registration.

    def _register(self) -> None:
        issued = self.clock.seconds()
        d = self._issue(self.store.registerLease(self.node, self.leaseTime))
        d.addCallbacks(self._registered, self._failed, callbackArgs=(issued,), errbackArgs=("registering",))

    def _registered(self, lease: Any, issued: float) -> None:
        if not self._running:
            return
        self.counters["registrations"] += 1
        self._mustRegister = False
        self.epoch = lease.epoch
        self.ready = False
        self.validUntil = issued + self.leaseTime - self.margin
        self._update("re-registered")
        self._armDeadline()
        self.log.info("Lease of {node} registered, epoch {epoch}", node=self.node, epoch=lease.epoch)
        epoch = lease.epoch
        d = maybeDeferred(self.holder.leaseTaken, epoch)

        def reconciled(_: Any) -> None:
            if self._running and self.epoch == epoch and not self._mustRegister:
                self.ready = True
                self._update("reconciled")

        def failed(failure: Failure) -> None:
            self.log.failure("Lease of {node}: reconciling epoch {epoch} failed", failure, node=self.node, epoch=epoch)
            if self.epoch == epoch:
                # Register again (a new epoch) and reconcile again.
                self._mustRegister = True

        d.addCallbacks(reconciled, failed)

    # Renewal.

    def _renew(self) -> None:
        issued = self.clock.seconds()
        epoch = self.epoch
        d = self._issue(self.store.renewLease(self.node, epoch, self.leaseTime))
        d.addCallbacks(self._renewed, self._failed, callbackArgs=(epoch, issued), errbackArgs=("renewing",))

    def _renewed(self, lease: Any, epoch: int, issued: float) -> None:
        if not self._running or epoch != self.epoch or self._mustRegister:
            return
        if lease is None:
            self.counters["fenced"] += 1
            self.log.warn(
                "Lease of {node}: epoch {epoch} was fenced by a peer (our subscriptions were adopted); "
                "holding NOTIFYs back and registering again",
                node=self.node, epoch=epoch,
            )
            self.ready = False
            self.validUntil = float("-inf")
            self._mustRegister = True
            self._armDeadline()
            self._update("fenced")
            self._register()
            return
        self.counters["renewals"] += 1
        wasValid = self.holding
        self.validUntil = max(self.validUntil, issued + self.leaseTime - self.margin)
        self._armDeadline()
        self._update("renewed")
        if self.holding and not wasValid:
            self.log.info("Lease of {node} renewed again: notifying", node=self.node)

    def _failed(self, failure: Failure, what: str) -> None:
        if not self._running:
            return
        self.counters["failures"] += 1
        self.log.warn(
            "Lease of {node}: {what} failed: {error}",
            node=self.node, what=what, error=failure.getErrorMessage(),
        )
