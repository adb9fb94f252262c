"""
Overload shedding: L{presence.manager.overload.OverloadGuard} driven by a
L{Clock}, and the manager answering new SUBSCRIBE and PUBLISH 503 with
Retry-After while it is overloaded, still serving in-dialog requests and
publication refreshes.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from presence.manager.overload import OverloadGuard
from tests.harness import PUBLISHER, HeldStore, publish, refresh, subscribe
from tests.test_manager import make  # noqa: F401 (fixture)


class Backlog:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_backlogSignal() -> None:
    backlog = Backlog()
    guard = OverloadGuard(Clock(), backlog, maxBacklog=100, maxLag=0, retryAfter=5)
    assert not guard.overloaded()
    backlog.value = 101
    assert guard.overloaded() and guard.overloaded()
    backlog.value = 100
    assert not guard.overloaded()
    backlog.value = 500
    assert guard.overloaded()
    assert guard.counters == {"shed": 3, "episodes": 2}


def test_backlogSignalOff() -> None:
    backlog = Backlog()
    backlog.value = 10 ** 9
    guard = OverloadGuard(Clock(), backlog, maxBacklog=0, maxLag=0, retryAfter=5)
    assert not guard.overloaded()


def test_lagSignal() -> None:
    """
    The probe runs every interval; when it runs late by more than maxLag
    (the reactor was busy), new work is refused until it runs on time.
    A probe overdue right now counts too.
    """
    clock = Clock()
    guard = OverloadGuard(clock, Backlog(), maxBacklog=0, maxLag=1.0, retryAfter=5, interval=0.1)
    guard.start()
    for _ in range(10):
        clock.advance(0.1)
    assert guard.lag == pytest.approx(0.0, abs=1e-9) and not guard.overloaded()
    # The reactor is stuck in one turn for 1.5 s: the probe due 0.1 s
    # after the last one is 1.4 s overdue, and says so before it runs.
    clock.rightNow += 1.5
    assert guard.currentLag() == pytest.approx(1.4)
    assert guard.overloaded()
    clock.advance(0)  # the late probe runs
    assert guard.lag == pytest.approx(1.4)
    assert guard.overloaded()
    clock.advance(0.1)  # the next one is on time
    assert not guard.overloaded()
    guard.stop()
    assert clock.getDelayedCalls() == []


def test_lagSignalOffStartsNoTimer() -> None:
    clock = Clock()
    guard = OverloadGuard(clock, Backlog(), maxBacklog=10, maxLag=0, retryAfter=5)
    guard.start()
    assert clock.getDelayedCalls() == []


def test_newRequestsShedInDialogServed(make: Any) -> None:
    """
    With the store's backlog past max_pending_writes: a new SUBSCRIBE and
    an initial PUBLISH get 503 with Retry-After and create nothing; a
    refresh of an existing subscription, an un-SUBSCRIBE and a refresh
    of a publication are still served.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store, maxPendingWrites=1000, overloadRetryAfter=7)
    sub, ok, _ = h.subscribed(Expires="600")
    etag, _ = h.published()
    store.pendingWrites = 5000

    h.receive(subscribe("sip:carol@example.test"))
    (refused,) = h.responses()
    assert (refused.code, refused.header("retry-after")) == (503, "7")
    h.receive(publish("sip:bob@example.test", body=b"<x/>"), PUBLISHER)
    (refused,) = h.responses()
    assert refused.code == 503
    assert len(h.manager.subscriptions) == 1 and list(h.manager.publications) == [etag]

    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    (ok2,) = h.responses()
    assert ok2.code == 200
    h.receive(refresh(sub, ok, 2, Expires="600"))
    (ok3,), _ = h.split()
    assert ok3.code == 200
    assert h.manager.overload.counters["shed"] == 2

    store.pendingWrites = 0
    h.receive(subscribe("sip:carol@example.test"))
    (accepted,), _ = h.split()
    assert accepted.code == 200
