"""
The Perspective Broker transport between the managers of a cluster.

Each manager listens (C{[cluster] listen}) and keeps one outgoing link to
every peer (C{[cluster] peers}), so each direction of a pair has its own
connection: a manager sends its updates and pulls its resync pages over
its own link, and serves its peers' calls on its listener.

Authentication: a manager logs in to a peer as its node name, with that
node's shared secret; every manager reads all the secrets from the same
mode-0600 file (L{loadSecrets}).  PB's login is a challenge-response over
the secret (PB cannot check hashed passwords, hence shared secrets), so
the secret itself never crosses the wire; in production the endpoints
are TLS (C{ssl:} to listen, C{tls:} to connect), which also hides what
the managers tell each other.

A peer over PB provides L{IPeer} through L{RemotePeer}, exactly like the
local node (L{presence.cluster.group.LocalPeer}) that the PB avatar
delegates to: remote looks like local.

Links are not a L{ClientService}: its C{prepareConnection} hook (where a
login would go) has no transition for a connection that closes before
the hook's Deferred fires, and a login is a round trip during which a
peer may die.  L{PeerLink} is the small reconnect loop we need instead.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Dict, List, Optional, Set

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from presence.cluster.group import LocalPeer, PeerGroup
from presence.cluster.messages import checkUpdates
from presence.interfaces import IPeer

MIN_SECRET = 16

_LINE = re.compile(rb"([A-Za-z0-9_.-]{1,32})\s*(?:=\s*|\s+)(\S.*)\Z").match


class SecretError(ValueError):
    """
    The cluster's secret file cannot be used; the message is one line.
    """


def loadSecrets(path: str) -> Dict[str, bytes]:
    """
    Read the cluster's shared secrets: one line per manager, C{NAME SECRET}
    (or C{NAME = SECRET}); blank lines and lines starting with C{#} are
    ignored.  The same file goes on every manager.

    @raise SecretError: the file is unreadable, open to group or others,
        malformed, names a manager twice, or holds a secret shorter than
        16 bytes.
    """
    where = "[cluster] secret_file = %r" % (path,)
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise SecretError("%s: cannot read it: %s" % (where, e.strerror or e))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            "%s is accessible to group or others (mode %o); chmod 600 it" % (where, stat.S_IMODE(mode))
        )
    secrets: Dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        match = _LINE(line)
        if match is None:
            raise SecretError("%s line %d: expected NAME SECRET" % (where, number))
        text_name, secret = match.group(1).decode("ascii"), match.group(2).strip()
        if text_name in secrets:
            raise SecretError("%s line %d: %s is named twice" % (where, number, text_name))
        if len(secret) < MIN_SECRET:
            raise SecretError(
                "%s line %d: the secret of %s must be at least %d bytes" % (where, number, text_name, MIN_SECRET)
            )
        secrets[text_name] = secret
    return secrets


def noDelay(broker: pb.Broker) -> None:
    """
    Turn Nagle's algorithm off on a PB connection: updates are small
    writes that must go at once, and Nagle holding one back until the
    peer's delayed ACK adds 40 ms to every replicated publication.
    """
    transport = broker.transport
    while transport is not None and not hasattr(transport, "setTcpNoDelay"):
        # A TLS connection: the TCP transport is underneath.
        transport = getattr(transport, "transport", None)
    if transport is not None:
        try:
            transport.setTcpNoDelay(True)
        except Exception:
            pass


@implementer(ICredentialsChecker)
class SharedSecretChecker:
    """
    Checks a PB login against the shared secrets of the peers (never our
    own node's: nobody logs in as us).
    """

    credentialInterfaces = (IUsernameHashedPassword,)

    def __init__(self, secrets: Dict[str, bytes]) -> None:
        self.secrets = dict(secrets)

    def requestAvatarId(self, credentials: Any) -> Deferred:
        username = credentials.username
        if isinstance(username, bytes):
            try:
                username = username.decode("ascii")
            except UnicodeDecodeError:
                return fail(UnauthorizedLogin())
        secret = self.secrets.get(username) if isinstance(username, str) else None
        if secret is None:
            return fail(UnauthorizedLogin())
        d = maybeDeferred(credentials.checkPassword, secret)

        def checked(ok: bool) -> Any:
            if ok:
                return username
            raise UnauthorizedLogin()

        return d.addCallback(checked)


class PeerAvatar(pb.Avatar):
    """
    What a logged-in peer may call: the L{IPeer} methods of this node,
    with the caller known from its login.
    """

    log = Logger()

    def __init__(self, group: PeerGroup, name: str) -> None:
        self.name = name
        self.local = LocalPeer(group, name)

    def _checked(self, call: Any) -> Deferred:
        """
        Run C{call}; a refusal (C{ValueError}) goes back to the peer as a
        PB error, without a traceback in our log.
        """

        def refused(failure: Failure) -> Failure:
            failure.trap(ValueError)
            self.log.warn("Refused a call from {peer}: {error}", peer=self.name, error=failure.getErrorMessage())
            raise pb.Error(failure.getErrorMessage())

        return maybeDeferred(call).addErrback(refused)

    def perspective_updates(self, updates: Any) -> Deferred:
        return self._checked(lambda: self.local.applyUpdates(updates))

    def perspective_page(self, offset: Any, limit: Any) -> Deferred:
        return self._checked(lambda: self.local.page(offset, limit)).addCallback(lambda result: list(result))

    def perspective_adopted(self, formerOwner: Any, owner: Any) -> Deferred:
        return self._checked(lambda: self.local.adopted(formerOwner, owner))

    def perspective_handOver(self, subscriptionId: Any) -> Deferred:
        return self._checked(lambda: self.local.handOver(subscriptionId))

    def perspective_takeOver(self, items: Any) -> Deferred:
        return self._checked(lambda: self.local.takeOver(items))

    def perspective_ping(self) -> bool:
        return True


@implementer(IRealm)
class ClusterRealm:
    """
    Gives each peer that logs in its L{PeerAvatar}, and has the group pull
    the peer's state: it may have changed while we could not hear it.
    """

    def __init__(self, group: PeerGroup) -> None:
        self.group = group

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only PB perspectives")
        avatar = PeerAvatar(self.group, avatarId)
        self.group.peerLoggedIn(avatarId)
        return pb.IPerspective, avatar, lambda: None


class ClusterServerFactory(pb.PBServerFactory):
    """
    The PB listener of a manager; it remembers its connections so that
    stopping closes them.
    """

    noisy = False

    def __init__(self, group: PeerGroup, secrets: Dict[str, bytes]) -> None:
        peers = {name: secret for name, secret in secrets.items() if name != group.node}
        pb.PBServerFactory.__init__(self, Portal(ClusterRealm(group), [SharedSecretChecker(peers)]))
        self.brokers: Set[pb.Broker] = set()

    def buildProtocol(self, addr: Any) -> pb.Broker:
        broker = pb.PBServerFactory.buildProtocol(self, addr)
        self.brokers.add(broker)
        broker.notifyOnConnect(lambda: noDelay(broker))
        broker.notifyOnDisconnect(lambda: self.brokers.discard(broker))
        return broker

    def closeAll(self) -> None:
        for broker in list(self.brokers):
            if broker.transport is not None:
                broker.transport.loseConnection()


@implementer(IPeer)
class RemotePeer:
    """
    A peer over PB, as an L{IPeer}: every call a C{callRemote} on its
    avatar, every answer checked as if it came from a stranger.
    """

    def __init__(self, name: str, avatar: Any) -> None:
        self.name = name
        self.avatar = avatar

    def _call(self, method: str, *args: Any) -> Deferred:
        # callRemote raises at once on a broker that has just closed.
        return maybeDeferred(self.avatar.callRemote, method, *args)

    def applyUpdates(self, updates: Any) -> Deferred:
        return self._call("updates", updates)

    def page(self, offset: int, limit: int) -> Deferred:
        def checked(result: Any) -> Any:
            if not isinstance(result, (list, tuple)) or len(result) != 2 or type(result[1]) is not int:
                raise ValueError("malformed page from %s" % (self.name,))
            return checkUpdates(result[0]), result[1]

        return self._call("page", offset, limit).addCallback(checked)

    def adopted(self, formerOwner: str, owner: str) -> Deferred:
        return self._call("adopted", formerOwner, owner)

    def handOver(self, subscriptionId: str) -> Deferred:
        return self._call("handOver", subscriptionId).addCallback(lambda ok: ok is True)

    def takeOver(self, items: Any) -> Deferred:
        return self._call("takeOver", items).addCallback(lambda count: count if type(count) is int else 0)

    def ping(self) -> Deferred:
        return self._call("ping")


class _LinkFactory(pb.PBClientFactory):
    """
    One connection attempt: fires L{root} once PB is ready to log in.
    """

    noisy = False

    def __init__(self) -> None:
        pb.PBClientFactory.__init__(self)
        self.root: Deferred = Deferred()

    def clientConnectionMade(self, broker: pb.Broker) -> None:
        if not self.root.called:
            self.root.callback(broker.remoteForName("root"))


class PeerLink:
    """
    Keeps this manager logged in to one peer: connect, log in, report the
    peer up to the group, ping it, and on any loss report it down and
    connect again every C{retryDelay} seconds.

    @ivar peer: the L{RemotePeer} while logged in, else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        group: PeerGroup,
        name: str,
        endpoint: str,
        secret: bytes,
        reactor: Any,
        retryDelay: float = 1.0,
        pingInterval: float = 2.0,
        loginTimeout: float = 10.0,
    ) -> None:
        """
        @param name: the peer's node name.
        @param endpoint: a Twisted client endpoint description
            (C{tcp:HOST:PORT}, C{tls:HOST:PORT:...}).
        @param secret: our own node's shared secret, to log in with.
        """
        self.group = group
        self.name = name
        self.endpoint = endpoint
        self.secret = secret
        self.reactor = reactor
        self.retryDelay = retryDelay
        self.pingInterval = pingInterval
        self.loginTimeout = loginTimeout
        self.peer: Optional[RemotePeer] = None
        self.running = False
        self._broker: Optional[pb.Broker] = None
        self._attempt: Optional[Deferred] = None
        self._login: Optional[Deferred] = None
        self._retry: Any = None
        self._pingCall: Any = None
        self._ping: Optional[Deferred] = None
        self._stopped: List[Deferred] = []

    def start(self) -> None:
        self.running = True
        self._connect()

    def stop(self) -> Deferred:
        """
        Stop reconnecting and close the connection.

        @return: a Deferred firing once it is closed.
        """
        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        self._stopPinging()
        broker = self._broker
        if broker is None or broker.transport is None:
            if self._login is not None:
                self._login.cancel()
            d: Deferred = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._stopped.append(d)
        broker.transport.loseConnection()
        return d

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        factory = _LinkFactory()
        attempt = clientFromString(self.reactor, self.endpoint).connect(factory)
        attempt.addTimeout(self.loginTimeout, self.reactor)
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._failed, (factory,))

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        self.log.debug("Cluster peer {peer} unreachable: {error}", peer=self.name, error=failure.getErrorMessage())
        self._again()

    def _again(self) -> None:
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(self.retryDelay, self._connect)

    def _connected(self, broker: pb.Broker, factory: _LinkFactory) -> None:
        self._attempt = None
        if not self.running:
            broker.transport.loseConnection()
            return
        self._broker = broker
        noDelay(broker)
        broker.notifyOnDisconnect(lambda: self._disconnected(broker))
        login = factory.root
        login.addCallback(lambda root: root.callRemote("login", self.group.node.encode("ascii")))
        login.addCallback(self._respond)
        login.addTimeout(self.loginTimeout, self.reactor)
        self._login = login
        login.addCallbacks(self._loggedIn, self._loginFailed, (broker,), None, (broker,))

    def _respond(self, challenge: Any) -> Deferred:
        challenge, challenger = challenge
        return challenger.callRemote("respond", pb.respond(challenge, self.secret), None)

    def _loginFailed(self, failure: Failure, broker: pb.Broker) -> None:
        self._login = None
        if broker is not self._broker:
            return
        self.log.warn("Cannot log in to cluster peer {peer}: {error}", peer=self.name, error=failure.getErrorMessage())
        broker.transport.loseConnection()

    def _loggedIn(self, avatar: Any, broker: pb.Broker) -> None:
        self._login = None
        if broker is not self._broker or broker.disconnected:
            return
        self.peer = RemotePeer(self.name, avatar)
        self.group.peerUp(self.name, self.peer)
        self._schedulePing()

    def _disconnected(self, broker: pb.Broker) -> None:
        if broker is not self._broker:
            return
        self._broker = None
        if self._login is not None:
            self._login.cancel()
        self._stopPinging()
        peer, self.peer = self.peer, None
        if peer is not None:
            self.group.peerDown(self.name)
        waiters, self._stopped = self._stopped, []
        for waiter in waiters:
            waiter.callback(None)
        self._again()

    # Liveness: a peer whose host vanished leaves no FIN behind.

    def _schedulePing(self) -> None:
        self._pingCall = self.reactor.callLater(self.pingInterval, self._sendPing)

    def _sendPing(self) -> None:
        self._pingCall = None
        peer, broker = self.peer, self._broker
        if peer is None or broker is None:
            return
        ping = peer.ping()
        ping.addTimeout(self.pingInterval * 3, self.reactor)
        self._ping = ping

        def answered(_: Any) -> None:
            self._ping = None
            if self.peer is peer:
                self._schedulePing()

        def silent(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            self._ping = None
            if self.peer is peer and broker.transport is not None:
                self.log.warn(
                    "Cluster peer {peer} did not answer a ping: {error}",
                    peer=self.name, error=failure.getErrorMessage(),
                )
                broker.transport.abortConnection()

        ping.addCallbacks(answered, silent)

    def _stopPinging(self) -> None:
        if self._pingCall is not None and self._pingCall.active():
            self._pingCall.cancel()
        self._pingCall = None
        if self._ping is not None:
            ping, self._ping = self._ping, None
            ping.cancel()
