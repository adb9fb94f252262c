"""
The control channel: a UNIX socket in every server process over which
C{presence-admin live ...} reads the live state and acts on it, as
C{kamcmd} does for Kamailio.

Why a socket per process, not one node aggregating over the cluster's PB
links: a dispatcher and a billing node have no cluster link; the moment
an operator most needs to look at a manager is when its links are down;
and admin commands on the PB links would give every cluster peer the
power to terminate subscriptions anywhere.  So each process answers for
itself (a manager also reports its view of the cluster: its links and
every manager's lease in the database), and the CLI asks as many
processes as it is given sockets, merging their answers.

Who may connect: the socket is created with mode 0600 (its owner only),
and each connection's peer credentials (C{SO_PEERCRED}, Linux) must name
the server's own user or root, so a socket left readable by a umask race
or a lax directory still lets no one else in.

The protocol, line by line in UTF-8 JSON, so that C{socat} or a script
can speak it too::

    > {"id": 1, "command": "subscriptions", "args": {"watcher": "sip:alice@example.test"}}
    < {"id": 1, "ok": true, "node": "m1", "result": [...]}
    < {"id": 2, "ok": false, "node": "m1", "error": {"code": "not-found", "message": "..."}}

Error codes: C{usage} (a bad command or argument), C{not-found},
C{not-running} (the part of the server the command needs is not running
here, or not yet), C{failed}.  Requests on one connection may be
answered out of order (a drain takes a while): match them by C{id}.

Every command runs on the reactor thread through
L{presence.admin.console.Console}, the one place the admin tools read the
manager; listings are paged (C{after}, C{limit}, at most L{MAX_LIMIT} per
page), so no answer holds the reactor for long.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
from typing import Any, Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from presence.admin.console import REASONS, Console, NotRunning
from presence.admin.listening import Listener
from presence.config import Config, ConfigError
from presence.runtime import RuntimeService

#: Most items one page of a listing may hold.
MAX_LIMIT = 5000

#: Requests one connection may have waiting for their answers.
MAX_PENDING = 16

#: The longest request line taken.
MAX_REQUEST = 64 * 1024


class ControlError(ConfigError):
    """
    The control channel cannot start; the message is one line.
    """


class CommandError(Exception):
    """
    A command refused with an error code of the protocol.
    """

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code


def _string(args: Dict[str, Any], name: str, required: bool = False) -> Optional[str]:
    value = args.get(name)
    if value is None:
        if required:
            raise CommandError("usage", "%s is required" % (name,))
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise CommandError("usage", "%s must be a non-empty string" % (name,))
    return value


def _limit(args: Dict[str, Any]) -> int:
    value = args.get("limit", 500)
    if type(value) is not int or not 0 < value <= MAX_LIMIT:
        raise CommandError("usage", "limit must be a whole number from 1 to %d" % (MAX_LIMIT,))
    return value


def _seconds(args: Dict[str, Any], name: str, default: float) -> float:
    value = args.get(name, default)
    if type(value) not in (int, float) or not 0 <= value <= 3600:
        raise CommandError("usage", "%s must be a number of seconds from 0 to 3600" % (name,))
    return float(value)


class Commands:
    """
    The commands of the channel, each a method C{command_NAME(args)}
    returning plain data or a Deferred of it, over one L{Console}.
    """

    def __init__(self, console: Console, node: str, role: str) -> None:
        self.console = console
        self.node = node
        self.role = role

    def names(self) -> List[str]:
        return sorted(name[len("command_") :] for name in dir(self) if name.startswith("command_"))

    def run(self, name: Any, args: Any) -> Deferred:
        """
        Run command C{name} with C{args} (a JSON object).

        @return: a Deferred firing with its result, or failing with a
            L{CommandError} (or whatever else went wrong).
        """
        method: Optional[Callable[[Dict[str, Any]], Any]] = None
        if isinstance(name, str) and name.isidentifier():
            method = getattr(self, "command_" + name, None)
        if method is None:
            return maybeDeferred(_raise, CommandError("usage", "unknown command %r" % (name,)))
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return maybeDeferred(_raise, CommandError("usage", "args must be an object"))
        return maybeDeferred(method, args)

    def command_hello(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """
        Who answers: node name, role, the commands it knows.
        """
        return {"node": self.node, "role": self.role, "commands": self.names()}

    def command_stats(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self.console.stats()

    def command_status(self, args: Dict[str, Any]) -> Deferred:
        return self.console.status()

    def command_presentities(self, args: Dict[str, Any]) -> List[Dict[str, Any]]:
        return self.console.presentities(_string(args, "after"), _limit(args))

    def command_presentity(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self.console.presentity(_string(args, "aor", required=True) or "")

    def command_subscriptions(self, args: Dict[str, Any]) -> List[Dict[str, Any]]:
        after = args.get("after")
        if after is not None and not (
            isinstance(after, list) and len(after) == 3 and all(isinstance(part, str) for part in after)
        ):
            raise CommandError("usage", "after must be [presentity, watcher, id] of the last one seen")
        return self.console.subscriptions(
            watcher=_string(args, "watcher"),
            presentity=_string(args, "presentity"),
            after=after,
            limit=_limit(args),
        )

    @inlineCallbacks
    def command_terminate(self, args: Dict[str, Any]) -> Any:
        """
        End the subscriptions named by C{ids}, or all of C{watcher}'s, or
        all to C{presentity} (both: those of the watcher to the
        presentity).  Ids this process does not hold are reported, not an
        error: with several processes, each holds only its own.
        """
        reason = args.get("reason", "deactivated")
        if reason not in REASONS:
            raise CommandError("usage", "reason must be one of %s" % (", ".join(sorted(REASONS)),))
        ids = args.get("ids")
        watcher = _string(args, "watcher")
        presentity = _string(args, "presentity")
        console = self.console
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_LIMIT:
                raise CommandError("usage", "ids must be a list of at most %d strings" % (MAX_LIMIT,))
            if watcher is not None or presentity is not None:
                raise CommandError("usage", "give ids, or watcher and/or presentity, not both")
            chosen: List[Any] = console.held(ids)
            missing = [i for i in dict.fromkeys(ids) if i not in chosen]
        elif watcher is None and presentity is None:
            raise CommandError("usage", "give ids, a watcher or a presentity")
        else:
            chosen = console.subscriptions(watcher=watcher, presentity=presentity)
            missing = []
        count = yield console.terminate(chosen, reason)
        return {"terminated": count, "notFound": missing, "reason": reason}

    def command_refresh(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self.console.refresh(_string(args, "aor", required=True) or "")

    def command_drain(self, args: Dict[str, Any]) -> Deferred:
        return self.console.drain(_seconds(args, "grace", 2.0))

    def command_cleanup(self, args: Dict[str, Any]) -> Deferred:
        return self.console.cleanup(_seconds(args, "olderThan", 60.0))

    def command_resume(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self.console.resume()


def _raise(error: Exception) -> None:
    raise error


def peerUid(transport: Any) -> Optional[int]:
    """
    The user id of the process at the other end of a UNIX connection, or
    L{None} where the platform cannot tell (no C{SO_PEERCRED}).
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    handle = transport.getHandle()
    raw = handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


class ControlProtocol(LineReceiver):
    """
    One client connection: JSON requests in, JSON answers out.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    log = Logger()

    def __init__(
        self,
        commands: Commands,
        allowed: Callable[[Optional[int]], bool],
        credentials: Callable[[Any], Optional[int]] = peerUid,
    ) -> None:
        """
        @param allowed: whether a peer of this user id may use the channel.
        @param credentials: the user id of a connection's peer.
        """
        self.commands = commands
        self.allowed = allowed
        self.credentials = credentials
        self.pending = 0
        self.gone = False

    def connectionMade(self) -> None:
        uid = self.credentials(self.transport)
        if not self.allowed(uid):
            self.log.warn("Control connection refused: user id {uid}", uid=uid)
            self._answer(None, error=("usage", "not allowed: user id %s" % (uid,)))
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer(None, error=("usage", "request longer than %d bytes" % (self.MAX_LENGTH,)))
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._answer(None, error=("usage", "not JSON: %s" % (e,)))
            return
        if not isinstance(request, dict):
            self._answer(None, error=("usage", "a request is a JSON object"))
            return
        ident = request.get("id")
        if self.pending >= MAX_PENDING:
            self._answer(ident, error=("usage", "more than %d requests waiting" % (MAX_PENDING,)))
            return
        self.pending += 1
        d = self.commands.run(request.get("command"), request.get("args"))
        d.addCallbacks(self._succeeded, self._failed, (ident,), None, (ident, request.get("command")))

    def _succeeded(self, result: Any, ident: Any) -> None:
        self.pending -= 1
        self._answer(ident, result=result)

    def _failed(self, failure: Failure, ident: Any, command: Any) -> None:
        self.pending -= 1
        error = failure.value
        if isinstance(error, CommandError):
            self._answer(ident, error=(error.code, str(error)))
        elif isinstance(error, NotRunning):
            self._answer(ident, error=("not-running", str(error)))
        elif isinstance(error, KeyError):
            self._answer(ident, error=("not-found", str(error.args[0]) if error.args else "not found"))
        elif isinstance(error, (ValueError, TypeError)):
            self._answer(ident, error=("usage", str(error)))
        else:
            self.log.failure("Control command {command} failed", failure, command=command)
            self._answer(ident, error=("failed", failure.getErrorMessage()))

    def _answer(self, ident: Any, result: Any = None, error: Any = None) -> None:
        if self.gone:
            return
        answer: Dict[str, Any] = {"id": ident, "ok": error is None, "node": self.commands.node}
        if error is None:
            answer["result"] = result
        else:
            answer["error"] = {"code": error[0], "message": error[1]}
        self.transport.write(json.dumps(answer, separators=(",", ":"), default=str).encode("utf-8") + b"\n")


class ControlFactory(Factory):
    """
    Makes a L{ControlProtocol} per connection, all over one L{Commands}.
    """

    noisy = False

    def __init__(self, commands: Commands, allowed: Callable[[Optional[int]], bool]) -> None:
        self.commands = commands
        self.allowed = allowed

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        p = ControlProtocol(self.commands, self.allowed)
        p.factory = self
        return p


def ownerOrRoot(uid: Optional[int]) -> bool:
    """
    Whether a peer with user id C{uid} may use the channel: our own user
    or root.  L{None} (the platform does not say) leaves it to the
    socket's mode.
    """
    return uid is None or uid in (0, os.geteuid())


def clearStaleSocket(path: str) -> None:
    """
    Remove a socket file a dead server left at C{path}; refuse to touch one
    a live process listens on, or a file that is no socket.

    @raise ControlError: when C{path} cannot be used.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlError("[control] socket = %r: %s" % (path, e.strerror or e))
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError("[control] socket = %r exists and is not a socket" % (path,))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlError("[control] socket = %r: %s" % (path, e.strerror or e))
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ControlError("[control] socket = %r is in use by another running process" % (path,))


def controlProblem(config: Config) -> Optional[str]:
    """
    Why the control channel could not start with C{config}, in one line,
    or L{None}; checked before the reactor runs and by C{checkconfig}
    (L{presence.preflight}), reading only.
    """
    path = config.controlSocket
    if not path:
        return None
    if len(os.fsencode(path)) > 100:
        return "[control] socket = %r: a UNIX socket path must be under 100 bytes" % (path,)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return "[control] socket = %r: folder %s does not exist" % (path, folder)
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        return "[control] socket = %r exists and is not a socket" % (path,)
    return None


def _escape(path: str) -> str:
    """
    C{path} quoted for a Twisted endpoint description.
    """
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class ControlService(RuntimeService):
    """
    The control channel in the service tree (name C{"control"}); put it
    after the services it shows.

    @ivar address: the socket path, once listening.
    """

    log = Logger()
    name = "control"

    def __init__(self, config: Config, role: str, reactor: Optional[Any] = None) -> None:
        self.config = config
        self.role = role
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self._listener: Optional[Listener] = None
        self.address: Optional[str] = None

    def node(self) -> str:
        """
        The name this process answers with: the manager's node name, or
        the role of a process without a manager.
        """
        return self.config.node if self.role in ("all", "manager") else self.role

    def startService(self) -> None:
        """
        Listen on the socket, mode 0600.

        @raise ControlError: when the path is unusable or in use.
        """
        path = self.config.controlSocket
        problem = controlProblem(self.config)
        if problem is not None:
            raise ControlError(problem)
        clearStaleSocket(path)
        assert self.parent is not None, "the control channel needs the service tree as its parent"
        commands = Commands(Console(self.parent, self.reactor), self.node(), self.role)
        listener = Listener(self.reactor, "unix:%s:mode=600:lockfile=0" % (_escape(path),), ControlFactory(commands, ownerOrRoot))
        listener.listen()
        # listenUNIX chmods after bind; make sure, whatever the platform.
        os.chmod(path, 0o600)
        self._listener = listener
        self.address = path
        service.Service.startService(self)
        self.log.info("Control channel listening on {path}", path=path)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        listener, self._listener = self._listener, None
        self.address = None
        # Closing the port removes the socket file.
        return None if listener is None else listener.stop()
