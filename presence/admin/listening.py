"""
Listening for the services that serve one endpoint (manhole, metrics, the
web page) on a Twisted endpoint description, and dropping their
connections when they stop.

Why not C{strports.service}: we need the bound address at once (to log
it; with port 0 the kernel picks it, and tests read it from the log), a
plain error when the port is taken, and stopping must also close the
connections still open (an idle SSH session or a keep-alive scrape), or a
stopped service would keep serving.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application import service
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from presence.runtime import RuntimeService


class TrackingFactory(WrappingFactory):
    """
    Wraps a server factory and keeps its live connections, so that
    L{closeAll} can drop them.

    It offers the ALPN protocols of the factory it wraps (a web site's
    C{http/1.1}): over C{ssl:}, Twisted asks the factory it wraps in TLS,
    and one naming none fails the handshake of every client that offers
    ALPN, which every browser and Prometheus do.
    """

    noisy = False

    def __init__(self, wrappedFactory: Any) -> None:
        WrappingFactory.__init__(self, wrappedFactory)
        self._idleWaiters: List[Deferred] = []
        if IProtocolNegotiationFactory.providedBy(wrappedFactory):
            directlyProvides(self, IProtocolNegotiationFactory)

    def acceptableProtocols(self) -> List[bytes]:
        """
        The wrapped factory's ALPN protocols (only asked when it has some).
        """
        return list(self.wrappedFactory.acceptableProtocols())

    def unregisterProtocol(self, p: Any) -> None:
        WrappingFactory.unregisterProtocol(self, p)
        if not self.protocols:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def closeAll(self) -> Deferred:
        """
        Abort every connection.

        @return: a Deferred firing once all are closed.
        """
        if not self.protocols:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._idleWaiters.append(waiter)
        for p in list(self.protocols):
            transport = p.transport
            if transport is not None:
                transport.abortConnection()
        return waiter


def describe(address: Any) -> str:
    """
    An address as people write it: C{127.0.0.1:2222}, C{[::1]:2222}, a
    socket path.
    """
    if isinstance(address, IPv6Address):
        return "[%s]:%d" % (address.host, address.port)
    if isinstance(address, IPv4Address):
        return "%s:%d" % (address.host, address.port)
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


def isLoopback(address: Any) -> bool:
    """
    Whether only this host can reach C{address}.
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host.startswith("127.") or address.host == "::1"
    return False


class Listener:
    """
    One listening endpoint with its tracked connections.

    @ivar port: the L{interfaces.IListeningPort}, once listening.
    """

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.tracker = TrackingFactory(factory)
        self.port: Optional[interfaces.IListeningPort] = None
        self._description = description
        self._reactor = reactor

    def listen(self) -> Any:
        """
        Start listening.  The endpoints an admin service uses (C{tcp:},
        C{unix:}, C{ssl:}) listen at once, so failing to bind raises here,
        before the reactor runs, like the SIP listeners do.

        @return: the bound address.
        @raise Exception: why it cannot listen (C{CannotListenError}, ...).
        """
        endpoint = serverFromString(self._reactor, self._description)
        outcome: List[Any] = []
        listening = endpoint.listen(self.tracker)
        listening.addBoth(outcome.append)
        if not outcome:
            listening.cancel()
            raise RuntimeError("endpoint %r does not listen at once" % (self._description,))
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]
        return self.port.getHost()  # type: ignore[union-attr]

    def stop(self) -> Deferred:
        """
        Stop listening and drop the open connections.
        """
        port, self.port = self.port, None
        stopping = [self.tracker.closeAll()]
        if port is not None:
            stopping.insert(0, maybeDeferred(port.stopListening))
        return gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)


class ListeningService(RuntimeService):
    """
    A service serving one endpoint: it listens when it starts (see
    L{listenOn}) and, when it stops, stops listening and drops the
    connections still open.  Only the subclass's configuration is pickled.

    @ivar address: the address it listens on, once started.
    """

    def _resetRuntime(self) -> None:
        """
        No port before start.
        """
        self._listener: Optional[Listener] = None
        self.address: Any = None

    def listenOn(self, description: str, factory: Any) -> Any:
        """
        Listen with C{factory} on the endpoint C{description}, then count as
        running; for the subclass's C{startService}.

        @return: the bound address.
        @raise Exception: why it cannot listen (L{Listener.listen}).
        """
        listener = Listener(self.reactor, description, factory)
        self.address = listener.listen()
        self._listener = listener
        service.Service.startService(self)
        return self.address

    def stopService(self) -> Any:
        """
        Stop listening and close the open connections.
        """
        service.Service.stopService(self)
        listener, self._listener = self._listener, None
        self.address = None
        if listener is None:
            return None
        return listener.stop()
