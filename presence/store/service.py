"""
A Twisted service owning a store, for the C{twistd presence} service tree.

The store itself is a plain object; this wrapper ties its lifetime to the
service tree: started with the application, flushed and stopped before the
reactor stops (C{MultiService.stopService} waits for the Deferred we return).
"""

from __future__ import annotations

from typing import Any, List

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.runtime import RuntimeService
from presence.startup import failStartup

_PENDING = object()


class StoreService(RuntimeService):
    """
    Start and stop an L{IStore} with the service tree.

    C{MultiService.startService} does not wait for Deferreds, so services
    that need the database gate on L{whenReady} instead.

    Pickling (C{.tap} files) keeps the store's configuration only; the
    readiness state is rebuilt on the next start.

    @ivar store: the L{presence.interfaces.IStore} provider owned.
    """

    log = Logger()

    def __init__(self, store: Any) -> None:
        """
        @param store: an L{IStore} provider, not started.
        """
        self.store = store
        RuntimeService.__init__(self)

    def _resetRuntime(self) -> None:
        """
        Fresh readiness state.
        """
        self._outcome: Any = _PENDING
        self._waiters: List[Deferred] = []

    def startService(self) -> None:
        """
        Start the store; L{whenReady} tells when it is usable.
        """
        service.Service.startService(self)
        # Keep the waiters: whenReady() may be called before startService().
        self._outcome = _PENDING
        d = self.store.start()

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                failStartup(self, "the database", result)
            self._outcome = result
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                self._fire(waiter)

        d.addBoth(done)

    def _fire(self, waiter: Deferred) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(self.store)

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred firing with the store once started, or failing
            with the reason it could not start.
        """
        waiter = Deferred()
        if self._outcome is _PENDING:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def stopService(self) -> Deferred:
        """
        Stop the store once its queued writes are committed.
        """
        service.Service.stopService(self)
        return self.store.stop()
