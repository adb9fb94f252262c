"""
Billing re-decisions: when accounts or watch rules change, every
subscription they concern is decided again (L{IAuthorizer.watchDecision}).

Blocked ends the subscription (C{terminated;reason=rejected}); pending to
active sends the state, active to pending withdraws it.  Memory changes at
once (a watcher must stop seeing a state as soon as it may not), the store
follows.  A subscription being decided or recorded while billing changes
is decided again once recorded (L{Redecisions.decidedBefore}): its decision
may predate the change.  Subscriptions of a package whose state is its
owner's alone (L{IEventPackage.ownerOnly}) are not billing's to decide.
"""

from __future__ import annotations

from typing import Any, FrozenSet, Iterable, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.billing.records import ALLOW, BLOCK
from presence.manager.state import Subscription


class Redecisions:
    """
    Decides the manager's subscriptions again as billing changes.

    @ivar epoch: bumped by every billing change.
    """

    log = Logger()

    def __init__(self, manager: Any) -> None:
        """
        @param manager: the L{presence.manager.manager.SubscriptionManager}
            whose subscriptions, authorizer and store it works with.
        """
        self.manager = manager
        self.epoch = 0

    def billingChanged(self, aors: Optional[FrozenSet[str]]) -> None:
        """
        Accounts or watch rules of C{aors} changed (L{None}: anything may
        have): decide again every subscription where one is the watcher or
        the presentity.  Provisioning is rare, so a scan is fine.
        """
        self.epoch += 1
        manager = self.manager
        packages = manager.packages
        subs = [
            sub
            for sub in manager.model.subscriptions.values()
            if (aors is None or sub.watcher in aors or sub.presentity in aors)
            and not packages.get(sub.event).ownerOnly
        ]
        self.reevaluate(subs)

    def decidedBefore(self, _: Any, sub: Subscription, epoch: int) -> None:
        """
        Billing changed while C{sub} was being decided or recorded (the
        epoch moved on from C{epoch}): decide again.
        """
        if epoch != self.epoch and self.manager.model.subscriptions.get(sub.id) is sub:
            self.reevaluate([sub])

    def reevaluate(self, subs: Iterable[Subscription]) -> None:
        authorizer = self.manager.authorizer
        if authorizer is None:
            return
        for sub in subs:
            authorizer.watchDecision(sub.watcher, sub.presentity).addCallbacks(
                self._redecided, self._failed, (sub,), None, (sub,)
            )

    def _redecided(self, decision: str, sub: Subscription) -> None:
        """
        Apply a new decision (see the module docstring).
        """
        manager = self.manager
        if sub.terminated or manager.model.subscriptions.get(sub.id) is not sub:
            return
        if decision == BLOCK:
            manager.counters["rejected"] += 1
            self.log.info(
                "Billing: {watcher} may no longer watch {presentity}",
                watcher=sub.watcher,
                presentity=sub.presentity,
            )
            manager.terminate(sub, "rejected")
            return
        state = "active" if decision == ALLOW else "pending"
        if state == sub.state:
            return
        sub.state = state
        manager.store.updateSubscription(sub.id, state=state).addErrback(
            manager.storeFailed, "state of " + sub.id
        )
        manager.notifier.notify(sub, immediate=True)
        manager.watchersChanged(sub)

    def _failed(self, failure: Failure, sub: Subscription) -> None:
        self.manager.counters["billingErrors"] += 1
        self.log.failure(
            "Billing: cannot decide again for {watcher} -> {presentity}",
            failure,
            watcher=sub.watcher,
            presentity=sub.presentity,
        )
