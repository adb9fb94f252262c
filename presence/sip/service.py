"""
The service that owns the SIP core and its listening sockets.

Only configuration is kept in the instance that twistd may pickle into a
C{.tap} file; the core, the transaction layer and the sockets are built in
L{SIPService.startService} and dropped when pickled.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from OpenSSL import SSL, crypto
from twisted.application import service
from twisted.internet import ssl
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from presence.config import Config
from presence.runtime import RuntimeService
from presence.sip.core import SIPCore
from presence.sip.listen import SAME_PORT_AS_UDP, ListenSpec
from presence.sip.intake import Shedder, listenDatagrams
from presence.sip.sockbuf import SYSCTL, setBuffer
from presence.sip.transaction import TimerSettings
from presence.sip.transport import SIPDatagramProtocol, SIPStreamFactory
from presence.sip.websocket import SIPWebSocketFactory
from presence.startup import StartupError, describe


class SIPService(RuntimeService):
    """
    Listens on the configured UDP, TCP, TLS, WS and WSS addresses and runs
    the SIP core behind them.

    @ivar core: the L{SIPCore}, once started.
    @ivar addresses: what it listens on, as C{(transport, host, port)}.
    """

    log = Logger()
    name = "sip"

    def __init__(self, config: Config, reactor: Optional[Any] = None, withDatabase: bool = True) -> None:
        """
        @param withDatabase: name the database in the start-up line (a
            dispatcher has none).
        """
        self.config = config
        self.withDatabase = withDatabase
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.core: Optional[SIPCore] = None
        self.addresses: List[tuple] = []
        self._datagramPorts: List[Any] = []
        self._streamPorts: List[Any] = []
        self.shedder: Any = None

    def startService(self) -> None:
        config = self.config
        limits = config.limits()
        self.core = SIPCore(
            self.reactor,
            limits,
            TimerSettings(T1=config.t1, T2=config.t2, T4=config.t4),
            config.advertise or None,
        )
        self.core.logRequests = config.logRequests
        self.core.retryAfter = config.overloadRetryAfter
        self.shedder = Shedder(self.reactor, config.maxQueueDelay)
        self.core.intake = self.shedder
        self._listenAll(limits)
        service.Service.startService(self)
        database = ""
        if self.withDatabase:
            database = "; database " + _redacted(config.database)
        self.log.info(
            "SIP listening on {addresses}{database}",
            addresses=", ".join("%s %s:%d" % a for a in self.addresses),
            database=database,
        )

    def _listenAll(self, limits: Any) -> None:
        """
        Open every listener, UDP first.  A TCP or TLS listener on port 0
        takes the port the kernel gave the UDP listener on its interface;
        when another process holds that port for TCP, start over with a new
        one rather than fail (a few attempts: a free pair is the rule).

        @raise StartupError: naming the listener that cannot be opened.
        """
        specs = sorted(self.config.listen, key=lambda s: s.transport != "UDP")
        for attempt in range(20):
            udpPorts: Dict[str, int] = {}
            spec = specs[0] if specs else None
            try:
                for spec in specs:
                    self._listen(spec, limits, udpPorts)
                return
            except CannotListenError as e:
                inherited = any(s.port == 0 and s.transport in SAME_PORT_AS_UDP for s in specs)
                if not inherited or attempt == 19:
                    raise StartupError("SIP over %s: %s" % (spec.transport if spec else "UDP", describe(e))) from e
                for listening in self._datagramPorts + self._streamPorts:
                    listening.stopListening()
                self._datagramPorts, self._streamPorts, self.addresses = [], [], []
                assert self.core is not None
                self.core.ports = {}

    def _listen(self, spec: ListenSpec, limits: Any, udpPorts: Dict[str, int]) -> None:
        core = self.core
        assert core is not None
        port = spec.port
        if spec.transport == "UDP":
            protocol = SIPDatagramProtocol(core, limits, self.shedder)
            # Twisted reads 8 KiB datagrams by default; SIP allows 64 KiB.
            listening = listenDatagrams(self.reactor, port, protocol, spec.interface, 65535)
            core.udp = protocol
        else:
            if port == 0 and spec.transport in SAME_PORT_AS_UDP:
                port = udpPorts.get(spec.interface, 0)
            factory: Any
            if spec.transport in ("WS", "WSS"):
                origins = frozenset(self.config.websocketOrigins)
                factory = SIPWebSocketFactory(core, spec.transport, limits, origins)
            else:
                factory = SIPStreamFactory(core, spec.transport, limits)
            backlog = int(spec.options.get("backlog", 128))
            if spec.transport in ("TCP", "WS"):
                listening = self.reactor.listenTCP(port, factory, backlog, spec.interface)
            else:
                try:
                    context = tlsContext(spec)
                except TLS_ERRORS as e:
                    raise StartupError("SIP over %s on port %d: %s" % (spec.transport, spec.port, describe(e))) from e
                listening = self.reactor.listenSSL(port, factory, context, backlog, spec.interface)
        bound = listening.getHost()
        if spec.transport == "UDP":
            udpPorts[spec.interface] = bound.port
            self._sizeBuffers(listening, "%s:%d" % (bound.host, bound.port))
        core.ports.setdefault(spec.transport, bound.port)
        if spec.transport == "UDP":
            self._datagramPorts.append(listening)
        else:
            self._streamPorts.append(listening)
        self.addresses.append((spec.transport, bound.host, bound.port))

    def _sizeBuffers(self, listening: Any, where: str) -> None:
        """
        Give a UDP socket the kernel buffers of C{[sip] udp_receive_buffer}
        and C{udp_send_buffer} (0: the kernel's default), and say what the
        kernel granted: it caps them at C{net.core.rmem_max} and
        C{wmem_max} unless we may force them.  Every SIP UDP socket the
        process opens comes here, a dispatcher's included: it reaches its
        UDP managers over them.
        """
        wanted = [("receive", self.config.udpReceiveBuffer), ("send", self.config.udpSendBuffer)]
        wanted = [(direction, size) for direction, size in wanted if size]
        getHandle = getattr(listening, "getHandle", None)
        if not wanted or getHandle is None:
            # Nothing asked, or a test's fake port with no socket.
            return
        sock = getHandle()
        results = []
        for direction, size in wanted:
            try:
                results.append(setBuffer(sock, direction, size))
            except OSError as e:
                self.log.warn(
                    "UDP {where}: cannot set the {direction} buffer to {size} bytes: {error}",
                    where=where, direction=direction, size=size, error=e.strerror or str(e),
                )
        if not results:
            return
        self.log.info(
            "UDP {where}: {buffers}",
            where=where,
            buffers="; ".join(
                "%s buffer %d bytes (asked %d%s)"
                % (r.direction, r.granted, r.asked, ", forced" if r.forced else "")
                for r in results
            ),
        )
        for r in results:
            if r.short:
                self.log.warn(
                    "UDP {where}: the kernel gave a {direction} buffer of {granted} bytes, not the "
                    "{asked} asked: raise {sysctl} (sysctl -w {sysctl}={asked}) or datagrams will "
                    "be dropped under bursts",
                    where=where, direction=r.direction, granted=r.granted, asked=r.asked,
                    sysctl=SYSCTL[r.direction],
                )

    def reconfigure(self, config: Config) -> None:
        """
        Apply new C{[log] requests}, message limits, the intake's
        C{max_queue_delay} and the Retry-After of its 503s (SIGHUP,
        L{presence.reload}).  Every transport and parser reads the one
        L{Limits} the core holds, so changing it in place reaches the open
        connections too.
        """
        self.config = config
        if self.core is None:
            return
        self.core.logRequests = config.logRequests
        self.core.retryAfter = config.overloadRetryAfter
        self.shedder.maxDelay = config.maxQueueDelay
        fresh = config.limits()
        for name in type(fresh).__slots__:
            setattr(self.core.limits, name, getattr(fresh, name))

    def pause(self) -> None:
        """
        Stop taking requests but keep the sockets open, so that answers to
        requests already taken can still go out (an orderly shutdown).
        """
        for listening in self._datagramPorts:
            listening.stopReading()
        streams, self._streamPorts = self._streamPorts, []
        for listening in streams:
            listening.stopListening()
        if self.core is not None:
            for flow in self.core.flows.all():
                flow.transport.pauseProducing()

    def stopService(self) -> Any:
        service.Service.stopService(self)
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports = self._datagramPorts + self._streamPorts
        self._datagramPorts, self._streamPorts = [], []
        waits = [maybeDeferred(p.stopListening) for p in ports]
        if self.core is not None:
            self.core.transactions.stop()
            waits.append(self._closeFlows())
        return gatherResults(waits)

    def _closeFlows(self, timeout: float = 2.0) -> Any:
        """
        Close every connection (a WebSocket with its close frame, 1001) and
        fire once they have all gone, or after C{timeout} seconds: the
        reactor drops whatever is still unwritten when it stops, so the
        process must not stop before they have been flushed.
        """
        from twisted.internet.defer import Deferred

        flows = self.core.flows  # type: ignore[union-attr]
        done: Deferred = Deferred()

        def check(token: object = None) -> None:
            if not len(flows) and not done.called:
                done.callback(None)

        def expire() -> None:
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(timeout, expire)
        flows.addCloseListener(check)

        def cleanUp(result: object) -> object:
            flows.removeCloseListener(check)
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(cleanUp)
        for flow in flows.all():
            flow.close()
        check()
        return done


def _redacted(url: str) -> str:
    """
    A database URL fit for a log line: no password.
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


#: What L{tlsContext} raises for files that are missing or not a key and
#: certificate OpenSSL takes.
TLS_ERRORS = (OSError, ValueError, SSL.Error, crypto.Error)


def tlsContext(spec: ListenSpec) -> Any:
    """
    Server TLS options (for TLS and WSS) from PEM files: C{privateKey} and
    C{certKey}, with an optional C{extraCertChain}.
    """
    with open(spec.options["privateKey"], "rb") as f:
        keyPEM = f.read()
    with open(spec.options["certKey"], "rb") as f:
        certPEM = f.read()
    chain = []
    if "extraCertChain" in spec.options:
        with open(spec.options["extraCertChain"], "rb") as f:
            chain = [ssl.Certificate.loadPEM(pem).original for pem in _splitPEM(f.read())]
    cert = ssl.PrivateCertificate.loadPEM(keyPEM + b"\n" + certPEM)
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        extraCertChain=chain or None,
    )


def _splitPEM(data: bytes) -> List[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker for part in data.split(marker) if b"-----BEGIN" in part]
