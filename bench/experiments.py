"""
What-if patches, applied inside a benchmarked server process only, to
measure what a suggested change to C{presence/} would gain before anyone
makes it.  Nothing here is product code and nothing imports it but the
bootstrap that L{bench.loadtools.Server} runs when experiments are asked
for (C{presence_bench.py --experiment NAME}).

Each experiment imitates one suggestion of the profiling report:

C{nodebug}
    Per-request C{log.debug} events cost nothing (twistd writes every
    level, so today each SUBSCRIBE and PUBLISH formats a line, writes and
    flushes it).  Imitates dropping those calls or filtering below info
    before formatting.
C{viacache}
    C{Via.fromString} memoised on the header text (a bounded dict, a fresh
    params dict per call so callers may still mutate it).  Imitates parsing
    the top Via once per message instead of four to six times.
C{coalesce}
    C{SQLStore._enqueue} hands writes to the writer thread once per
    reactor iteration (C{callLater(0)}) instead of at once, so writes
    issued while handling one batch of datagrams share a transaction and a
    thread hand-off.
C{memorybilling}
    The embedded authorizer answers account and watch-decision lookups
    from memory at once (here: no account, allowed, which is what the
    database says for the benchmark's unprovisioned AORs).  Imitates
    keeping billing's accounts and rules in memory, kept current by the
    change log it already polls, instead of a database read per cache miss.
C{fastids}
    C{newId}, C{newTag} and C{newBranch} take their random bytes from a
    4 KiB buffer of C{os.urandom}, one syscall per few hundred ids.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple


def nodebug() -> None:
    from twisted.logger import Logger

    def debug(self: Any, format: Any = None, **kwargs: Any) -> None:
        return None

    Logger.debug = debug  # type: ignore[method-assign]


def viacache() -> None:
    from presence.sip import headers

    original = headers.Via.fromString.__func__  # type: ignore[attr-defined]
    cache: Dict[str, Tuple[str, str, Any, Dict[str, Any]]] = {}

    def fromString(cls: Any, text: str) -> Any:
        hit = cache.get(text)
        if hit is None:
            via = original(cls, text)
            if len(cache) > 20000:
                cache.clear()
            cache[text] = (via.transport, via.host, via.port, dict(via.params))
            return via
        transport, host, port, params = hit
        return cls(transport, host, port, dict(params))

    headers.Via.fromString = classmethod(fromString)  # type: ignore[assignment]


def coalesce() -> None:
    from presence.store import sql

    def _enqueue(self: Any, op: Tuple[Any, ...]) -> Any:
        from twisted.internet.defer import Deferred

        refused = self._refuse()
        if refused is not None:
            return refused
        d = Deferred()
        self._queue.append((op, d))
        if not self._busy and not getattr(self, "_flushScheduled", False):
            self._flushScheduled = True

            def flush() -> None:
                self._flushScheduled = False
                self._flush()

            self._reactor.callLater(0, flush)
        return d

    sql.SQLStore._enqueue = _enqueue  # type: ignore[method-assign]


def memorybilling() -> None:
    from twisted.internet.defer import succeed

    from presence.billing import authorizer

    def account(self: Any, aor: str) -> Any:
        return succeed(None)

    def watchDecision(self: Any, watcher: str, presentity: str) -> Any:
        return succeed(authorizer.ALLOW)

    authorizer.EmbeddedAuthorizer.account = account  # type: ignore[method-assign]
    authorizer.EmbeddedAuthorizer.watchDecision = watchDecision  # type: ignore[method-assign]


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
    "nodebug": nodebug,
    "viacache": viacache,
    "coalesce": coalesce,
    "fastids": fastids,
    "memorybilling": memorybilling,
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
