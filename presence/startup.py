"""
Start-up failures: one line naming the cause, then a non-zero exit.

A server that cannot bind its port, read its TLS key, open its log file or
reach its database must not keep running: under systemd a process that
lives on looks active while it serves nothing, and a traceback buries the
one line the operator needs.  So every failure of the start-up takes one
path.  A service either raises from C{startService} (a port taken, a file
missing: the root catches it) or, for what fails later on the reactor (the
database, a PB listener), calls L{failStartup}.  The root of the tree
(L{presence.root.PresenceService}) logs the first cause as one critical
line, stops the reactor, which stops the services that did start, and
makes the process exit with status 1 (L{exitStatusAtExit}).

Only causes an operator can fix are reduced to one line; an exception that
means a bug in this program (L{isBug}) keeps its traceback after it.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Optional

from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure


class StartupError(Exception):
    """
    A start-up failure whose message is one line for the operator, saying
    which part failed and why.
    """


#: Exceptions that mean a mistake in this program rather than in its
#: configuration or its surroundings: their traceback is logged too.
_BUGS = (AttributeError, TypeError, NameError, KeyError, IndexError, AssertionError, ZeroDivisionError)


def isBug(error: BaseException) -> bool:
    """
    Whether C{error} is a programming error, worth its traceback.
    """
    return isinstance(error, _BUGS)


def describe(error: Any) -> str:
    """
    C{error} (an exception or a L{Failure}) as one line naming the cause.

    Our own errors already carry such a line; the others are those a
    listener, a file or a database raise.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or firstLine(reason)
        return "cannot listen on %s:%s: %s" % (error.interface or "*", error.port, text.lower())
    if isinstance(error, OSError) and error.filename is not None:
        return "cannot open %s: %s" % (error.filename, error.strerror or firstLine(error))
    from OpenSSL import SSL, crypto

    if isinstance(error, (SSL.Error, crypto.Error)):
        # OpenSSL's errors are lists of (library, function, reason).
        queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
        reasons = [str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry[-1]]
        return "TLS: %s" % ("; ".join(reasons) or firstLine(error),)
    orig = getattr(error, "orig", None)
    if orig is not None:
        # SQLAlchemy wraps the driver's exception; its own text adds SQL
        # and a documentation link.
        return firstLine(orig)
    return firstLine(error)


def firstLine(error: object) -> str:
    """
    The first line of C{error}'s text, spaces folded; its type's name
    when it has none.
    """
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__


def _owner(service: Any) -> Any:
    """
    The nearest ancestor of C{service} that ends start-up
    (C{abortStartup}), or L{None}.  Under twistd it is not the top of the
    tree: that is the application's own C{MultiService}.
    """
    while service is not None:
        if hasattr(service, "abortStartup"):
            return service
        service = getattr(service, "parent", None)
    return None


def failStartup(service: Any, what: str, error: Any) -> None:
    """
    Report that C{service} could not start, after the reactor runs: the
    root of its tree ends the process (see the module docstring).

    @param what: the part that failed, as the operator knows it
        (C{"the database"}, C{"cluster listener"}).
    @param error: the exception, L{Failure} or message.
    """
    owner = _owner(service)
    if owner is None:
        # A service run without our root (a test's bare tree): nothing
        # owns the process, so only say it.
        from twisted.logger import Logger

        Logger(namespace="presence.startup").critical(
            "Cannot start: {what}: {reason}", what=what, reason=error if isinstance(error, str) else describe(error)
        )
        return
    owner.abortStartup(what, error)


_exitStatus: Optional[int] = None


def exitStatusAtExit(status: int) -> None:
    """
    Make this process exit with C{status} once twistd is done.

    twistd returns normally after the reactor stops (removing its pid
    file and logging C{Server Shut Down.}), so the interpreter would exit
    0.  At interpreter exit, after every thread has ended, this flushes
    the standard streams and ends the process with C{status} instead.
    """
    global _exitStatus
    if _exitStatus is None:
        atexit.register(_exitNow)
    _exitStatus = status


def _exitNow() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if _exitStatus is not None:
        os._exit(_exitStatus)
