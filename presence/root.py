"""
The root of the service tree: it orders start-up and shutdown, ends the
process when start-up fails, and reloads on SIGHUP (L{presence.reload}).

C{MultiService} starts every child and lets an exception escape half-way,
leaving the process running with what did start (a thread pool keeps it
alive).  The root instead turns the first failure into one line and a
non-zero exit (L{presence.startup}), stopping only the children that
started.

C{MultiService} also stops every child at once.  A presence server must
instead stop taking requests, let the requests whose writes are queued
commit and be answered over the sockets that are still open, flush the
store, and only then close the sockets: an operator's SIGTERM then loses
nothing and leaves every subscription stored, not terminated, for the next
start.
"""

from __future__ import annotations

import signal
from typing import Any, Dict, Generator, Optional

from twisted.application import service
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from presence.config import Config
from presence.reload import reloadTree
from presence.startup import StartupError, describe, exitStatusAtExit, isBug


class PresenceService(service.MultiService):
    """
    Starts children in order; stops them as described above.

    @ivar exitStatus: L{None} while start-up has not failed; then 1.
    @ivar config: the configuration in force.
    @ivar configPath: the file SIGHUP reads again.
    @ivar overrides: the settings the command line gave, which win over
        the file.
    @ivar role: what this process runs (C{--role}).
    """

    log = Logger()
    _reactor: Any = None
    exitStatus: Optional[int] = None

    def __init__(
        self,
        reactor: Optional[Any] = None,
        config: Optional[Config] = None,
        configPath: Optional[str] = None,
        configGiven: bool = False,
        overrides: Optional[Dict[str, Any]] = None,
        role: str = "all",
    ) -> None:
        """
        @param reactor: the reactor whose stop ends the process (tests give
            a fake one); L{None} for the global reactor, and then a failed
            start-up sets the process's exit status too, and SIGHUP
            reloads.
        @param configGiven: whether C{configPath} was named (a default path
            that does not exist means the built-in defaults).
        """
        service.MultiService.__init__(self)
        self._reactor = reactor
        self.config = config or Config()
        self.configPath = configPath
        self.configGiven = configGiven
        self.overrides = dict(overrides or {})
        self.role = role

    def __getstate__(self) -> Any:
        state = service.MultiService.__getstate__(self)
        state.pop("_reactor", None)
        state.pop("exitStatus", None)
        return state

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    def startService(self) -> None:
        """
        Start each child in order; the first that raises ends start-up.
        """
        service.Service.startService(self)
        if self._reactor is None and hasattr(signal, "SIGHUP"):
            try:
                signal.signal(signal.SIGHUP, self._hangup)
            except ValueError:
                # Not the main thread (a test's reactor thread): no signals.
                pass
        for child in self:
            try:
                child.startService()
            except Exception as e:
                self.abortStartup(child.name or type(child).__name__, e)
                return

    def _hangup(self, signum: int, frame: Any) -> None:
        """
        The SIGHUP handler: Python runs it between two bytecodes of the
        main thread, so the work goes to the reactor's next turn.
        """
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        Reopen the log files and apply the live changes of the
        configuration file (L{presence.reload}).
        """
        reloadTree(self)

    def abortStartup(self, what: str, error: Any) -> None:
        """
        Start-up failed: log why in one line, stop the reactor (at once, or
        as soon as it runs) and exit with status 1.  Only the first cause
        is reported: what fails after it fails because of it; and nothing
        once the tree is stopping.

        @param what: the part that failed.
        @param error: an exception, a L{Failure} or a one-line message.
        """
        if self.exitStatus is not None or not self.running:
            # Reported already, or a consequence of a shutdown under way.
            return
        self.exitStatus = 1
        value = getattr(error, "value", error)
        reason = error if isinstance(error, str) else describe(error)
        if not isinstance(value, StartupError):
            # A StartupError names its part itself.
            reason = "%s: %s" % (what, reason)
        self.log.critical("Cannot start: {reason}", reason=reason)
        if isinstance(value, BaseException) and isBug(value):
            from twisted.python.failure import Failure

            failure = error if isinstance(error, Failure) else Failure(value, type(value), value.__traceback__)
            self.log.failure("The start-up failure above is a bug; its traceback:", failure)
        if self._reactor is None:
            exitStatusAtExit(1)
        self.reactor.callWhenRunning(self._stopReactor)

    def _stopReactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    @inlineCallbacks
    def stopService(self) -> Generator[Any, Any, None]:
        service.Service.stopService(self)
        # Only what started: after a failed start-up the later children
        # never did.
        started = [child for child in self if child.running]
        names = {child.name: child for child in started}
        sip = names.get("sip")
        store = names.get("store")
        if sip is not None:
            sip.pause()
        others = [child for child in reversed(started) if child not in (sip, store)]
        yield gatherResults([maybeDeferred(child.stopService) for child in others])
        if store is not None:
            yield maybeDeferred(store.stopService)
        if sip is not None:
            yield maybeDeferred(sip.stopService)
