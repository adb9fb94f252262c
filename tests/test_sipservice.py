"""
The SIP service's listeners, on a memory reactor, and the kernel buffers of
its UDP sockets (on fakes and on a real loopback socket).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, formatEvent

from presence.config import Config, ConfigError
from presence.sip import sockbuf
from presence.sip.listen import ListenSpec
from presence.sip.service import SIPService
from presence.startup import StartupError


class FakeUDPPort:
    """
    MemoryReactor has no UDP: just enough of a listening port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.address = IPv4Address("UDP", host, port)
        self.listening = True

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        self.listening = False


class BusyOnce(MemoryReactorClock):
    """
    The first TCP port asked for is taken by someone else.
    """

    def __init__(self) -> None:
        MemoryReactorClock.__init__(self)
        self.refused = 0
        self.nextUDP = 40000

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            port, self.nextUDP = self.nextUDP, self.nextUDP + 1
        return FakeUDPPort(interface or "0.0.0.0", port)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if not self.refused:
            self.refused += 1
            raise CannotListenError(interface, port, OSError("in use"))
        return MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)


def test_portZeroRetriesWhenTCPTaken():
    reactor = BusyOnce()
    config = Config(listen=(ListenSpec("UDP", 0, "127.0.0.1"), ListenSpec("TCP", 0, "127.0.0.1")))
    sip = SIPService(config, reactor)
    sip.startService()
    assert reactor.refused == 1
    assert [(t, p) for t, _, p in sip.addresses] == [("UDP", 40001), ("TCP", 40001)]
    sip.stopService()


def test_fixedPortTakenFails():
    reactor = BusyOnce()
    config = Config(listen=(ListenSpec("UDP", 5060), ListenSpec("TCP", 5060)))
    sip = SIPService(config, reactor)
    with pytest.raises(StartupError) as raised:
        sip.startService()
    assert str(raised.value).startswith("SIP over TCP: cannot listen on *:5060: ")


# UDP socket buffers ([sip] udp_receive_buffer, udp_send_buffer).


def test_udpBufferSettings():
    """
    Sizes are bytes, with optional binary suffixes; the receive buffer
    defaults to 4 MiB, the send buffer to 0 (the kernel's default).
    """
    config = Config()
    assert (config.udpReceiveBuffer, config.udpSendBuffer) == (4194304, 0)
    config = Config.fromString("[sip]\nudp_receive_buffer = 8M\nudp_send_buffer = 512K\n")
    assert (config.udpReceiveBuffer, config.udpSendBuffer) == (8 * 1024 * 1024, 512 * 1024)
    config = Config.fromString("[sip]\nudp_receive_buffer = 212992\nudp_send_buffer = 1MiB\n")
    assert (config.udpReceiveBuffer, config.udpSendBuffer) == (212992, 1024 * 1024)
    assert Config.fromString("[sip]\nudp_receive_buffer = 0\n").udpReceiveBuffer == 0


@pytest.mark.parametrize(
    "value, complaint",
    [("lots", "must be a number of bytes"), ("-1", "must be a number of bytes"),
     ("4.5M", "must be a number of bytes"), ("2G", "must be at most 1G")],
)
def test_udpBufferBadSettings(value, complaint):
    with pytest.raises(ConfigError) as raised:
        Config.fromString("[sip]\nudp_receive_buffer = %s\n" % (value,))
    assert "[sip] udp_receive_buffer = %r: %s" % (value, complaint) in str(raised.value)


class FakeSocket:
    """
    A socket whose kernel caps plain buffer requests at C{cap} and
    refuses (or accepts) the forcing options; reports as Linux does.
    """

    def __init__(self, cap: int, mayForce: bool) -> None:
        self.cap = cap
        self.mayForce = mayForce
        self.values = {socket.SO_RCVBUF: 212992, socket.SO_SNDBUF: 212992}
        self.calls = []

    def setsockopt(self, level, option, value):
        self.calls.append(option)
        assert level == socket.SOL_SOCKET
        if option in (sockbuf.SO_RCVBUFFORCE, sockbuf.SO_SNDBUFFORCE):
            if not self.mayForce:
                raise PermissionError(1, "Operation not permitted")
            plain = socket.SO_RCVBUF if option == sockbuf.SO_RCVBUFFORCE else socket.SO_SNDBUF
            self.values[plain] = value * 2
        else:
            self.values[option] = min(value, self.cap) * 2

    def getsockopt(self, level, option):
        return self.values[option]


@pytest.mark.skipif(sockbuf.SO_RCVBUFFORCE is None, reason="no SO_RCVBUFFORCE on this platform")
def test_setBufferForcesThenFallsBack():
    """
    SO_RCVBUFFORCE first; refused (no CAP_NET_ADMIN), SO_RCVBUF, which the
    kernel caps: the result says so.
    """
    sock = FakeSocket(cap=212992, mayForce=True)
    result = sockbuf.setBuffer(sock, "receive", 4194304)
    assert sock.calls == [sockbuf.SO_RCVBUFFORCE]
    assert (result.forced, result.granted, result.reported, result.short) == (True, 4194304, 8388608, False)
    sock = FakeSocket(cap=212992, mayForce=False)
    result = sockbuf.setBuffer(sock, "receive", 4194304)
    assert sock.calls == [sockbuf.SO_RCVBUFFORCE, socket.SO_RCVBUF]
    assert (result.forced, result.granted, result.short) == (False, 212992, True)
    sock = FakeSocket(cap=4194304, mayForce=False)
    result = sockbuf.setBuffer(sock, "send", 1048576)
    assert sock.calls == [sockbuf.SO_SNDBUFFORCE, socket.SO_SNDBUF]
    assert (result.granted, result.short) == (1048576, False)
    with pytest.raises(ValueError):
        sockbuf.setBuffer(sock, "sideways", 1)


class SocketPort(FakeUDPPort):
    def __init__(self, host: str, port: int, sock: FakeSocket) -> None:
        FakeUDPPort.__init__(self, host, port)
        self.sock = sock

    def getHandle(self) -> FakeSocket:
        return self.sock


class CappedReactor(BusyOnce):
    """
    UDP ports on sockets whose kernel caps buffers at 208 KiB and refuses
    to force them (an unprivileged process on a default Linux).
    """

    def __init__(self) -> None:
        BusyOnce.__init__(self)
        self.refused = 1
        self.sockets = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        sock = FakeSocket(cap=212992, mayForce=False)
        self.sockets.append(sock)
        return SocketPort(interface or "0.0.0.0", port or 40000, sock)


def test_shortBufferWarnsTheOperator():
    """
    One info line per UDP socket with the sizes granted, and a warning
    naming net.core.rmem_max when the kernel gave less than half.
    """
    reactor = CappedReactor()
    config = Config(
        listen=(ListenSpec("UDP", 0, "127.0.0.1"), ListenSpec("TCP", 0, "127.0.0.1")),
        udpSendBuffer=65536,
    )
    sip = SIPService(config, reactor)
    events = []
    sip.log = Logger(observer=events.append)
    sip.startService()
    sip.stopService()
    [sock] = reactor.sockets
    assert sock.values[socket.SO_RCVBUF] == 2 * 212992
    texts = [(event["log_level"], formatEvent(event)) for event in events]
    assert (LogLevel.info, "UDP 127.0.0.1:40000: receive buffer 212992 bytes (asked 4194304); "
            "send buffer 65536 bytes (asked 65536)") in texts
    warnings = [text for level, text in texts if level == LogLevel.warn]
    assert len(warnings) == 1 and "net.core.rmem_max" in warnings[0] and "212992" in warnings[0]


def test_noBufferAskedNothingSet():
    reactor = CappedReactor()
    config = Config(listen=(ListenSpec("UDP", 0, "127.0.0.1"),), udpReceiveBuffer=0)
    sip = SIPService(config, reactor)
    sip.startService()
    sip.stopService()
    assert reactor.sockets[0].calls == []


def _kernelCap(name: str) -> int:
    try:
        with open("/proc/sys/net/core/" + name) as f:
            return int(f.read())
    except OSError:
        return 0


@pytest_twisted.inlineCallbacks
def test_buffersAppliedOnARealLoopbackPort():
    """
    On a real UDP socket the kernel reports at least the size asked, or
    its cap when we may not force it (Linux reports twice the size).
    """
    from twisted.internet import reactor

    receive, send = 3 * 1024 * 1024, 1024 * 1024
    config = Config(
        listen=(ListenSpec("UDP", 0, "127.0.0.1"),), udpReceiveBuffer=receive, udpSendBuffer=send,
    )
    sip = SIPService(config, reactor)
    sip.startService()
    try:
        [listening] = sip._datagramPorts
        sock = listening.getHandle()
        reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert reported >= min(receive, _kernelCap("rmem_max") or receive)
        reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert reported >= min(send, _kernelCap("wmem_max") or send)
    finally:
        yield sip.stopService()
