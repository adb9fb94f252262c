"""
Tests for L{presence.manager.expiry.ExpiryWheel}.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from presence.manager.expiry import ExpiryWheel


def makeWheel(resolution: float = 0.5):
    clock = Clock()
    fired: list = []
    wheel = ExpiryWheel(clock, lambda keys: fired.append(sorted(keys)), resolution)
    return clock, wheel, fired


def test_neverEarlyAtMostResolutionLate():
    clock, wheel, fired = makeWheel()
    wheel.set("a", 10.2)
    clock.advance(10.19)
    assert fired == []
    clock.advance(0.31)
    assert fired == [["a"]]
    assert len(wheel) == 0
    assert clock.getDelayedCalls() == []


def test_oneDelayedCallForManyKeys():
    clock, wheel, fired = makeWheel()
    for i in range(1000):
        wheel.set(i, 5 + (i % 50) / 10.0)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(100)
    assert sum(len(batch) for batch in fired) == 1000


def test_refreshMovesDeadline():
    clock, wheel, fired = makeWheel()
    wheel.set("a", 5)
    clock.advance(4)
    wheel.set("a", 10)
    clock.advance(2)
    assert fired == []
    clock.advance(4)
    assert fired == [["a"]]


def test_earlierDeadlineReschedules():
    clock, wheel, fired = makeWheel()
    wheel.set("late", 100)
    wheel.set("soon", 1)
    clock.advance(1)
    assert fired == [["soon"]]
    assert "late" in wheel


def test_discard():
    clock, wheel, fired = makeWheel()
    wheel.set("a", 1)
    wheel.set("b", 2)
    wheel.discard("a")
    wheel.discard("missing")
    clock.advance(3)
    assert fired == [["b"]]


def test_stopCancels():
    clock, wheel, fired = makeWheel()
    wheel.set("a", 1)
    wheel.stop()
    assert clock.getDelayedCalls() == []
    assert "a" in wheel


def test_callbackMaySetAgain():
    clock, wheel, fired = makeWheel()

    def expired(keys):
        fired.append(keys)
        for key in keys:
            if len(fired) < 3:
                wheel.set(key, clock.seconds() + 1)

    wheel.expired = expired
    wheel.set("a", 1)
    clock.advance(1)
    clock.advance(1)
    clock.advance(1)
    assert len(fired) == 3
    assert clock.getDelayedCalls() == []
