"""
The SSH manhole: a Python prompt inside the running server, for operators.

It is off unless C{[manhole] enabled = yes}; it listens on loopback unless
C{listen} says otherwise; it takes public-key logins only, from the keys in
the C{authorized_keys} file (read at each login, so adding or removing a key
needs no restart; any user name is accepted, the key is what counts).  The
host key comes from the C{host_key} file, which must be readable by its
owner only (like OpenSSH, we refuse a private key others may read); when it
does not exist an Ed25519 key is generated into it with mode 0600.  Twisted's
own C{manhole_tap} generates one with the process umask (0755 and the like),
which is why we do not use it.

What a session sees is L{presence.admin.console.Console.namespace}:
C{stats()}, C{presentity(aor)}, C{presentities()},
C{subscriptions(watcher=, presentity=)}, C{terminate(subscriptions)},
C{refresh(aor)}, C{status()}, C{drain()}, C{resume()}, and C{root},
C{manager}, C{core}, C{store}.  Typed code runs on the reactor thread: it
sees a consistent state, but a slow statement stalls the whole server.

Besides the interactive prompt, an SSH exec request runs one statement
and ends (C{ssh -p 2222 admin@127.0.0.1 'stats()'}): what it prints, and
an expression's value (a Deferred's once it fires), go to standard
output, a traceback to standard error with exit status 1.  For scripts,
the control channel (C{presence-admin live}) gives JSON.

Only the configuration is pickled into a C{.tap} file; keys, the portal and
the listening port are built in L{ManholeService.startService}.
"""

from __future__ import annotations

import io
import os
import stat
import traceback
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import manhole
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.error import ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.ssh import keys
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.admin.console import Console
from presence.admin.listening import ListeningService, describe, isLoopback
from presence.config import Config, ConfigError
from presence.runtime import RuntimeService


class ManholeError(ConfigError):
    """
    The manhole cannot start; the message is one line for the operator.
    """


def _mode(st: os.stat_result) -> str:
    return "%04o" % (stat.S_IMODE(st.st_mode),)


def fingerprint(key: keys.Key) -> str:
    """
    A key's fingerprint as OpenSSH shows it (C{SHA256:...}).
    """
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def configProblem(config: Config) -> Optional[str]:
    """
    What is wrong with the manhole settings alone, in one line, or L{None}.
    """
    if config.manholeEnabled and not config.manholeAuthorizedKeys:
        return "[manhole] enabled = yes needs authorized_keys = FILE (there is no password login)"
    return None


def manholeProblem(config: Config) -> Optional[str]:
    """
    Why the manhole could not start with C{config}, in one line, or L{None}.

    Checked before the reactor runs (files only read, nothing generated),
    so a mistake stops C{twistd} with one plain line.
    """
    problem = configProblem(config)
    if problem is not None:
        return problem
    try:
        checkAuthorizedKeys(config.manholeAuthorizedKeys)
        if os.path.exists(config.manholeHostKey):
            readHostKey(config.manholeHostKey)
    except ManholeError as e:
        return str(e)
    return None


def checkAuthorizedKeys(path: str) -> int:
    """
    Check the authorized-keys file: it must be readable, and writable by
    its owner only (anyone who can add a line to it can log in).

    @return: how many keys it holds.
    @raise ManholeError: when it is unusable.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            count = len(list(readAuthorizedKeyFile(f)))
    except OSError as e:
        raise ManholeError(
            "[manhole] authorized_keys = %r: cannot read it: %s" % (path, e.strerror or e)
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ManholeError(
            "[manhole] authorized_keys = %r is writable by group or others (mode %s); "
            "chmod go-w it" % (path, _mode(st))
        )
    return count


def readHostKey(path: str) -> keys.Key:
    """
    Read the private host key at C{path}, refusing a file that group or
    others may read or write (mode 0600 or stricter is required).

    @raise ManholeError: when it is unusable.
    """
    try:
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ManholeError(
                "[manhole] host_key = %r has mode %s; it must be 0600 (chmod 600 it)"
                % (path, _mode(st))
            )
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManholeError("[manhole] host_key = %r: cannot read it: %s" % (path, e.strerror or e))
    try:
        key = keys.Key.fromString(data)
    except (keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise ManholeError("[manhole] host_key = %r is not a usable private key: %s" % (path, e))
    if key.isPublic():
        raise ManholeError("[manhole] host_key = %r holds a public key; it needs the private key" % (path,))
    return key


def loadHostKey(path: str) -> keys.Key:
    """
    The host key at C{path}; generate an Ed25519 key there first, with
    mode 0600, if there is no file.

    The file is created with C{O_EXCL} and mode 0600 from the start, so
    the key is never readable by others, not even for a moment, whatever
    the umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return readHostKey(path)
    except OSError as e:
        raise ManholeError("[manhole] host_key = %r: cannot create it: %s" % (path, e.strerror or e))
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(key.toString("openssh"))
    ManholeService.log.info(
        "Generated the manhole host key {path} ({fingerprint})", path=path, fingerprint=fingerprint(key)
    )
    return readHostKey(path)


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The public keys allowed to log in, from one C{authorized_keys} file
    (OpenSSH format), whatever the user name.

    The file is read at every login: logins are rare, the file is small,
    and a key removed from it stops working at once.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        try:
            with open(self.path, "rb") as f:
                return list(readAuthorizedKeyFile(f))
        except OSError as e:
            self.log.error(
                "Cannot read the manhole authorized keys {path}: {error}",
                path=self.path,
                error=e.strerror or str(e),
            )
            return []


@implementer(ICredentialsChecker)
class AuditingChecker:
    """
    Logs every manhole login and every refused key, with its fingerprint:
    admin access is worth an audit trail.
    """

    credentialInterfaces = (ISSHPrivateKey,)
    log = Logger()

    def __init__(self, checker: Any) -> None:
        self.checker = checker

    def requestAvatarId(self, credentials: Any) -> Deferred:
        try:
            keyName = fingerprint(keys.Key.fromString(credentials.blob))
        except Exception:
            keyName = "an unreadable key"
        user = credentials.username.decode("utf-8", "replace")

        def accepted(avatarId: Any) -> Any:
            self.log.info("Manhole login by {user} with {key}", user=user, key=keyName)
            return avatarId

        def refused(failure: Failure) -> Failure:
            # ValidPublicKey is the client asking whether a key would do,
            # before it signs: part of every login, not a refusal.
            if not failure.check(ValidPublicKey):
                self.log.warn("Manhole login refused: {user} with {key}", user=user, key=keyName)
            return failure

        return self.checker.requestAvatarId(credentials).addCallbacks(accepted, refused)


def execute(namespace: Dict[str, Any], source: str) -> Deferred:
    """
    Run C{source}, one expression or statements, in a copy of
    C{namespace}, on the reactor thread.

    @return: a Deferred firing with C{(output, errors, exit status)}:
        what C{print} wrote and the expression's C{repr} (once a Deferred
        it gave has fired), a traceback, 0 or 1.
    """
    out = io.StringIO()
    scope = dict(namespace)
    scope["print"] = partial(print, file=out)

    def run() -> Any:
        try:
            code = compile(source, "<ssh>", "eval")
        except SyntaxError:
            exec(compile(source, "<ssh>", "exec"), scope)
            return None
        return eval(code, scope)

    def shown(result: Any) -> Any:
        if result is not None:
            out.write(repr(result) + "\n")
        return (out.getvalue(), "", 0)

    def failed(failure: Failure) -> Any:
        text = "".join(traceback.format_exception(failure.type, failure.value, failure.getTracebackObject()))
        return (out.getvalue(), text, 1)

    return maybeDeferred(run).addCallbacks(shown, failed)


class ManholeSession(TerminalSession):
    """
    Twisted's terminal session, made to cope with ordinary clients: a
    client without a pty gets an 80x24 terminal instead of an error, a
    window resize is passed on, and end-of-file (the client closed its
    input) ends the session instead of raising C{NotImplementedError}.
    The session ends with exit status 0.

    An exec request (C{ssh host 'stats()'}) runs that one statement
    (L{execute}) in a fresh namespace and ends with its exit status.

    @ivar namespaceFactory: makes the namespace of one exec request.
    """

    width = 80
    height = 24
    _terminal: Any = None
    namespaceFactory: Callable[[], Dict[str, Any]] = dict

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        source = cmd.decode("utf-8", "replace")

        def done(result: Any) -> None:
            output, errors, status = result
            if output:
                proto.outReceived(output.encode("utf-8"))
            if errors:
                proto.errReceived(errors.encode("utf-8"))
            reason = ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status)
            proto.processEnded(Failure(reason))

        execute(self.namespaceFactory(), source).addCallback(done)

    def openShell(self, proto: Any) -> None:
        terminal = self._terminal = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )
        # ^D (or ^\) closes the terminal through this glue object; end the
        # session with exit status 0 instead of a bare close, so that
        # "ssh ... < script" exits 0.
        terminal.chainedProtocol.transport.loseConnection = self._ended

    def _ended(self) -> None:
        if self._terminal is not None:
            self._terminal.proto.processEnded(Failure(ProcessDone(0)))

    def windowChanged(self, newWindowSize: Any) -> None:
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None:
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        self._ended()


class ManholeRealm(TerminalRealm):
    """
    Gives each login a colouring Python prompt on a fresh namespace from
    the console (so one operator's variables never leak into another's
    session).
    """

    sessionFactory = ManholeSession

    def __init__(self, console: Console) -> None:
        TerminalRealm.__init__(self)
        self.console = console
        self.chainedProtocolFactory = self._terminalProtocol

    def _getAvatar(self, avatarId: Any) -> Any:
        user = TerminalRealm._getAvatar(self, avatarId)
        ISession(user.original).namespaceFactory = self.console.namespace
        return user

    def _terminalProtocol(self) -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, self.console.namespace())


class ManholeService(ListeningService):
    """
    The manhole in the service tree (name C{"manhole"}).  Put it after the
    services it shows; it finds them through its parent.

    @ivar address: the address it listens on, once started.
    """

    log = Logger()
    name = "manhole"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        """
        @raise ConfigError: when the settings alone are unusable.
        """
        problem = configProblem(config)
        if problem is not None:
            raise ConfigError(problem)
        self.config = config
        RuntimeService.__init__(self, reactor)

    def startService(self) -> None:
        """
        Check the files, load (or generate) the host key and listen.

        @raise ManholeError: when a file is unusable.
        @raise twisted.internet.error.CannotListenError: when the address
            is taken.
        """
        config = self.config
        problem = manholeProblem(config)
        if problem is not None:
            raise ManholeError(problem)
        hostKey = loadHostKey(config.manholeHostKey)
        assert self.parent is not None, "the manhole needs the service tree as its parent"
        console = Console(self.parent, self.reactor)
        checker = AuditingChecker(SSHPublicKeyChecker(AuthorizedKeysFile(config.manholeAuthorizedKeys)))
        factory = ConchFactory(Portal(ManholeRealm(console), [checker]))
        factory.noisy = False
        # Instance attributes: ConchFactory's are class-level dicts shared
        # by every factory in the process.
        factory.publicKeys = {hostKey.sshType(): hostKey.public()}
        factory.privateKeys = {hostKey.sshType(): hostKey}
        where = describe(self.listenOn(config.manholeListen, factory))
        self.log.info(
            "Manhole listening on {address} (host key {fingerprint})",
            address=where,
            fingerprint=fingerprint(hostKey),
        )
        if not isLoopback(self.address):
            self.log.warn(
                "The manhole listens on {address}, not on loopback only: anyone holding an "
                "authorized key can reach a Python prompt inside the server from the network",
                address=where,
            )


__all__: List[str] = [
    "AuditingChecker",
    "AuthorizedKeysFile",
    "ManholeError",
    "ManholeRealm",
    "ManholeService",
    "ManholeSession",
    "checkAuthorizedKeys",
    "configProblem",
    "execute",
    "fingerprint",
    "loadHostKey",
    "manholeProblem",
    "readHostKey",
]
