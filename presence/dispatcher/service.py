"""
The service that runs a L{Dispatcher} in the service tree of
C{twistd presence --role=dispatcher}.

It needs the SIP core of its sibling C{"sip"} service, which must start
first.  Only the configuration is kept when twistd pickles the tree into a
C{.tap} file; the dispatcher, its timers and its connections are built in
L{DispatcherService.startService}.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Optional

from twisted.application import service
from twisted.logger import Logger

from presence.config import Config
from presence.dispatcher.dispatcher import Dispatcher
from presence.runtime import RuntimeService


MIN_SECRET = 16


def routeSecret(config: Config) -> bytes:
    """
    The key that signs the dispatcher's Record-Routes: C{[dispatcher]
    secret_file} (its content, mode 0600) or C{secret}; empty when neither
    is set.  Dispatchers that must accept each other's routes, or their
    own after a restart, need the same one.

    @raise ValueError: both are set, the file cannot be read or is open to
        group or others, or the secret is shorter than 16 bytes.
    """
    path = config.dispatcherSecretFile
    if path and config.dispatcherSecret:
        raise ValueError("[dispatcher] set secret or secret_file, not both")
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ValueError("[dispatcher] secret_file = %r: cannot read it: %s" % (path, e.strerror or e))
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                "[dispatcher] secret_file = %r is accessible to group or others (mode %o); chmod 600 it"
                % (path, stat.S_IMODE(mode))
            )
    else:
        secret = config.dispatcherSecret.encode("utf-8")
    if secret and len(secret) < MIN_SECRET:
        raise ValueError("[dispatcher] the secret must be at least %d bytes" % (MIN_SECRET,))
    return secret


def dispatcherProblem(config: Config) -> Optional[str]:
    """
    Why a dispatcher could not start with C{config}, in one line, or
    L{None}.  Checked before the reactor runs.
    """
    if not config.dispatcherManagers:
        return "[dispatcher] managers = NAME=udp:HOST:PORT ... is needed for --role=dispatcher"
    if config.dispatcherDeadAfter < 2 * config.dispatcherPingInterval:
        # One lost ping must not take a manager out.
        return "[dispatcher] dead_after must be at least twice ping_interval"
    try:
        routeSecret(config)
    except ValueError as e:
        return str(e)
    return None


class DispatcherService(RuntimeService):
    """
    Starts and stops the dispatcher with the application.

    @ivar dispatcher: the running L{Dispatcher}, or L{None}.
    """

    log = Logger()
    name = "dispatcher"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.dispatcher: Optional[Dispatcher] = None

    def startService(self) -> None:
        service.Service.startService(self)
        config = self.config
        parent = self.parent
        assert parent is not None
        sip = parent.getServiceNamed("sip")
        secret = routeSecret(config)
        if not secret:
            self.log.warn(
                "[dispatcher] secret_file is not set: using a random secret, so the dialogs "
                "routed through this dispatcher will not survive its restart"
            )
            secret = os.urandom(32)
        dispatcher = Dispatcher(
            sip.core,
            config.dispatcherManagers,
            self.reactor,
            secret,
            policy=config.dispatcherPolicy,
            pingInterval=config.dispatcherPingInterval,
            deadAfter=config.dispatcherDeadAfter,
            addresses=sip.addresses,
        )
        dispatcher.install()
        dispatcher.start()
        self.dispatcher = dispatcher
        self.log.info(
            "Dispatcher ready: policy {policy}, managers {managers}",
            policy=config.dispatcherPolicy,
            managers=" ".join(str(spec) for spec in config.dispatcherManagers),
        )

    def reconfigure(self, config: Config) -> None:
        """
        Apply a new C{[dispatcher] managers} (SIGHUP, L{presence.reload}).
        """
        changed = config.dispatcherManagers != self.config.dispatcherManagers
        self.config = config
        if self.dispatcher is None or not changed:
            return
        added, removed = self.dispatcher.setManagers(config.dispatcherManagers)
        self.log.info(
            "Dispatcher managers now {managers} (added {added}, removed {removed})",
            managers=" ".join(str(spec) for spec in config.dispatcherManagers),
            added=" ".join(added) or "none",
            removed=" ".join(removed) or "none",
        )

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        return None
