"""
Kernel buffers of UDP sockets: C{[sip] udp_receive_buffer} and
C{udp_send_buffer}.

A UDP socket has no flow control: a burst that arrives while the reactor
is busy queues in the kernel's receive buffer, and what does not fit is
dropped without a trace but the kernel's C{RcvbufErrors} counter.  The
default buffer (C{net.core.rmem_default}, about 208 KiB on Linux) holds a
few hundred SIP messages; a 4 MiB buffer raised a cluster's capacity 1.5
to 3 times in our benchmark, because bursts no longer cost
retransmissions.

The kernel caps C{SO_RCVBUF} at C{net.core.rmem_max} (C{SO_SNDBUF} at
C{wmem_max}) without complaint; C{SO_RCVBUFFORCE} (Linux, needs
C{CAP_NET_ADMIN}) is not capped.  So the forcing option is tried first and
the plain one after it fails, and the size the kernel really gave is read
back, for the operator to see.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Optional

_LINUX = sys.platform.startswith("linux")

#: Linux's forcing options; Python's C{socket} module does not name them.
SO_RCVBUFFORCE: Optional[int] = getattr(socket, "SO_RCVBUFFORCE", 33 if _LINUX else None)
SO_SNDBUFFORCE: Optional[int] = getattr(socket, "SO_SNDBUFFORCE", 32 if _LINUX else None)

#: Where the kernel's cap of each buffer is set (Linux).
SYSCTL = {"receive": "net.core.rmem_max", "send": "net.core.wmem_max"}


class BufferResult:
    """
    What setting one buffer gave.

    @ivar direction: C{"receive"} or C{"send"}.
    @ivar asked: the size asked for, in bytes.
    @ivar reported: what C{getsockopt} says now.  Linux reports twice the
        size it granted: the other half is its bookkeeping.
    @ivar granted: the size granted, comparable with C{asked}.
    @ivar forced: whether the forcing option (beyond the kernel's cap) was
        accepted.
    """

    def __init__(self, direction: str, asked: int, reported: int, granted: int, forced: bool) -> None:
        self.direction = direction
        self.asked = asked
        self.reported = reported
        self.granted = granted
        self.forced = forced

    @property
    def short(self) -> bool:
        """
        Whether the kernel gave less than half of what was asked: the
        operator should raise its cap.
        """
        return self.granted * 2 < self.asked

    def __repr__(self) -> str:
        return "<BufferResult %s asked=%d granted=%d reported=%d forced=%r>" % (
            self.direction, self.asked, self.granted, self.reported, self.forced,
        )


def setBuffer(sock: Any, direction: str, size: int) -> BufferResult:
    """
    Ask the kernel for a C{size}-byte receive or send buffer on C{sock}:
    with the forcing option when the platform has one and we may use it,
    else the plain option, which the kernel silently caps.

    @param sock: a socket (anything with C{setsockopt} and C{getsockopt}).
    @param direction: C{"receive"} or C{"send"}.
    @raise OSError: when even the plain option is refused.
    """
    if direction == "receive":
        plain, force = socket.SO_RCVBUF, SO_RCVBUFFORCE
    elif direction == "send":
        plain, force = socket.SO_SNDBUF, SO_SNDBUFFORCE
    else:
        raise ValueError("direction must be receive or send, not %r" % (direction,))
    forced = False
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            forced = True
        except OSError:
            # PermissionError without CAP_NET_ADMIN; ENOPROTOOPT where the
            # option does not exist.
            pass
    if not forced:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    reported = sock.getsockopt(socket.SOL_SOCKET, plain)
    granted = reported // 2 if _LINUX else reported
    return BufferResult(direction, size, reported, granted, forced)
