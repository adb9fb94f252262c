"""
UDP intake under overload: the datagrams of a reactor turn read at once,
sorted by precedence, and new work shed by how long it waited in the
kernel.

Why: a SIP server over UDP has no flow control.  Past its capacity the
receive buffer (4 MiB) fills, every request waits there seconds, its
sender retransmits (T1 = 0.5 s, doubling), and the server spends its CPU
on requests whose senders already gave up and on retransmissions of
them: the rate of completed work falls to a tenth (a measured SUBSCRIBE
step: 1,847/s achieved at 2,000/s offered, 177/s at 3,000/s).  The
manager's reactor-lag signal (L{presence.manager.overload}) never sees
this queue: each turn is short, the waiting happens in the kernel.

So the intake measures the wait itself, CoDel-fashion: the kernel stamps
each datagram on arrival (C{SO_TIMESTAMP}), and once the waits have stayed
above C{maxDelay} for a second (a standing queue, not a burst draining), a
new SUBSCRIBE or an initial PUBLISH that waited more than C{maxDelay} is
not served.  It gets 503 with Retry-After built from its raw header lines
(L{refusal}: a tenth of the cost of a parsed answer, and its sender stops
retransmitting), as long as there are at most C{rejectRatio} refusals per
new request served; beyond that it is dropped before parsing, which costs
nothing but the read.  Shedding drains the queue, the wait falls under
C{maxDelay}, and new work is served again at the full rate: the server
stays at its capacity instead of collapsing.

Within a turn, responses (to our NOTIFYs), in-dialog requests (refreshes,
un-SUBSCRIBEs), publication refreshes and everything else go first, the
new SUBSCRIBEs and PUBLISHes last: existing dialogs keep being served
whatever the load.  A retransmission of a request already served, which
its delay made a candidate for a 503, is matched to its transaction
(L{presence.sip.transaction.TransactionLayer.hasServer}) and gets that
transaction's answer instead.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python import log as legacyLog

#: What L{Shedder.decide} answers.
ACCEPT, REFUSE, DROP = "accept", "refuse", "drop"

#: A datagram read: (bytes, (host, port), arrival time in seconds since the
#: epoch: the kernel's stamp, or the time it was read without one).
Datagram = Tuple[bytes, Tuple[str, int], float]

_NEW_WORK = (b"SUBSCRIBE ", b"PUBLISH ")
# A To tag (in-dialog) or SIP-If-Match (a publication's refresh, change or
# removal) makes a SUBSCRIBE or PUBLISH existing state's, not new work.
_EXISTING = re.compile(rb"\n(?:(?:to|t)[ \t]*:[^\r\n]*;[ \t]*tag[ \t]*=|sip-if-match[ \t]*:)", re.I)

_LINUX = sys.platform.startswith("linux")
#: Linux's SO_TIMESTAMP (a struct timeval per datagram); Python does not
#: name it.
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29 if _LINUX else None)
_TIMEVAL = struct.Struct("@ll")


_TOP_VIA = re.compile(
    rb"\n(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*UDP[ \t]+([^ \t;,\r\n]+)([^,\r\n]*)\r\n", re.I
)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*(z9hG4bK[^ \t;,\r\n]+)")
_RPORT = re.compile(rb";[ \t]*rport(?=[ \t]*(?:;|$))", re.I)
_ECHOED = frozenset([b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"])


def refusal(data: bytes, host: str, port: int, retryAfter: int, tag: str) -> Optional[Tuple[Tuple[str, str, int, str], bytes, Tuple[str, int]]]:
    """
    A 503 for the new request C{data} from C{host}:C{port}, built from its
    raw header lines without parsing it (RFC 3261 §8.2.6: Via, From, To
    with our C{tag}, Call-ID and CSeq copied; the top Via stamped with
    C{received} and C{rport} as §18.2.1 and RFC 3581 say), at a tenth of
    the cost of a parsed answer: cheap enough to answer every request shed
    and spare the retransmissions a drop would bring.

    @return: the transaction's key parts (branch, sent-by host and port,
        method), the response, and where to send it; L{None} for anything
        unusual (no RFC 3261 branch, several values in the top Via line,
        an IPv6 sent-by), which the parser should judge.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[: end + 2]
    via = _TOP_VIA.search(head)
    if via is None:
        return None
    branch = _BRANCH.search(via.group(2))
    sentBy = via.group(1)
    if branch is None or b"[" in sentBy:
        return None
    viaHost, _, viaPort = sentBy.partition(b":")
    try:
        sentPort = int(viaPort) if viaPort else 5060
    except ValueError:
        return None
    params, replyPort = via.group(2), sentPort
    if _RPORT.search(params):
        params = _RPORT.sub(b";rport=%d" % (port,), params, 1)
        replyPort = port
    top = b"Via: SIP/2.0/UDP " + sentBy + params + b";received=" + host.encode("ascii")
    lines = [b"SIP/2.0 503 Overloaded"]
    vias = 0
    for line in head[data.find(b"\r\n") + 2 :].split(b"\r\n"):
        name = line[: line.find(b":")].strip().lower()
        if name not in _ECHOED:
            continue
        if name in (b"via", b"v"):
            vias += 1
            lines.append(top if vias == 1 else line)
        elif name in (b"to", b"t"):
            lines.append(line + b";tag=" + tag.encode("ascii"))
        else:
            lines.append(line)
    lines.append(b"Retry-After: %d" % (retryAfter,))
    lines.append(b"Content-Length: 0\r\n\r\n")
    method = data[: data.find(b" ")].decode("ascii")
    key = (branch.group(1).decode("ascii"), viaHost.decode("ascii", "replace"), sentPort, method)
    return key, b"\r\n".join(lines), (host, replyPort)


def isNewWork(data: bytes) -> bool:
    """
    Whether C{data} is a SUBSCRIBE outside a dialog or a PUBLISH without
    SIP-If-Match: a request that would create state.  Read from the raw
    bytes (the start line and the header block), without parsing: a
    mistake only changes the order of a turn, the parser still judges the
    message.
    """
    if not data.startswith(_NEW_WORK):
        return False
    end = data.find(b"\r\n\r\n")
    return _EXISTING.search(data, 0, end if end >= 0 else len(data)) is None


class Shedder:
    """
    Decides, for each new request, whether to serve, refuse or drop it by
    how long it waited.

    A wait above C{maxDelay} alone is no overload: the store's group
    commit answers a thousand requests in one turn, a collector pauses,
    and the queue behind drains again within the next second.  As in
    CoDel (RFC 8289), shedding starts only when new requests have waited
    more than C{maxDelay} without a break for C{interval} seconds: a
    standing queue, which only grows while every request is served.  It
    ends with the first new request that waited less; within C{memory}
    seconds of that, a wait above C{maxDelay} starts it again at once (as
    CoDel resumes dropping): the overload that built the queue is still
    on, and the queue is held at C{maxDelay} instead of refilling for an
    interval each time.

    @ivar counters: C{accepted}, C{refused} (503), C{dropped} (unparsed)
        new requests, and C{episodes}: times shedding started.
    @ivar shedding: whether new requests that waited too long are shed
        now.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        maxDelay: float,
        rejectRatio: float = 4.0,
        burst: int = 1000,
        interval: float = 1.0,
        memory: float = 10.0,
    ) -> None:
        """
        @param clock: provides C{seconds}, on the same base as the
            arrival stamps (the real reactor's is C{time.time}).
        @param maxDelay: most seconds a new request may have waited to be
            served under a standing queue; 0 serves every one.
        @param rejectRatio: 503s allowed per new request served: even a
            503 built without parsing (L{refusal}) costs something, which
            must not starve the work that is served.
        @param burst: most 503s saved up for the start of an overload.
        @param interval: seconds the wait must stay above C{maxDelay}
            before shedding starts.
        @param memory: seconds after an episode during which shedding
            starts again without waiting for C{interval}.
        """
        self.clock = clock
        self.maxDelay = maxDelay
        self.rejectRatio = rejectRatio
        self.burst = burst
        self.interval = interval
        self.memory = memory
        self._endedAt = float("-inf")
        self._episode = False
        self.tokens = float(burst)
        self.shedding = False
        self._aboveSince: Optional[float] = None
        self.counters: Dict[str, int] = {"accepted": 0, "refused": 0, "dropped": 0, "episodes": 0}

    def decide(self, arrival: float) -> str:
        """
        L{ACCEPT}, L{REFUSE} (answer 503) or L{DROP} (discard unparsed) a
        new request that arrived at C{arrival}.
        """
        counters = self.counters
        now = self.clock.seconds()
        if not self.maxDelay or now - arrival <= self.maxDelay:
            self._aboveSince = None
            if self.shedding:
                self.shedding = False
                self._endedAt = now
            elif self._episode and now - self._endedAt >= self.memory:
                self._episode = False
                self.log.info(
                    "Overload over: new requests served again ({refused} refused, {dropped} dropped so far)",
                    refused=counters["refused"], dropped=counters["dropped"],
                )
            return self._accept()
        if not self.shedding:
            if self._aboveSince is None:
                self._aboveSince = now
            if now - self._endedAt >= self.memory:
                if now - self._aboveSince < self.interval:
                    return self._accept()
                if not self._episode:
                    self._episode = True
                    counters["episodes"] += 1
                    self.log.warn(
                        "Overloaded: new SUBSCRIBEs and PUBLISHes waited over {max} s for {interval} s "
                        "(now {delay:.2f} s); refusing them 503 or dropping them",
                        max=self.maxDelay, interval=self.interval, delay=now - arrival,
                    )
            self.shedding = True
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            counters["refused"] += 1
            return REFUSE
        counters["dropped"] += 1
        return DROP

    def _accept(self) -> str:
        self.counters["accepted"] += 1
        self.tokens = min(float(self.burst), self.tokens + self.rejectRatio)
        return ACCEPT


class IntakePort(udp.Port):
    """
    A UDP port that reads the datagrams of a turn (up to C{maxThroughput}
    bytes) with their kernel arrival stamps, then hands them to its
    protocol's C{datagramsReceived} as one list.
    """

    stamped = False

    def startListening(self) -> None:
        udp.Port.startListening(self)
        if SO_TIMESTAMP is not None and hasattr(self.socket, "recvmsg"):
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
                self.stamped = True
            except OSError:
                self.stamped = False

    def doRead(self) -> None:
        batch: List[Datagram] = []
        read = 0
        now = self.reactor.seconds()
        sock = self.socket
        stamped = self.stamped
        size = self.maxPacketSize
        while read < self.maxThroughput:
            try:
                if stamped:
                    data, ancillary, _, addr = sock.recvmsg(size, 64)
                    arrival = now
                    for level, kind, payload in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(payload) >= _TIMEVAL.size:
                            seconds, micros = _TIMEVAL.unpack_from(payload)
                            arrival = seconds + micros * 1e-6
                else:
                    data, addr = sock.recvfrom(size)
                    arrival = now
            except OSError as se:
                no = se.args[0]
                if no in udp._sockErrReadIgnore:
                    break
                if no in udp._sockErrReadRefuse:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    break
                raise
            read += len(data)
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]
            batch.append((data, addr, arrival))
        if batch:
            try:
                self.protocol.datagramsReceived(batch)
            except BaseException:
                legacyLog.err()


def listenDatagrams(reactor: Any, port: int, protocol: Any, interface: str, maxPacketSize: int) -> Any:
    """
    Listen on UDP C{port} with an L{IntakePort} on a real reactor; any
    other (a test's fake) gets C{listenUDP}, whose protocol then sees one
    C{datagramReceived} per datagram.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=maxPacketSize)
    listening = IntakePort(port, protocol, interface, maxPacketSize, reactor)
    listening.startListening()
    return listening
