"""
Tests for L{presence.manager.expiry.ExpiryWheel}.
"""

from __future__ import annotations

from typing import Dict

from twisted.internet.task import Clock

from presence.manager.expiry import ExpiryWheel


class Owner:
    """
    What a wheel times: keys with deadlines, ended when they expire (as
    the manager and the registrar do).
    """

    def __init__(self, resolution: float = 0.5) -> None:
        self.clock = Clock()
        self.deadlines: Dict[str, float] = {}
        self.fired: list = []
        self.wheel = ExpiryWheel(self.clock, self.expired, self.deadlines.get, resolution)

    def set(self, key: str, deadline: float) -> None:
        old = self.deadlines.get(key)
        if old is not None:
            self.wheel.discard(key, old)
        self.deadlines[key] = deadline
        self.wheel.set(key, deadline)

    def entries(self) -> int:
        return sum(len(keys) for keys in self.wheel._buckets.values())

    def expired(self, keys: list) -> None:
        self.fired.append(sorted(keys))
        for key in keys:
            del self.deadlines[key]


def test_neverEarlyAtMostResolutionLate():
    owner = Owner()
    owner.set("a", 10.2)
    owner.clock.advance(10.19)
    assert owner.fired == []
    owner.clock.advance(0.31)
    assert owner.fired == [["a"]]
    assert owner.clock.getDelayedCalls() == []


def test_oneDelayedCallForManyKeys():
    owner = Owner()
    for i in range(1000):
        owner.set(str(i), 5 + (i % 50) / 10.0)
    assert len(owner.clock.getDelayedCalls()) == 1
    owner.clock.advance(100)
    assert sum(len(batch) for batch in owner.fired) == 1000


def test_refreshMovesDeadline():
    """
    A later deadline counts, not the bucket the key was first put in.
    """
    owner = Owner()
    owner.set("a", 5)
    owner.clock.advance(4)
    owner.set("a", 10)
    owner.clock.advance(2)
    assert owner.fired == []
    owner.clock.advance(4)
    assert owner.fired == [["a"]]


def test_earlierDeadlineReschedules():
    owner = Owner()
    owner.set("late", 100)
    owner.set("soon", 1)
    owner.clock.advance(1)
    assert owner.fired == [["soon"]]
    assert len(owner.clock.getDelayedCalls()) == 1
    owner.clock.advance(99)
    assert owner.fired == [["soon"], ["late"]]


def test_shortenedDeadlineFiresOnceOnly():
    """
    A key moved to an earlier deadline expires then; its old bucket
    reports nothing when it fires later.
    """
    owner = Owner()
    owner.set("a", 10)
    owner.set("a", 2)
    owner.clock.advance(2)
    assert owner.fired == [["a"]]
    owner.clock.advance(10)
    assert owner.fired == [["a"]]
    assert owner.clock.getDelayedCalls() == []


def test_refreshesLeaveNothingBehind():
    """
    With the old deadline discarded, a key refreshed many times holds one
    entry, not one per refresh.
    """
    owner = Owner()
    for minute in range(60):
        owner.set("a", 3600 + minute * 60)
        owner.clock.advance(60)
    assert owner.entries() == 1
    del owner.deadlines["a"]
    owner.wheel.discard("a", 3600 + 59 * 60)
    assert owner.entries() == 0 and owner.wheel._buckets == {}


def test_missedDiscardCostsNoWrongExpiry():
    """
    A key whose old bucket still holds it (no discard) is not reported
    when that bucket fires, only at its current deadline.
    """
    owner = Owner()
    owner.set("a", 5)
    owner.deadlines["a"] = 10
    owner.wheel.set("a", 10)
    owner.clock.advance(6)
    assert owner.fired == []
    owner.clock.advance(4)
    assert owner.fired == [["a"]]


def test_lateFireReportsAKeyOnce():
    """
    When several buckets holding the same key are due at one firing, the
    key is reported once.
    """
    owner = Owner()
    owner.set("a", 1)
    owner.wheel.set("a", 2)
    owner.deadlines["a"] = 2
    owner.clock.advance(5)
    assert owner.fired == [["a"]]


def test_endedKeyIsNotReported():
    """
    A key whose owner ended it (C{deadlineOf} answers L{None}) is dropped
    when its bucket fires: nothing to call C{discard} for.
    """
    owner = Owner()
    owner.set("a", 1)
    owner.set("b", 2)
    del owner.deadlines["a"]
    owner.clock.advance(3)
    assert owner.fired == [["b"]]


def test_stopCancels():
    owner = Owner()
    owner.set("a", 1)
    owner.wheel.stop()
    assert owner.clock.getDelayedCalls() == []
    owner.set("b", 2)
    owner.clock.advance(2)
    assert owner.fired == [["a", "b"]]


def test_callbackMaySetAgain():
    owner = Owner()

    def expired(keys):
        owner.fired.append(keys)
        for key in keys:
            if len(owner.fired) < 3:
                owner.set(key, owner.clock.seconds() + 1)
            else:
                del owner.deadlines[key]

    owner.wheel.expired = expired
    owner.set("a", 1)
    owner.clock.advance(1)
    owner.clock.advance(1)
    owner.clock.advance(1)
    assert len(owner.fired) == 3
    assert owner.clock.getDelayedCalls() == []
