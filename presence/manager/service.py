"""
The service that runs a subscription manager inside the service tree.

It needs the SIP core (from the C{"sip"} service), the store (from the
C{"store"} service) and billing (from the C{"billing"} service: the
authorizer and the digest authenticator).  Until the store is up, billing
serves and the manager has reloaded its state, SUBSCRIBE and PUBLISH are
answered 503 with Retry-After rather than served from an empty memory.

The registrar (L{presence.registrar}) runs beside the manager, sharing its
authentication gate, and REGISTER waits for it the same way.  Its bindings
are reloaded first, so the presentities the manager reloads already know
whether they are registered.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.config import Config
from presence.dispatcher.service import routeSecret
from presence.manager.manager import SubscriptionManager
from presence.registrar import Registrar
from presence.runtime import RuntimeService
from presence.startup import failStartup
from presence.sip.message import Request
from presence.sip.transaction import ServerTransaction


class ManagerService(RuntimeService):
    """
    Starts a L{SubscriptionManager} once its siblings are ready.

    @ivar manager: the running manager, or L{None}.
    @ivar registrar: the running registrar, or L{None}.
    """

    log = Logger()
    name = "manager"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.manager: Optional[SubscriptionManager] = None
        self.registrar: Optional[Registrar] = None
        self._ready: Optional[Deferred] = None

    def startService(self) -> None:
        service.Service.startService(self)
        parent = self.parent
        assert parent is not None
        core = parent.getServiceNamed("sip").core
        storeService = parent.getServiceNamed("store")
        for method in ("SUBSCRIBE", "PUBLISH", "REGISTER"):
            core.addHandler(method, _unavailable(core))
        self._ready = storeService.whenReady()
        self._ready.addCallback(self._billingReady, parent)
        self._ready.addCallback(self._storeReady, core)
        self._ready.addErrback(self._failed)

    def _billingReady(self, store: Any, parent: Any) -> Any:
        """
        Wait for the billing service, if the tree has one.

        @return: C{(store, billing service or None)}.
        """
        try:
            billing = parent.getServiceNamed("billing")
        except KeyError:
            return (store, None)
        return billing.whenReady().addCallback(lambda ready: (store, ready))

    def _storeReady(self, ready: Any, core: Any) -> Optional[Deferred]:
        if not self.running:
            # Stopped while the store was starting: load nothing now.
            return None
        store, billing = ready
        if billing is None:
            manager = SubscriptionManager(core, store, self.config, self.reactor)
        else:
            manager = SubscriptionManager(
                core, store, self.config, self.reactor, billing.authorizer, billing.digest
            )
        if self.config.clusterPeers:
            # A manager of a cluster notifies only while it holds its
            # lease: the cluster service's group unfences it once the
            # lease is registered and what was adopted meanwhile dropped.
            manager.fence()
        registrar = Registrar(
            core, store, self.config, self.reactor, manager.gate, noticeSecret=self._noticeSecret()
        )
        manager.followRegistrations(registrar)
        d = registrar.load()
        d.addCallback(lambda _: manager.load())

        def loaded(_: Any) -> None:
            if not self.running:
                manager.stop()
                registrar.stop()
                return
            self.manager = manager
            self.registrar = registrar
            manager.install()
            registrar.install()
            manager.overload.start()
            self.log.info("Subscription manager {node} ready", node=self.config.node)

        return d.addCallback(loaded)

    def _noticeSecret(self) -> bytes:
        """
        The cluster's C{[dispatcher] secret}, which signs the dispatchers'
        notices of closed connections; empty (every notice refused, and
        bindings registered through a dispatcher last until they expire)
        when it is not set or cannot be read.
        """
        try:
            return routeSecret(self.config)
        except ValueError as e:
            self.log.error("Notices of closed dispatcher connections are refused: {error}", error=str(e))
            return b""

    def _failed(self, failure: Failure) -> None:
        failStartup(self, "the subscription manager", failure)

    def reconfigure(self, config: Config) -> None:
        """
        Apply new overload thresholds (SIGHUP, L{presence.reload}).
        """
        self.config = config
        if self.manager is None:
            return
        overload = self.manager.overload
        overload.maxBacklog = config.maxPendingWrites
        overload.maxLag = config.maxReactorLag
        overload.retryAfter = config.overloadRetryAfter
        if overload.maxLag > 0:
            overload.start()
        else:
            overload.stop()

    def whenReady(self) -> Deferred:
        """
        Fires once the manager serves requests (for tests and admin).
        """
        if self.manager is not None or self._ready is None:
            return succeed(self.manager)
        d = Deferred()
        self._ready.addBoth(lambda result: (d.callback(self.manager), result)[1])
        return d

    def stopService(self) -> Any:
        """
        Stop the manager once the requests it took have left billing (each
        then has its store write queued, which the store flushes before it
        stops), so an orderly shutdown answers them rather than failing
        them.
        """
        service.Service.stopService(self)
        manager = self.manager
        registrar = self.registrar
        if manager is None:
            return None
        self.manager = None
        self.registrar = None
        waits = [manager.whenIdle()]
        if registrar is not None:
            waits.append(registrar.whenIdle())

        def stop(_: Any) -> None:
            manager.stop()
            if registrar is not None:
                registrar.stop()

        return gatherResults(waits).addCallback(stop)


def _unavailable(core: Any) -> Any:
    def handler(request: Request, tx: ServerTransaction) -> None:
        core.respond(tx, 503, "Starting Up", [("Retry-After", "1")])

    return handler
