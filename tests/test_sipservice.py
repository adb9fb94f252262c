"""
The SIP service's listeners, on a memory reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from presence.config import Config
from presence.sip.listen import ListenSpec
from presence.sip.service import SIPService


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
    try:
        sip.startService()
    except CannotListenError:
        pass
    else:
        raise AssertionError("a fixed port in use must fail start-up")
