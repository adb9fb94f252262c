"""
A dispatcher's TCP connection to one manager, kept open and re-opened.

The connection is an ordinary flow of the SIP core (a L{SIPStreamProtocol}
registered in its L{FlowTable}): requests go down it, and the manager's
responses and NOTIFYs come up it and are handed to the core like any
other message.  The manager sees it as the flow its SUBSCRIBEs came in on,
and sends its NOTIFYs back over it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger

from presence.sip.target import Target
from presence.sip.transport import SIPStreamProtocol


class _LinkProtocol(SIPStreamProtocol):
    """
    A core flow that tells its link when it opens and closes.
    """

    def __init__(self, link: ManagerLink) -> None:
        SIPStreamProtocol.__init__(self, link.core, "TCP", link.core.limits)
        self.link = link

    def connectionMade(self) -> None:
        SIPStreamProtocol.connectionMade(self)
        self.link._connected(self)

    def connectionLost(self, reason: object = None) -> None:
        SIPStreamProtocol.connectionLost(self, reason)
        self.link._lost(self)


class _LinkFactory(ClientFactory):
    noisy = False

    def __init__(self, link: ManagerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> _LinkProtocol:
        protocol = _LinkProtocol(self.link)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.link._failed(reason)


class ManagerLink:
    """
    Connects to a manager over TCP and reconnects, every C{retryDelay}
    seconds, while it is started.

    @ivar protocol: the open connection, or L{None}.
    @ivar onLost: called with no argument when an open connection closes.
    """

    log = Logger()

    def __init__(
        self,
        core: Any,
        reactor: Any,
        host: str,
        port: int,
        retryDelay: float = 0.5,
        connectTimeout: float = 2.0,
        bindHost: Optional[str] = None,
    ) -> None:
        """
        @param bindHost: the local address to connect from (the interface
            the dispatcher listens on), so that the manager sees the
            dispatcher's own address; any when L{None}.
        """
        self.core = core
        self.reactor = reactor
        self.host = host
        self.port = port
        self.retryDelay = retryDelay
        self.connectTimeout = connectTimeout
        self.bindAddress = (bindHost, 0) if bindHost else None
        self.protocol: Optional[_LinkProtocol] = None
        self.onLost: Optional[Callable[[], None]] = None
        self._running = False
        self._connector: Any = None
        self._retry: Optional[IDelayedCall] = None

    def start(self) -> None:
        self._running = True
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if not self._running or self.protocol is not None:
            return
        self._connector = self.reactor.connectTCP(
            self.host, self.port, _LinkFactory(self), timeout=self.connectTimeout, bindAddress=self.bindAddress
        )

    def _connected(self, protocol: _LinkProtocol) -> None:
        self._connector = None
        if not self._running:
            protocol.transport.loseConnection()
            return
        self.protocol = protocol
        self.log.info("Connected to manager at {host}:{port}", host=self.host, port=self.port)

    def _lost(self, protocol: _LinkProtocol) -> None:
        if self.protocol is not protocol:
            return
        self.protocol = None
        self.log.info("Connection to manager at {host}:{port} closed", host=self.host, port=self.port)
        hook = self.onLost
        if hook is not None:
            try:
                hook()
            except Exception:
                self.log.failure("onLost hook failed")
        self._scheduleRetry()

    def _failed(self, reason: Any) -> None:
        self._connector = None
        self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if self._running and self._retry is None:
            self._retry = self.reactor.callLater(self.retryDelay, self._connect)

    def target(self) -> Optional[Target]:
        """
        Where to send to reach the manager: the open connection, or L{None}
        while there is none.
        """
        protocol = self.protocol
        if protocol is None or protocol.token is None:
            return None
        return protocol.source()

    def stop(self) -> None:
        """
        Stop reconnecting and close the connection.
        """
        self._running = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        connector = self._connector
        self._connector = None
        if connector is not None and getattr(connector, "state", None) == "connecting":
            connector.stopConnecting()
        protocol = self.protocol
        self.protocol = None
        if protocol is not None:
            protocol.transport.loseConnection()
