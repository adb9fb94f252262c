"""
The billing service in the service tree (name C{"billing"}): the embedded
authorizer (every account and watch rule of the store, in memory), and the
digest authenticator with the server secret that every manager of a
cluster shares.

Only the configuration is pickled into a C{.tap} file; the authorizer and
the authenticator are built in L{BillingService.startService}.  A remote
billing node (C{--role=billing}, over Perspective Broker) would be a
sibling service providing the same L{whenReady} result with a PB client in
place of the embedded authorizer; the managers would not change.
"""

from __future__ import annotations

import os
import stat
from typing import Any, List, Optional

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.billing.authorizer import EmbeddedAuthorizer
from presence.config import Config
from presence.runtime import RuntimeService
from presence.startup import failStartup
from presence.sip.digest import DigestAuthenticator

MIN_SECRET = 16


class SecretError(Exception):
    """
    The secret file cannot be used; the message is one line.
    """


def loadSecret(path: str) -> bytes:
    """
    The server secret that signs digest nonces: the content of C{path}
    (surrounding whitespace removed), or 32 random bytes for this process
    when C{path} is empty.

    Every manager that must accept another's nonces (a cluster behind one
    dispatcher) needs the same file; a random secret only suits a single
    process.

    @raise SecretError: when the file is unreadable, shorter than 16 bytes,
        or readable or writable by group or others.
    """
    if not path:
        return os.urandom(32)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise SecretError("[billing] secret_file = %r: cannot read it: %s" % (path, e.strerror or e))
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            "[billing] secret_file = %r is accessible to group or others (mode %o); chmod 600 it"
            % (path, stat.S_IMODE(st.st_mode))
        )
    if len(secret) < MIN_SECRET:
        raise SecretError(
            "[billing] secret_file = %r holds %d bytes; at least %d random bytes are needed"
            % (path, len(secret), MIN_SECRET)
        )
    return secret


def billingProblem(config: Config) -> Optional[str]:
    """
    Why billing could not start with C{config}, in one line, or L{None}.
    Checked before the reactor runs.
    """
    try:
        loadSecret(config.billingSecretFile)
    except SecretError as e:
        return str(e)
    return None


class BillingService(RuntimeService):
    """
    Runs the embedded authorizer once the store is up.

    @ivar authorizer: the L{EmbeddedAuthorizer}, once ready.
    @ivar digest: the L{DigestAuthenticator}, once started.
    """

    log = Logger()
    name = "billing"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.authorizer: Optional[EmbeddedAuthorizer] = None
        self.digest: Optional[DigestAuthenticator] = None
        self._outcome: Any = None
        self._waiters: List[Deferred] = []

    def startService(self) -> None:
        service.Service.startService(self)
        self._outcome = None
        config = self.config
        try:
            secret = loadSecret(config.billingSecretFile)
        except SecretError as e:
            self._settle(Failure(e))
            return
        self.digest = DigestAuthenticator(
            secret, self.reactor, config.billingNonceLifetime, config.billingAlgorithms
        )
        assert self.parent is not None, "billing needs the service tree as its parent"
        storeService = self.parent.getServiceNamed("store")
        d = storeService.whenReady()
        d.addCallback(self._storeReady)
        d.addBoth(self._settle)

    def _storeReady(self, store: Any) -> Any:
        if not self.running:
            # Stopped while the store was starting: start nothing now.
            return None
        config = self.config
        authorizer = EmbeddedAuthorizer(store.runRead, self.reactor, config.billingPollInterval)
        self.authorizer = authorizer
        # Ready once the first load is over, loaded or not: while it is
        # retried, lookups wait a little, then the manager answers 500.
        d = authorizer.start()
        if config.billingNoAuthDomains:
            self.log.warn(
                "Authentication is off for {domains}: their From is trusted as it is",
                domains=" ".join(config.billingNoAuthDomains),
            )
        return d.addCallback(lambda _: self)

    def _settle(self, result: Any) -> None:
        self._outcome = result if isinstance(result, Failure) else self
        if isinstance(result, Failure):
            failStartup(self, "billing", result)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(self._outcome)

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred firing with this service once L{authorizer} and
            L{digest} serve, or failing with why they cannot.
        """
        waiter: Deferred = Deferred()
        if self._outcome is None:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.authorizer is not None:
            self.authorizer.stop()
