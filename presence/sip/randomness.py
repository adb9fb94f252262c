"""
Random bytes for the identifiers minted per message: Via branches, To
tags, subscription ids, entity-tags, digest nonces.

Each of those used to call C{os.urandom} itself, one system call per id.
Under 5,000 PUBLISH/s on PyPy that was 5.8% of the server's CPU (vmprof):
on PyPy one C{os.urandom(8)} costs about 4 microseconds, on CPython about
0.4.  L{randomBytes} hands out slices of a 4 KiB buffer filled by one
C{os.urandom} call, so one system call serves a few hundred ids.

The ids stay as unpredictable as before: C{os.urandom} output is still the
only source, each byte is handed out once, and knowing some bytes of the
kernel's CSPRNG output tells nothing about the others, so a watcher who
sees its own branches and tags learns nothing about anyone else's.  (The
bytes not yet handed out sit in process memory; whoever can read that can
read the server's secrets too.)

Two ways the same bytes could be handed out twice are closed:

  - Threads: each thread has its own buffer (C{threading.local}), with no
    lock on the hot path.  Today every id is made on the reactor thread,
    but an id minted elsewhere must not silently repeat one.
  - C{fork}: a child (C{twistd} daemonizing, a forking test runner) would
    inherit the parent's unused bytes and hand out the very ids its parent
    is about to.  A hook registered with C{os.register_at_fork} drops the
    buffer in the child, which then reads its own from the kernel.
"""

from __future__ import annotations

import os
import threading

#: Bytes read from the kernel at a time: a few hundred ids of 6 to 16
#: bytes, small enough that a process minting few ids wastes nothing.
BUFFER_SIZE = 4096


class _Buffer(threading.local):
    """
    One thread's unused random bytes: C{data[offset:]}.
    """

    data = b""
    offset = 0


class RandomPool:
    """
    Random bytes from C{os.urandom}, read a buffer at a time.
    """

    def __init__(self, size: int = BUFFER_SIZE) -> None:
        """
        @param size: bytes read from C{os.urandom} at a time.
        """
        self.size = size
        self._buffer = _Buffer()

    def take(self, n: int) -> bytes:
        """
        C{n} random bytes that no other call, in this thread, another
        thread or a forked child, will return.

        A request larger than the buffer is served by C{os.urandom}
        directly.  The unused tail of a buffer too short for C{n} is
        dropped rather than joined to the next one: simpler, and it costs
        at most C{n - 1} bytes per refill.
        """
        buffer = self._buffer
        start = buffer.offset
        end = start + n
        if end > len(buffer.data):
            if n > self.size:
                return os.urandom(n)
            buffer.data = os.urandom(self.size)
            start = 0
            end = n
        buffer.offset = end
        return buffer.data[start:end]

    def discard(self) -> None:
        """
        Forget every thread's unused bytes: the next L{take} reads fresh
        ones from the kernel.  Run in a forked child, before it can hand
        out its parent's bytes.
        """
        self._buffer = _Buffer()


_pool = RandomPool()

#: C{randomBytes(n)}: C{n} bytes of C{os.urandom} output, never handed out
#: before, at a fraction of the cost of a system call.
randomBytes = _pool.take

os.register_at_fork(after_in_child=_pool.discard)

__all__ = ["BUFFER_SIZE", "RandomPool", "randomBytes"]
