"""
Billing over Perspective Broker: one billing node shared by a cluster of
subscription managers.

Why: with the embedded authorizer every manager reads accounts and watch
rules from the database itself and polls its change log.  A separate
C{twistd presence --role=billing} process does that once for everyone;
each manager logs in to it and asks it over PB, through a
L{RemoteAuthorizer} that provides the same L{IAuthorizer} as the embedded
one ("remote looks like local"), so the manager does not know which it
has.

The protocol, one PB perspective per manager node:

  - login with C{twisted.cred}: the node name as user name and the
    cluster's shared secret (C{[billing] peer_secret_file}) as password,
    checked by PB's challenge-response; PB cannot use hashed-password
    checkers, hence L{SharedSecretChecker};
  - C{perspective_account(aor)} -> a L{CopyableAccount} (arriving as a
    L{RemoteAccountCopy} carrying an L{AccountInfo}) or L{None};
  - C{perspective_watchDecision(watcher, presentity)} -> C{"allow"},
    C{"ask"} or C{"block"};
  - the node calls C{remote_changed(aors)} on each logged-in client's mind
    when accounts or policies changed: a list of at most L{PUSH_PAGE} AORs
    (bigger changes come in several pages), or L{None} for "anything may
    have changed".  The client drops its cached answers for them at once
    and tells its own change listeners (the manager re-checks the
    subscriptions concerned).

The client keeps its own short cache (C{[billing] cache_ttl}) in front of
the remote calls, bounds every call (C{[billing] call_timeout}), fails
lookups at once while it is not logged in (the manager then answers 500
with Retry-After), reconnects with a backoff, and drops its whole cache on
every new login (changes pushed while it was away were lost).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import stat
from typing import Any, Callable, Dict, FrozenSet, Hashable, List, Optional, Tuple

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import protocol
from twisted.internet.defer import Deferred, TimeoutError as CallTimedOut, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from presence.billing.cache import _MISSING, TTLCache
from presence.billing.errors import BillingUnavailable
from presence.billing.listeners import ChangeListener, ChangeListeners
from presence.billing.records import ACTIONS, ALLOW, AccountInfo
from presence.billing.service import MIN_SECRET, BillingService, SecretError
from presence.config import Config
from presence.interfaces import IAuthorizer
from presence.runtime import RuntimeService
from presence.startup import failStartup

#: The PB type tag of an account copy; both sides register it.
ACCOUNT_COPY_TAG = b"presence.billing.AccountInfo"

#: Most AORs in one change notification; more are sent in pages.
PUSH_PAGE = 1000

#: The longest AOR a client may ask about.
MAX_AOR = 1024

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
_ACCOUNT_FIELDS = tuple(field.name for field in dataclasses.fields(AccountInfo))


# --- the shared secret -------------------------------------------------------


def loadPeerSecret(path: str) -> bytes:
    """
    The secret that billing clients log in with: the content of C{path},
    surrounding whitespace removed.

    @raise SecretError: when C{path} is empty or unreadable, the file is
        accessible to group or others, or it holds fewer than 16 bytes; the
        message is one line naming C{[billing] peer_secret_file}.
    """
    key = "[billing] peer_secret_file"
    if not path:
        raise SecretError(
            "%s is needed: a file of at least %d random bytes, mode 0600, the same on the "
            "billing node and every manager" % (key, MIN_SECRET)
        )
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise SecretError("%s = %r: cannot read it: %s" % (key, path, e.strerror or e))
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            "%s = %r is accessible to group or others (mode %o); chmod 600 it"
            % (key, path, stat.S_IMODE(st.st_mode))
        )
    if len(secret) < MIN_SECRET:
        raise SecretError(
            "%s = %r holds %d bytes; at least %d random bytes are needed"
            % (key, path, len(secret), MIN_SECRET)
        )
    return secret


def billingNodeProblem(config: Config) -> Optional[str]:
    """
    Why a billing node (C{--role=billing}) could not start with C{config},
    in one line, or L{None}.  Checked before the reactor runs.
    """
    try:
        loadPeerSecret(config.billingPeerSecretFile)
    except SecretError as e:
        return str(e)
    return None


def remoteBillingProblem(config: Config) -> Optional[str]:
    """
    Why a manager could not use the billing node C{[billing] remote} with
    C{config}, in one line, or L{None}.
    """
    from presence.billing.service import billingProblem

    problem = billingProblem(config)
    if problem is not None:
        return problem
    try:
        loadPeerSecret(config.billingPeerSecretFile)
    except SecretError as e:
        return "[billing] remote = %r: %s" % (config.billingRemote, e)
    return None


# --- values on the wire ------------------------------------------------------


class CopyableAccount(pb.Copyable):
    """
    An L{AccountInfo} as the billing node sends it: a fixed type tag and
    an explicit state of plain values, never the object's C{__dict__}.
    """

    def __init__(self, info: AccountInfo) -> None:
        self.info = info

    def getTypeToCopy(self) -> bytes:
        return ACCOUNT_COPY_TAG

    def getStateToCopy(self) -> Dict[str, Any]:
        info = self.info
        return {
            "aor": info.aor,
            "username": info.username,
            "realm": info.realm,
            "ha1Md5": info.ha1Md5,
            "ha1Sha256": info.ha1Sha256,
            "status": info.status,
            "presenceEnabled": bool(info.presenceEnabled),
            "customer": info.customer,
            "createdAt": float(info.createdAt),
        }


class RemoteAccountCopy(pb.RemoteCopy):
    """
    An account received from the billing node.  Its state is checked
    field by field; a malformed one never raises inside the broker (that
    would drop the connection) but is kept as a L{problem}, which fails
    the call that returned it.

    @ivar info: the L{AccountInfo}, or L{None} when the state was malformed.
    @ivar problem: why the state was refused, or L{None}.
    """

    info: Optional[AccountInfo] = None
    problem: Optional[str] = "no state"

    def setCopyableState(self, state: Any) -> None:
        self.info, self.problem = None, None
        if not isinstance(state, dict):
            self.problem = "account state is not a dictionary"
            return
        values = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in state.items()}
        if set(values) != set(_ACCOUNT_FIELDS):
            self.problem = "account fields %r" % (sorted(str(k) for k in values),)
            return
        for name in _ACCOUNT_FIELDS:
            value = values[name]
            if name == "presenceEnabled":
                ok = isinstance(value, bool)
            elif name == "createdAt":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str) and len(value) <= MAX_AOR
            if not ok:
                self.problem = "account field %s is malformed" % (name,)
                return
        values["createdAt"] = float(values["createdAt"])
        self.info = AccountInfo(**values)


pb.setUnjellyableForClass(ACCOUNT_COPY_TAG, RemoteAccountCopy)


class BadLookup(pb.Error):
    """
    A client asked about something that is not an AOR.
    """


class RefusedLogin(UnauthorizedLogin, pb.Error):
    """
    A refused login: an L{UnauthorizedLogin} (what a client checks for)
    that is also a C{pb.Error}, so PB answers it without logging a
    traceback for every wrong guess.
    """


class BillingNotReady(pb.Error):
    """
    The billing node is starting (its store is not up yet) or failing (its
    database cannot be read).
    """


# --- the billing node --------------------------------------------------------


@implementer(ICredentialsChecker)
class SharedSecretChecker:
    """
    Lets in any well-formed node name that proves it knows the shared
    secret, through PB's challenge-response (C{IUsernameHashedPassword}):
    an in-memory username/password check built from the secret, since PB
    cannot check hashed passwords.  The avatar id is the node name.
    """

    log = Logger()
    credentialInterfaces = (IUsernameHashedPassword,)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def requestAvatarId(self, credentials: Any) -> Deferred:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if not isinstance(username, str) or not _NODE_NAME.match(username):
            self.log.warn("Billing node: refused a login with a malformed node name")
            return fail(RefusedLogin("malformed node name"))
        d = maybeDeferred(credentials.checkPassword, self._secret)

        def checked(ok: bool) -> Any:
            if not ok:
                self.log.warn("Billing node: refused a login as {node}: wrong secret", node=username)
                return Failure(RefusedLogin("wrong secret"))
            return username

        return d.addCallback(checked)


def _checkAOR(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_AOR:
        raise BadLookup("not an AOR")
    return value


class BillingPerspective(pb.Avatar):
    """
    What one logged-in manager node may ask: accounts and watch decisions.
    """

    def __init__(self, node: str, server: BillingNodeServer) -> None:
        self.node = node
        self.server = server

    def perspective_account(self, aor: Any) -> Deferred:
        """
        @return: a Deferred firing with a L{CopyableAccount} or L{None}.
        """
        aor = _checkAOR(aor)
        d = self.server.authorizerOrFail().account(aor)
        d.addCallbacks(lambda info: None if info is None else CopyableAccount(info), self.server.failed)
        return d

    def perspective_watchDecision(self, watcher: Any, presentity: Any) -> Deferred:
        """
        @return: a Deferred firing with C{"allow"}, C{"ask"} or C{"block"}.
        """
        watcher, presentity = _checkAOR(watcher), _checkAOR(presentity)
        d = self.server.authorizerOrFail().watchDecision(watcher, presentity)
        d.addErrback(self.server.failed)
        return d


@implementer(IRealm)
class BillingRealm:
    """
    Gives each logged-in node a L{BillingPerspective} and registers its
    mind for change notifications until it logs out (disconnects).
    """

    def __init__(self, server: BillingNodeServer) -> None:
        self.server = server

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Callable[[], None]]:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("the billing node speaks PB only")
        avatar = BillingPerspective(avatarId, self.server)
        self.server.attach(avatar, mind)
        return pb.IPerspective, avatar, lambda: self.server.detach(avatar)


class BillingNodeServer:
    """
    The PB side of a billing node: the portal, the logged-in clients, and
    the change notifications pushed to them.

    @ivar authorizer: the L{IAuthorizer} answering (the embedded one on
        the store), or L{None} until it is ready.
    @ivar counters: C{logins}, C{logouts}, C{pushes} (notifications sent),
        C{failures} (lookups the authorizer failed).
    """

    log = Logger()

    def __init__(self, secret: bytes) -> None:
        self.authorizer: Any = None
        self.clients: Dict[BillingPerspective, Any] = {}
        self.portal = Portal(BillingRealm(self), [SharedSecretChecker(secret)])
        self.counters = {"logins": 0, "logouts": 0, "pushes": 0, "failures": 0}
        self._failing = False

    def factory(self) -> pb.PBServerFactory:
        """
        A PB server factory for this portal.
        """
        factory = pb.PBServerFactory(self.portal)
        factory.noisy = False
        return factory

    def serve(self, authorizer: Any) -> None:
        """
        Answer with C{authorizer} and push its changes to the clients.
        """
        self.stop()
        self.authorizer = authorizer
        authorizer.addChangeListener(self.changed)

    def stop(self) -> None:
        """
        Stop pushing changes.
        """
        if self.authorizer is not None:
            self.authorizer.removeChangeListener(self.changed)

    def authorizerOrFail(self) -> Any:
        if self.authorizer is None:
            raise BillingNotReady("the billing node is starting")
        return self.authorizer

    def failed(self, failure: Failure) -> Failure:
        """
        The authorizer failed (its database): log it once per streak and
        tell the client plainly, without a traceback.
        """
        self.counters["failures"] += 1
        if failure.check(pb.Error):
            return failure
        if not self._failing:
            self._failing = True
            self.log.failure("Billing node: a lookup failed", failure)
        return Failure(BillingNotReady("the billing node cannot read its database"))

    def attach(self, avatar: BillingPerspective, mind: Any) -> None:
        self.clients[avatar] = mind
        self.counters["logins"] += 1
        self._failing = False
        self.log.info("Billing node: {node} logged in", node=avatar.node)

    def detach(self, avatar: BillingPerspective) -> None:
        if self.clients.pop(avatar, _MISSING) is not _MISSING:
            self.counters["logouts"] += 1
            self.log.info("Billing node: {node} logged out", node=avatar.node)

    def changed(self, aors: Optional[FrozenSet[str]]) -> None:
        """
        The authorizer dropped its answers for C{aors} (L{None}: all):
        tell every client, in pages of at most L{PUSH_PAGE} AORs.
        """
        if aors is None:
            pages: List[Optional[List[str]]] = [None]
        else:
            ordered = sorted(aors)
            pages = [ordered[i : i + PUSH_PAGE] for i in range(0, len(ordered), PUSH_PAGE)]
        for avatar, mind in list(self.clients.items()):
            if mind is None:
                continue
            for page in pages:
                self.counters["pushes"] += 1
                try:
                    d = mind.callRemote("changed", page)
                except pb.DeadReferenceError:
                    break
                d.addErrback(self._pushFailed, avatar.node)

    def _pushFailed(self, failure: Failure, node: str) -> None:
        self.log.debug("Billing node: could not notify {node}: {error}", node=node, error=failure.getErrorMessage())


# --- the client --------------------------------------------------------------


class _Mind(pb.Referenceable):
    """
    What the billing node calls back on a client.
    """

    def __init__(self, owner: RemoteAuthorizer) -> None:
        self.owner = owner

    def remote_changed(self, aors: Any) -> None:
        self.owner._pushed(aors)


class _LoginFactory(pb.PBClientFactory):
    """
    One PB client factory per connection (a C{PBClientFactory} follows a
    single connection), telling the authorizer when its broker connects.
    """

    noisy = False

    def __init__(self, owner: RemoteAuthorizer) -> None:
        pb.PBClientFactory.__init__(self)
        self.owner = owner

    def clientConnectionMade(self, broker: pb.Broker) -> None:
        pb.PBClientFactory.clientConnectionMade(self, broker)
        self.owner._connectionMade(self, broker)


class _ConnectionFactory(protocol.Factory):
    """
    The factory C{ClientService} connects with: a fresh L{_LoginFactory}
    builds each connection's broker.
    """

    noisy = False

    def __init__(self, owner: RemoteAuthorizer) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> pb.Broker:
        return _LoginFactory(self.owner).buildProtocol(addr)


def _defaultRetryPolicy() -> Callable[[int], float]:
    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=lambda: random.uniform(0, 0.5))


@implementer(IAuthorizer)
class RemoteAuthorizer(ChangeListeners):
    """
    L{IAuthorizer} answered by a billing node over PB, with a TTL cache.

    Login happens when the broker connects, not in C{ClientService}'s
    C{prepareConnection}: a connection lost while that is pending trips
    C{ClientService}'s state machine (Twisted 26.10), so a refused or
    timed-out login closes the connection instead, and the retry delay
    grows with the consecutive refused logins.

    @ivar counters: C{hits} and C{misses} of the cache, C{calls} sent,
        C{failures} of those, C{timeouts}, C{unreachable} (lookups refused
        at once, not logged in), C{invalidated} entries dropped by
        changes, C{pushes} received, C{logins}, C{loginFailures},
        C{disconnects}.
    """

    log = Logger()

    #: Consecutive timed-out calls after which the connection is dropped
    #: and made again (a peer that vanished without closing it).
    maxTimeouts = 3

    def __init__(
        self,
        endpoint: Any,
        node: str,
        secret: bytes,
        clock: Any,
        cacheTtl: float = 30.0,
        callTimeout: float = 2.0,
        loginTimeout: float = 10.0,
        maxEntries: int = 100000,
        retryPolicy: Optional[Callable[[int], float]] = None,
    ) -> None:
        """
        @param endpoint: an C{IStreamClientEndpoint} to the billing node.
        @param node: this manager's node name, the PB user name.
        @param secret: the shared secret, the PB password.
        @param clock: provides C{seconds} and C{callLater} (timeouts,
            cache expiry, reconnection delays).
        @param cacheTtl: how long an answer is kept; 0 disables the cache.
        @param callTimeout: seconds one remote call may take.
        @param retryPolicy: seconds to wait before the Nth reconnection
            (default: exponential backoff from 0.5 s to 30 s).
        """
        self.endpoint = endpoint
        self.node = node
        self._secret = secret
        self.clock = clock
        self.cacheTtl = cacheTtl
        self.callTimeout = callTimeout
        self.loginTimeout = loginTimeout
        self._policy = retryPolicy if retryPolicy is not None else _defaultRetryPolicy()
        self._accounts = TTLCache(clock, cacheTtl, maxEntries)
        self._decisions = TTLCache(clock, cacheTtl, maxEntries)
        self._waiting: Dict[Hashable, List[Deferred]] = {}
        self._generation = 0
        self._listeners: List[ChangeListener] = []
        self._mind = _Mind(self)
        self._service: Optional[ClientService] = None
        self._broker: Optional[pb.Broker] = None
        self._perspective: Any = None
        self._everLoggedIn = False
        self._loginFailures = 0
        self._timeouts = 0
        self._connectWaiters: List[Deferred] = []
        self._draining: Any = None
        self.counters = {
            "hits": 0, "misses": 0, "calls": 0, "failures": 0, "timeouts": 0, "unreachable": 0,
            "invalidated": 0, "pushes": 0, "logins": 0, "loginFailures": 0, "disconnects": 0,
        }

    @property
    def connected(self) -> bool:
        """
        Whether we are logged in to the billing node now.
        """
        return self._perspective is not None

    @property
    def cacheSize(self) -> int:
        """
        Entries cached now (accounts and decisions).
        """
        return len(self._accounts) + len(self._decisions)

    # Lifecycle.

    def start(self) -> None:
        """
        Connect, log in, and keep doing so whenever the connection is lost.
        """
        if self._service is not None:
            return
        self._service = ClientService(
            self.endpoint, _ConnectionFactory(self), retryPolicy=self._retryDelay, clock=self.clock
        )
        self._service.startService()

    def stop(self, grace: float = 0.0) -> Deferred:
        """
        Stop reconnecting and close the connection: at once, or once no
        call is outstanding, waiting at most C{grace} seconds.  The grace
        lets an orderly shutdown answer the requests the manager took (a
        SUBSCRIBE asks for an account, then for a decision): lookups keep
        working meanwhile.

        @return: a Deferred firing once the connection is closed.
        """
        svc, self._service = self._service, None
        waiters, self._connectWaiters = self._connectWaiters, []
        for waiter in waiters:
            waiter.errback(BillingUnavailable("stopped"))
        if svc is None:
            return succeed(None)
        if grace <= 0 or not self._waiting or not self.connected:
            return svc.stopService()
        done: Deferred = Deferred()
        timer = self.clock.callLater(grace, self._drained)
        self._draining = (svc, done, timer)
        return done

    def _drained(self) -> None:
        draining, self._draining = self._draining, None
        if draining is None:
            return
        svc, done, timer = draining
        if timer.active():
            timer.cancel()
        svc.stopService().chainDeferred(done)

    def whenConnected(self) -> Deferred:
        """
        @return: a Deferred firing with L{None} once logged in (at once if
            we are).
        """
        if self.connected:
            return succeed(None)
        d: Deferred = Deferred()
        self._connectWaiters.append(d)
        return d

    def _retryDelay(self, attempt: int) -> float:
        # ClientService counts connections that failed; a connection whose
        # login was refused succeeded as far as it knows.
        return self._policy(max(attempt, self._loginFailures))

    def _connectionMade(self, factory: _LoginFactory, broker: pb.Broker) -> None:
        if self._service is None:
            broker.transport.loseConnection()
            return
        d = factory.login(UsernamePassword(self.node.encode("utf-8"), self._secret), client=self._mind)
        d.addTimeout(self.loginTimeout, self.clock)
        d.addCallbacks(self._loggedIn, self._loginFailed, (broker,), None, (broker,))

    def _loggedIn(self, perspective: Any, broker: pb.Broker) -> None:
        if broker.disconnected or self._service is None:
            broker.transport.loseConnection()
            return
        self._broker, self._perspective = broker, perspective
        self._loginFailures = 0
        self._timeouts = 0
        self.counters["logins"] += 1
        broker.notifyOnDisconnect(lambda: self._lost(broker))
        again, self._everLoggedIn = self._everLoggedIn, True
        self.log.info("Logged in to the billing node as {node}", node=self.node)
        # Changes pushed while we were away are lost: start afresh.
        if again:
            self.invalidateAll()
        else:
            self._generation += 1
            self._accounts.clear()
            self._decisions.clear()
        waiters, self._connectWaiters = self._connectWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _loginFailed(self, failure: Failure, broker: pb.Broker) -> None:
        if failure.check(UnauthorizedLogin):
            self._loginFailures += 1
            self.counters["loginFailures"] += 1
            if self._loginFailures == 1:
                self.log.error(
                    "The billing node refused our login as {node}: check [billing] peer_secret_file",
                    node=self.node,
                )
        elif self._service is not None:
            self.log.warn("Cannot log in to the billing node: {error}", error=_describe(failure))
        if not broker.disconnected:
            broker.transport.abortConnection()

    def _lost(self, broker: pb.Broker) -> None:
        if broker is not self._broker:
            return
        self._broker = self._perspective = None
        self._generation += 1
        self.counters["disconnects"] += 1
        if self._service is not None:
            self.log.warn("Lost the billing node; billing lookups fail until it is back")

    # Changes.

    def _pushed(self, aors: Any) -> None:
        self.counters["pushes"] += 1
        if aors is None:
            self.invalidateAll()
            return
        if not isinstance(aors, (list, tuple)) or not all(isinstance(aor, str) for aor in aors):
            self.log.warn("The billing node sent a malformed change notification; dropping every cached answer")
            self.invalidateAll()
            return
        self.invalidate(frozenset(aors))

    def invalidate(self, aors: FrozenSet[str]) -> None:
        """
        Drop every cached answer involving C{aors} and tell the listeners.
        """
        self._generation += 1
        self.counters["invalidated"] += self._accounts.invalidate(aors) + self._decisions.invalidate(aors)
        self._tell(frozenset(aors))

    def invalidateAll(self) -> None:
        """
        Drop every cached answer; listeners re-check everything.
        """
        self._generation += 1
        self.counters["invalidated"] += self.cacheSize
        self._accounts.clear()
        self._decisions.clear()
        self._tell(None)


    # Lookups.

    def account(self, aor: str) -> Deferred:
        """
        See L{IAuthorizer.account}.
        """
        cached = self._accounts.get(aor)
        if cached is not _MISSING:
            self.counters["hits"] += 1
            return succeed(cached)
        self.counters["misses"] += 1
        return self._call(("account", aor), "account", (aor,))

    def watchDecision(self, watcher: str, presentity: str) -> Deferred:
        """
        See L{IAuthorizer.watchDecision}.
        """
        if watcher == presentity:
            return succeed(ALLOW)
        cached = self._decisions.get((watcher, presentity))
        if cached is not _MISSING:
            self.counters["hits"] += 1
            return succeed(cached)
        self.counters["misses"] += 1
        return self._call(("decision", watcher, presentity), "watchDecision", (watcher, presentity))

    def _call(self, key: Tuple[str, ...], method: str, args: Tuple[str, ...]) -> Deferred:
        """
        Ask the billing node, once for any number of concurrent lookups of
        C{key}; fail at once when not logged in.  A lookup made after a
        change never joins a call made before it (whose answer may predate
        the change): calls are shared per key and generation.
        """
        d: Deferred = Deferred()
        slot = (key, self._generation)
        waiters = self._waiting.get(slot)
        if waiters is not None:
            waiters.append(d)
            return d
        perspective = self._perspective
        if perspective is None:
            self.counters["unreachable"] += 1
            return fail(BillingUnavailable("not connected to the billing node"))
        self._waiting[slot] = [d]
        self.counters["calls"] += 1
        call = maybeDeferred(perspective.callRemote, method, *args)
        call.addTimeout(self.callTimeout, self.clock)
        call.addBoth(self._answered, key, self._generation, self._broker)
        return d

    def _answered(self, result: Any, key: Tuple[str, ...], generation: int, broker: Any) -> None:
        try:
            self._answer(result, key, generation, broker)
        finally:
            # Callers issue their follow-up lookups from the callbacks.
            if self._draining is not None and not self._waiting:
                self._drained()

    def _answer(self, result: Any, key: Tuple[str, ...], generation: int, broker: Any) -> None:
        waiters = self._waiting.pop((key, generation), [])
        if not isinstance(result, Failure):
            problem, value = _checkAnswer(key[0], result)
            if problem is not None:
                result = Failure(BillingUnavailable("malformed answer from the billing node: %s" % (problem,)))
        if isinstance(result, Failure):
            self.counters["failures"] += 1
            if result.check(CallTimedOut):
                self._timedOut(broker)
            error = Failure(BillingUnavailable(_describe(result)))
            for waiter in waiters:
                waiter.errback(error)
            return
        self._timeouts = 0
        if generation == self._generation:
            if key[0] == "account":
                self._accounts.put(key[1], value, (key[1],))
            else:
                self._decisions.put((key[1], key[2]), value, (key[1], key[2]))
        for waiter in waiters:
            waiter.callback(value)

    def _timedOut(self, broker: Any) -> None:
        self.counters["timeouts"] += 1
        self._timeouts += 1
        if self._timeouts >= self.maxTimeouts and broker is not None and broker is self._broker:
            self._timeouts = 0
            self.log.warn(
                "The billing node did not answer {count} calls in a row; connecting again",
                count=self.maxTimeouts,
            )
            broker.transport.abortConnection()


def _checkAnswer(kind: str, result: Any) -> Tuple[Optional[str], Any]:
    """
    Check an answer of the billing node.

    @return: C{(problem, value)}: C{problem} is L{None} when the answer is
        good, and C{value} is the L{AccountInfo}, L{None} or decision.
    """
    if kind == "account":
        if result is None:
            return None, None
        if isinstance(result, RemoteAccountCopy):
            if result.info is None:
                return result.problem, None
            return None, result.info
        return "not an account", None
    if isinstance(result, str) and result in ACTIONS:
        return None, result
    return "not a decision", None


def _describe(failure: Failure) -> str:
    if failure.check(CallTimedOut):
        return "the billing node did not answer in time"
    if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
        return "the connection to the billing node was lost"
    if failure.check(BillingUnavailable):
        return failure.getErrorMessage()
    return "the billing node failed: %s" % (failure.getErrorMessage(),)


# --- services ----------------------------------------------------------------


class BillingNodeService(RuntimeService):
    """
    The PB server of a billing node (C{--role=billing}), next to the
    L{BillingService} (name C{"billing"}) whose embedded authorizer it
    serves.  It listens at once in L{startService}, so a taken port stops
    start-up, and answers "starting" until billing is ready.

    @ivar address: the bound address, once listening.
    """

    log = Logger()
    name = "billing-node"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.server: Optional[BillingNodeServer] = None
        self.address: Any = None
        self._listener: Any = None

    def startService(self) -> None:
        """
        Listen, then serve once billing is ready.

        @raise SecretError: when the peer secret file cannot be used.
        @raise twisted.internet.error.CannotListenError: when the address
            is taken.
        """
        from presence.admin.listening import Listener, describe, isLoopback

        secret = loadPeerSecret(self.config.billingPeerSecretFile)
        server = BillingNodeServer(secret)
        listener = Listener(self.reactor, self.config.billingListen, server.factory())
        self.address = listener.listen()
        self.server, self._listener = server, listener
        service.Service.startService(self)
        where = describe(self.address)
        self.log.info("Billing node listening on {address}", address=where)
        if not isLoopback(self.address) and not self.config.billingListen.startswith("ssl:"):
            self.log.warn(
                "The billing node listens on {address} without TLS: account digests cross the "
                "network in clear; use an ssl: endpoint",
                address=where,
            )
        assert self.parent is not None, "the billing node needs the service tree as its parent"
        d = self.parent.getServiceNamed("billing").whenReady()
        d.addCallbacks(self._ready, self._failed)

    def _ready(self, billing: Any) -> None:
        if self.server is not None and self.running:
            self.server.serve(billing.authorizer)
            self.log.info("Billing node serving")

    def _failed(self, failure: Failure) -> None:
        failStartup(self, "billing-node", failure)

    def stopService(self) -> Any:
        """
        Stop listening and drop the clients' connections.
        """
        service.Service.stopService(self)
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        listener, self._listener = self._listener, None
        self.address = None
        if listener is None:
            return None
        return listener.stop()


class RemoteBillingService(BillingService):
    """
    Billing for a manager whose C{[billing] remote} names a billing node:
    the same service name (C{"billing"}) and L{whenReady} result as
    L{BillingService}, with a L{RemoteAuthorizer} in place of the embedded
    one.  Digest nonces are still made and checked here, with the cluster's
    C{[billing] secret_file}; the billing node only hands out accounts.
    Only configuration is pickled; the client is built when the store is
    up and ready at once (lookups fail until it has logged in).
    """

    log = Logger()

    def _storeReady(self, store: Any) -> Any:
        from twisted.internet.endpoints import clientFromString

        if not self.running:
            return None
        config = self.config
        secret = loadPeerSecret(config.billingPeerSecretFile)
        authorizer = RemoteAuthorizer(
            clientFromString(self.reactor, config.billingRemote),
            config.node,
            secret,
            self.reactor,
            config.billingCacheTtl,
            config.billingCallTimeout,
        )
        self.authorizer = authorizer  # type: ignore[assignment]
        self.log.info(
            "Billing: asking the billing node at {remote} as {node}", remote=config.billingRemote, node=config.node
        )
        authorizer.start()
        return self

    def stopService(self) -> Any:
        service.Service.stopService(self)
        authorizer = self.authorizer
        if authorizer is not None:
            # The manager stops alongside: let its requests finish asking.
            return authorizer.stop(grace=2 * self.config.billingCallTimeout)
        return None
