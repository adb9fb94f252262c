"""
Tests for L{presence.sip.randomness}: buffered C{os.urandom} bytes, and the
identifiers minted from them.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Callable, Iterator, List

import pytest

from presence.manager.manager import newId
from presence.sip import randomness
from presence.sip.core import newTag
from presence.sip.digest import newCnonce
from presence.sip.randomness import BUFFER_SIZE, RandomPool, randomBytes
from presence.sip.transaction import newBranch


class CountingSource:
    """
    Stands in for C{os.urandom}: records each request and answers with
    consecutive counter bytes, so a test can tell which call and which
    offset every byte came from.
    """

    def __init__(self) -> None:
        self.requests: List[int] = []
        self._next = 0

    def __call__(self, n: int) -> bytes:
        self.requests.append(n)
        data = bytes((self._next + i) % 256 for i in range(n))
        self._next += n
        return data


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingSource]:
    counting = CountingSource()
    monkeypatch.setattr(os, "urandom", counting)
    yield counting


def test_oneSystemCallServesManyIds(source: CountingSource) -> None:
    pool = RandomPool()
    taken = [pool.take(8) for _ in range(BUFFER_SIZE // 8)]
    assert source.requests == [BUFFER_SIZE]
    assert b"".join(taken) == bytes(i % 256 for i in range(BUFFER_SIZE))


def test_refillAcrossBoundary(source: CountingSource) -> None:
    """
    A request that does not fit in what is left reads a new buffer and
    starts at its beginning: no byte is handed out twice, the short tail is
    dropped.
    """
    pool = RandomPool(size=16)
    first = pool.take(10)
    second = pool.take(4)
    third = pool.take(4)
    assert source.requests == [16, 16]
    assert first == bytes(range(0, 10))
    assert second == bytes(range(10, 14))
    assert third == bytes(range(16, 20))


def test_exactFitDoesNotRefill(source: CountingSource) -> None:
    pool = RandomPool(size=16)
    assert pool.take(8) + pool.take(8) == bytes(range(16))
    assert source.requests == [16]
    pool.take(1)
    assert source.requests == [16, 16]


def test_largerThanBufferGoesStraightToSource(source: CountingSource) -> None:
    pool = RandomPool(size=16)
    before = pool.take(4)
    big = pool.take(40)
    after = pool.take(4)
    assert source.requests == [16, 40]
    assert len(big) == 40
    assert before + after == bytes(range(8))


def test_discardDropsTheBuffer(source: CountingSource) -> None:
    """
    L{RandomPool.discard}, the hook run in a forked child, makes the next
    request read fresh bytes instead of the rest of the old buffer.
    """
    pool = RandomPool(size=16)
    pool.take(4)
    pool.discard()
    assert pool.take(4) == bytes(range(16, 20))
    assert source.requests == [16, 16]


def test_eachThreadHasItsOwnBuffer(source: CountingSource) -> None:
    pool = RandomPool(size=16)
    mine = pool.take(4)
    theirs: List[bytes] = []
    thread = threading.Thread(target=lambda: theirs.append(pool.take(4)))
    thread.start()
    thread.join()
    assert source.requests == [16, 16]
    assert mine == bytes(range(0, 4))
    assert theirs == [bytes(range(16, 20))]
    assert pool.take(4) == bytes(range(4, 8))


def test_moduleSourceIsUrandom(source: CountingSource) -> None:
    """
    L{randomBytes} reads C{os.urandom}, and nothing else.
    """
    randomness._pool.discard()
    try:
        assert randomBytes(8) == bytes(range(8))
        assert source.requests == [BUFFER_SIZE]
    finally:
        randomness._pool.discard()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forkedChildDoesNotReuseParentBytes() -> None:
    """
    A child forked with unused bytes in the parent's buffer reads its own:
    otherwise parent and child would mint the same ids.
    """
    randomBytes(1)  # the buffer holds unused bytes now
    readEnd, writeEnd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(readEnd)
            os.write(writeEnd, randomBytes(16))
        finally:
            os._exit(0)
    os.close(writeEnd)
    try:
        child = os.read(readEnd, 16)
    finally:
        os.close(readEnd)
        os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != randomBytes(16)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (newId, r"[0-9a-f]{16}"),
        (newTag, r"[0-9a-f]{12}"),
        (newBranch, r"z9hG4bK[0-9a-f]{20}"),
        (newCnonce, r"[A-Za-z0-9_-]{16}"),
    ],
)
def test_idsAreWellFormedAndUnique(make: Callable[[], str], pattern: str) -> None:
    """
    Enough ids to cross several buffer refills are all distinct.
    """
    ids = [make() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for ident in ids:
        assert re.fullmatch(pattern, ident)
