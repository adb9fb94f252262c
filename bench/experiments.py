"""
What-if patches, applied inside a benchmarked server process only, to
measure what a suggested change to C{presence/} would gain before anyone
makes it.  Nothing here is product code: C{presence_bench.py} reads the
names, and the bootstrap that L{bench.loadtools.Server} runs when
experiments are asked for (C{presence_bench.py --experiment NAME}) applies
them.

An experiment that the product has since adopted is removed from here:
measuring it again would only patch the product with an older copy of
itself.

C{fastids}
    C{newId}, C{newTag} and C{newBranch} take their random bytes from a
    4 KiB buffer of C{os.urandom}, one syscall per few hundred ids instead
    of one per id.
"""

from __future__ import annotations

import os
from typing import List


class _RandomPool:
    """
    Random bytes from one C{os.urandom} call per 4 KiB.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.buffer):
            self.buffer = os.urandom(4096)
            self.offset = 0
        start = self.offset
        self.offset += n
        return self.buffer[start : self.offset]


def fastids() -> None:
    from presence.manager import manager
    from presence.sip import core, transaction

    pool = _RandomPool()
    manager.newId = lambda: pool.take(8).hex()  # type: ignore[assignment]
    core.newTag = lambda: pool.take(6).hex()  # type: ignore[assignment]
    transaction._urandom = pool.take  # type: ignore[assignment]


EXPERIMENTS = {
    "fastids": fastids,
}


def apply(names: List[str]) -> None:
    """
    Apply the named experiments (before twistd imports the plugin).
    """
    for name in names:
        EXPERIMENTS[name]()


def bootstrap(names: List[str]) -> str:
    """
    The C{python -c} code that applies C{names} and then runs twistd.
    """
    return (
        "import bench.experiments as e; e.apply(%r); "
        "from twisted.scripts.twistd import run; run()" % (list(names),)
    )
