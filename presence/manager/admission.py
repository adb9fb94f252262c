"""
Taking a request in: what the subscription manager (SUBSCRIBE, PUBLISH)
and the registrar (REGISTER) do alike before and between the steps of
serving it.

  - Admission: the L{AuthGate} decides whether the request may act for the
    AOR it claims; a refusal is answered as the gate says, billing out of
    reach is answered 500 with Retry-After (decide nothing, the UA
    retries), and an admitted request goes on with the handler's next step.
  - Every step that runs once the request has gone asynchronous answers
    500 if it raises, rather than leaving the server transaction
    unanswered forever: nothing a peer sends may wedge a request.
  - While a request waits for billing it is counted, so that an orderly
    shutdown (L{Admission.whenIdle}) lets it issue its store write, or be
    answered, before the store stops taking writes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from presence.billing.errors import BillingUnavailable
from presence.billing.gate import AuthGate, Refused
from presence.sip.message import Request
from presence.sip.transaction import COMPLETED, TERMINATED, ServerTransaction


class Admission:
    """
    Admits the requests of one handler and runs their next steps.

    @ivar gate: the L{AuthGate}, or L{None} to admit everyone (a handler
        running without billing: tests and tools only).
    @ivar waiting: how many requests wait for billing (or for another step
        held with L{hold}).
    """

    def __init__(
        self, core: Any, gate: Optional[AuthGate], clock: Any, counters: Dict[str, int], log: Any
    ) -> None:
        """
        @param core: the L{presence.sip.core.SIPCore} that answers.
        @param counters: the handler's counters: C{billingErrors} counts
            the requests billing could not decide.
        @param log: the handler's logger, so that its events keep their
            namespace.
        """
        self.core = core
        self.gate = gate
        self.clock = clock
        self.counters = counters
        self.log = log
        self.waiting = 0
        self._idleWaiters: List[Deferred] = []

    def admit(self, request: Request, tx: ServerTransaction, aor: str, step: Any, *args: Any) -> None:
        """
        Authenticate the sender of C{request} as C{aor}, then call
        C{step(aor, *args)} (at once without a gate); or answer the gate's
        refusal.
        """
        gate = self.gate
        if gate is None:
            step(aor, *args)
            return
        d = gate.admit(request, tx.source.host, aor)
        d.addCallback(self._admitted, tx, step, args)
        d.addErrback(self.billingFailed, tx)
        self.hold(d)

    def _admitted(self, verdict: Any, tx: ServerTransaction, step: Any, args: Tuple[Any, ...]) -> None:
        if isinstance(verdict, Refused):
            self.core.respond(tx, verdict.code, verdict.reason, verdict.headers)
            return
        self.proceed(tx, step, verdict.aor, *args)

    def proceed(self, tx: ServerTransaction, step: Any, *args: Any) -> None:
        """
        Run C{step(*args)}, a step of serving C{tx}'s request: an error
        answers 500 if the request is not answered yet.
        """
        try:
            step(*args)
        except Exception:
            self.log.failure("Error serving {method}", method=tx.request.method)
            if tx.state not in (COMPLETED, TERMINATED):
                self.core.respond(tx, 500)

    def billingFailed(self, failure: Failure, tx: ServerTransaction) -> None:
        """
        Billing could not answer: decide nothing, ask the UA to retry.
        """
        self.counters["billingErrors"] += 1
        if failure.check(BillingUnavailable):
            # Expected while billing is away, for every request: one line
            # each, no traceback (the authorizer logs the cause once).
            self.log.warn(
                "Billing unavailable for {method}: {reason}",
                method=tx.request.method,
                reason=failure.getErrorMessage(),
            )
        else:
            self.log.failure("Billing failed for {method}", failure, method=tx.request.method)
        if tx.state not in (COMPLETED, TERMINATED):
            self.core.respond(tx, 500, "Billing Unavailable", [("Retry-After", "5")])

    def hold(self, d: Deferred) -> None:
        """
        Count a request as taken until C{d} (its billing step, which ends
        by issuing its next step) has fired.
        """
        if d.called:
            return
        self.waiting += 1

        def done(result: Any) -> Any:
            self.waiting -= 1
            if not self.waiting:
                waiters, self._idleWaiters = self._idleWaiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        d.addBoth(done)

    def whenIdle(self, timeout: float = 10.0) -> Deferred:
        """
        Fire once no request waits for billing (each has then issued its
        store write, or been answered), or after C{timeout} seconds.
        """
        if not self.waiting:
            return succeed(None)
        d: Deferred = Deferred()
        self._idleWaiters.append(d)

        def expired() -> None:
            if d in self._idleWaiters:
                self._idleWaiters.remove(d)
                self.log.warn(
                    "Stopping with {count} requests still waiting for billing", count=self.waiting
                )
                d.callback(None)

        timer = self.clock.callLater(timeout, expired)
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d
