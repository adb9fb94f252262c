"""
Tests for L{presence.billing.remote}: the billing node's PB server and the
L{RemoteAuthorizer} managers use, over real loopback TCP (and TLS) under
pytest-twisted; timeouts with a L{Clock}; the peer secret, the
configuration keys and the service wiring.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, List, Optional

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.task import Clock
from twisted.spread import pb
from zope.interface import implementer
from zope.interface.verify import verifyObject

from presence.admin.listening import Listener
from presence.billing.errors import BillingUnavailable
from presence.billing.records import AccountInfo
from presence.billing.remote import (
    ACCOUNT_COPY_TAG,
    PUSH_PAGE,
    BillingNodeServer,
    BillingNodeService,
    CopyableAccount,
    RemoteAccountCopy,
    RemoteAuthorizer,
    RemoteBillingService,
    _checkAnswer,
    billingNodeProblem,
    loadPeerSecret,
    remoteBillingProblem,
)
from presence.billing.service import SecretError
from presence.config import Config, ConfigError
from presence.interfaces import IAuthorizer
from tests.certs import selfSigned

SECRET = b"0123456789abcdef-shared-secret"
ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
CAROL = "sip:carol@other.test"


def account(aor: str, **changes: Any) -> AccountInfo:
    values = dict(
        aor=aor, username=aor[4:].split("@")[0], realm=aor.split("@")[1], ha1Md5="a" * 32, ha1Sha256="b" * 64,
        status="active", presenceEnabled=True, customer="acme", createdAt=1700000000.5,
    )
    values.update(changes)
    return AccountInfo(**values)


@implementer(IAuthorizer)
class FakeAuthorizer:
    """
    The billing node's authorizer: fixed answers, every call recorded;
    C{held} (a list) holds answers back, C{error} fails them.
    """

    def __init__(self) -> None:
        self.accounts = {ALICE: account(ALICE), BOB: account(BOB, presenceEnabled=False)}
        self.decisions = {(ALICE, BOB): "allow", (CAROL, BOB): "ask"}
        self.calls: List[Any] = []
        self.held: Optional[List[Deferred]] = None
        self.error: Optional[Exception] = None
        self.listeners: List[Any] = []

    def _answer(self, value: Any) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        if self.held is not None:
            d: Deferred = Deferred()
            self.held.append(d)
            return d
        return succeed(value)

    def account(self, aor: str) -> Deferred:
        self.calls.append(("account", aor))
        return self._answer(self.accounts.get(aor))

    def watchDecision(self, watcher: str, presentity: str) -> Deferred:
        self.calls.append(("decision", watcher, presentity))
        return self._answer(self.decisions.get((watcher, presentity), "block"))

    def addChangeListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeChangeListener(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def tell(self, aors: Any) -> None:
        for listener in list(self.listeners):
            listener(aors)


class Node:
    """
    A billing node's PB server with a L{FakeAuthorizer}, listening on
    127.0.0.1.
    """

    def __init__(self, port: int = 0, description: Optional[str] = None) -> None:
        from twisted.internet import reactor

        self.fake = FakeAuthorizer()
        self.server = BillingNodeServer(SECRET)
        self.server.serve(self.fake)
        self.listener = Listener(
            reactor, description or "tcp:%d:interface=127.0.0.1" % (port,), self.server.factory()
        )
        self.port = self.listener.listen().port

    def stop(self) -> Deferred:
        self.server.stop()
        return self.listener.stop()


class Retries:
    """
    A retry policy that tells the test each time the client schedules a
    reconnection.
    """

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.attempts: List[int] = []
        self._waiters: List[Deferred] = []

    def __call__(self, attempt: int) -> float:
        from twisted.internet import reactor

        self.attempts.append(attempt)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            # Not from inside ClientService's state machine, which refuses
            # to be stopped re-entrantly.
            reactor.callLater(0, waiter.callback, attempt)
        return self.delay

    def next(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d


class Changes:
    """
    A change listener whose next call a test can wait for.
    """

    def __init__(self) -> None:
        self.seen: List[Any] = []
        self._waiters: List[Deferred] = []

    def __call__(self, aors: Any) -> None:
        self.seen.append(aors)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(aors)

    def next(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d


def client(port: int, secret: bytes = SECRET, clock: Any = None, retries: Any = None, **kw: Any) -> RemoteAuthorizer:
    from twisted.internet import reactor

    authorizer = RemoteAuthorizer(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        "m1",
        secret,
        clock if clock is not None else reactor,
        retryPolicy=retries if retries is not None else Retries(),
        **kw,
    )
    authorizer.start()
    return authorizer


def result(d: Deferred) -> Any:
    """
    The result of a Deferred that has fired (a Failure stays a Failure).
    """
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def within(d: Deferred, seconds: float = 5.0) -> Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


# Without a network.


def test_providesIAuthorizer():
    authorizer = RemoteAuthorizer(None, "m1", SECRET, Clock())
    verifyObject(IAuthorizer, authorizer)
    assert not authorizer.connected


def test_failsFastWhenNotConnected():
    clock = Clock()
    authorizer = RemoteAuthorizer(None, "m1", SECRET, clock)
    failure = result(authorizer.account(ALICE))
    assert failure.check(BillingUnavailable) and "not connected" in failure.getErrorMessage()
    assert result(authorizer.watchDecision(ALICE, ALICE)) == "allow"
    assert authorizer.counters["unreachable"] == 1 and clock.getDelayedCalls() == []


def test_copyableState():
    info = account(ALICE)
    state = CopyableAccount(info).getStateToCopy()
    assert CopyableAccount(info).getTypeToCopy() == ACCOUNT_COPY_TAG
    assert set(state) == {
        "aor", "username", "realm", "ha1Md5", "ha1Sha256", "status", "presenceEnabled", "customer", "createdAt",
    }
    copy = RemoteAccountCopy()
    copy.setCopyableState({k.encode(): v for k, v in state.items()})
    assert copy.info == info and copy.problem is None
    for bad in (
        None,
        dict(state, extra=1),
        {k: v for k, v in state.items() if k != "aor"},
        dict(state, presenceEnabled=1),
        dict(state, createdAt=True),
        dict(state, aor=b"sip:alice@example.test"),
        dict(state, customer="x" * 5000),
    ):
        copy = RemoteAccountCopy()
        copy.setCopyableState(bad)
        assert copy.info is None and copy.problem
        assert _checkAnswer("account", copy)[0] == copy.problem
    assert _checkAnswer("account", None) == (None, None)
    assert _checkAnswer("account", "sip:alice@example.test")[0] == "not an account"
    assert _checkAnswer("decision", "ask") == (None, "ask")
    assert _checkAnswer("decision", "maybe")[0] == "not a decision"


def test_malformedPushDropsEverything():
    authorizer = RemoteAuthorizer(None, "m1", SECRET, Clock())
    changes = Changes()
    authorizer.addChangeListener(changes)
    authorizer._decisions.put((ALICE, BOB), "allow", (ALICE, BOB))
    authorizer._pushed([ALICE, 3])
    authorizer._pushed("sip:bob@example.test")
    assert changes.seen == [None, None] and authorizer.cacheSize == 0
    authorizer._pushed((CAROL,))
    assert changes.seen[-1] == frozenset([CAROL])
    authorizer.removeChangeListener(changes)
    authorizer._pushed(None)
    assert len(changes.seen) == 3


def test_peerSecretFile(tmp_path):
    with pytest.raises(SecretError, match="peer_secret_file is needed"):
        loadPeerSecret("")
    path = tmp_path / "peer.secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, 0o600)
    assert loadPeerSecret(str(path)) == SECRET
    config = Config(billingPeerSecretFile=str(path), billingRemote="tcp:127.0.0.1:8790")
    assert billingNodeProblem(config) is None and remoteBillingProblem(config) is None
    os.chmod(path, 0o644)
    problem = billingNodeProblem(config)
    assert "peer_secret_file" in problem and "chmod 600" in problem and "\n" not in problem
    assert "[billing] remote" in remoteBillingProblem(config)
    os.chmod(path, 0o600)
    path.write_bytes(b"short\n")
    with pytest.raises(SecretError, match="at least 16"):
        loadPeerSecret(str(path))
    assert "cannot read" in billingNodeProblem(Config(billingPeerSecretFile=str(tmp_path / "missing")))


def test_config():
    config = Config.fromString(
        "[billing]\nlisten = tcp:0:interface=127.0.0.1\nremote = tcp:10.0.0.9:8790\n"
        "peer_secret_file = /etc/presence/peer.secret\ncall_timeout = 0.5\n"
    )
    assert config.billingListen == "tcp:0:interface=127.0.0.1"
    assert config.billingRemote == "tcp:10.0.0.9:8790"
    assert config.billingPeerSecretFile == "/etc/presence/peer.secret"
    assert config.billingCallTimeout == 0.5
    defaults = Config()
    assert defaults.billingRemote == "" and defaults.billingCallTimeout == 2.0
    assert defaults.billingListen == "tcp:8790:interface=127.0.0.1"
    for bad in ("remote = bogus:1", "remote = tcp:onlyhost", "listen = nowhere", "call_timeout = 0"):
        with pytest.raises(ConfigError, match=r"\[billing\]"):
            Config.fromString("[billing]\npeer_secret_file = /x\n" + bad + "\n")
    with pytest.raises(ConfigError, match="needs peer_secret_file"):
        Config.fromString("[billing]\nremote = tcp:10.0.0.9:8790\n")


def test_servicesPickleConfigurationOnly():
    config = Config(billingRemote="tcp:127.0.0.1:8790")
    remote = RemoteBillingService(config)
    remote.authorizer = RemoteAuthorizer(None, "m1", SECRET, Clock())  # type: ignore[assignment]
    copy = pickle.loads(pickle.dumps(remote))
    assert copy.config == config and copy.authorizer is None and copy.name == "billing"
    node = BillingNodeService(config)
    node.server = BillingNodeServer(SECRET)
    copy = pickle.loads(pickle.dumps(node))
    assert copy.config == config and copy.server is None and copy.name == "billing-node"


# Over loopback TCP.


@pytest_twisted.inlineCallbacks
def test_loginLookupsAndCopyableRoundTrip():
    node = Node()
    authorizer = client(node.port)
    try:
        yield within(authorizer.whenConnected())
        assert authorizer.connected and [a.node for a in node.server.clients] == ["m1"]
        info = yield authorizer.account(ALICE)
        assert type(info) is AccountInfo and info == node.fake.accounts[ALICE]
        assert (yield authorizer.account(BOB)) == node.fake.accounts[BOB]
        assert (yield authorizer.account(CAROL)) is None
        assert (yield authorizer.watchDecision(ALICE, BOB)) == "allow"
        assert (yield authorizer.watchDecision(CAROL, BOB)) == "ask"
        assert (yield authorizer.watchDecision(BOB, CAROL)) == "block"
        assert (yield authorizer.watchDecision(BOB, BOB)) == "allow"
        assert len(node.fake.calls) == 6
    finally:
        yield authorizer.stop()
        yield node.stop()
    assert node.server.clients == {} and node.server.counters["logouts"] == 1


@pytest_twisted.inlineCallbacks
def test_cacheHitsNeverReachTheNode():
    node = Node()
    authorizer = client(node.port)
    try:
        yield within(authorizer.whenConnected())
        node.fake.held = []
        first, second = authorizer.account(ALICE), authorizer.account(ALICE)
        decisions = [authorizer.watchDecision(ALICE, BOB) for _ in range(3)]
        # Wait for the two calls to arrive, then answer them.
        while len(node.fake.held) < 2:
            yield within(_turn())
        held, node.fake.held = node.fake.held, None
        held[0].callback(node.fake.accounts[ALICE])
        held[1].callback("allow")
        assert (yield first) == (yield second) == node.fake.accounts[ALICE]
        for d in decisions:
            assert (yield d) == "allow"
        assert (yield authorizer.account(ALICE)) == node.fake.accounts[ALICE]
        assert (yield authorizer.watchDecision(ALICE, BOB)) == "allow"
        assert len(node.fake.calls) == 2
        assert authorizer.counters["calls"] == 2 and authorizer.counters["hits"] == 2
        assert authorizer.cacheSize == 2
    finally:
        yield authorizer.stop()
        yield node.stop()


def _turn() -> Deferred:
    """
    A Deferred firing on the next reactor iteration.
    """
    from twisted.internet import reactor

    d: Deferred = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


@pytest_twisted.inlineCallbacks
def test_pushedChangesInvalidateAtOnce():
    node = Node()
    authorizer = client(node.port, cacheTtl=300.0)
    changes = Changes()
    authorizer.addChangeListener(changes)
    try:
        yield within(authorizer.whenConnected())
        yield authorizer.account(ALICE)
        yield authorizer.account(BOB)
        yield authorizer.watchDecision(ALICE, BOB)
        assert len(node.fake.calls) == 3
        node.fake.accounts[ALICE] = account(ALICE, status="blocked")
        node.fake.decisions[(ALICE, BOB)] = "block"
        waiting = changes.next()
        node.fake.tell(frozenset([ALICE]))
        assert (yield within(waiting)) == frozenset([ALICE])
        assert (yield authorizer.account(ALICE)).status == "blocked"
        assert (yield authorizer.watchDecision(ALICE, BOB)) == "block"
        yield authorizer.account(BOB)  # still cached
        assert len(node.fake.calls) == 5
        waiting = changes.next()
        node.fake.tell(None)
        assert (yield within(waiting)) is None
        assert authorizer.cacheSize == 0
        # Big changes come in pages.
        many = frozenset("sip:u%d@example.test" % i for i in range(PUSH_PAGE * 2 + 1))
        pushes = node.server.counters["pushes"]
        node.fake.tell(many)
        got: set = set()
        while got != many:
            got |= yield within(changes.next())
        assert node.server.counters["pushes"] - pushes == 3
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_answerOvertakenByAChangeIsNotCached():
    """
    An answer in flight when a change arrives may predate it: it is
    delivered to whom asked before, not cached, and not shared with a
    lookup made after the change.
    """
    node = Node()
    authorizer = client(node.port, cacheTtl=300.0)
    changes = Changes()
    authorizer.addChangeListener(changes)
    try:
        yield within(authorizer.whenConnected())
        node.fake.held = []
        pending = authorizer.watchDecision(ALICE, BOB)
        while not node.fake.held:
            yield within(_turn())
        waiting = changes.next()
        node.fake.tell(frozenset([ALICE]))
        yield within(waiting)
        # Asked again after the change: a new call, not the one in flight.
        again = authorizer.watchDecision(ALICE, BOB)
        while len(node.fake.held) < 2:
            yield within(_turn())
        held, node.fake.held = node.fake.held, None
        held[0].callback("allow")
        held[1].callback("block")
        assert (yield pending) == "allow"
        assert (yield again) == "block"
        assert len(node.fake.calls) == 2 and authorizer.cacheSize == 1
        assert (yield authorizer.watchDecision(ALICE, BOB)) == "block"
        assert len(node.fake.calls) == 2
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_wrongSecretIsRefusedAndRetriedWithBackoff():
    node = Node()
    retries = Retries(delay=60.0)
    authorizer = client(node.port, secret=b"not-the-shared-secret", retries=retries)
    try:
        attempt = yield within(retries.next())
        assert authorizer.counters["loginFailures"] == 1 and not authorizer.connected
        assert attempt == 1 and node.server.clients == {}
        failure = result(authorizer.account(ALICE))
        assert failure.check(BillingUnavailable)
        assert node.fake.calls == []
        # The delay grows with consecutive refusals, not only failed connects.
        authorizer._loginFailures = 4
        assert authorizer._retryDelay(1) == 60.0 and retries.attempts[-1] == 4
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_loginChecks():
    """
    The PB login itself: the right secret gives a perspective, a wrong one
    or a malformed node name is refused; bad arguments and a failing
    authorizer give plain PB errors, never a dropped connection.
    """
    from twisted.internet import reactor

    node = Node()
    brokers: List[Any] = []

    @inlineCallbacks
    def connect(name: bytes, secret: bytes) -> Any:
        factory = pb.PBClientFactory()
        broker = yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory))
        closed: Deferred = Deferred()
        broker.notifyOnDisconnect(lambda: closed.callback(None))
        brokers.append((broker, closed))
        return (yield within(factory.login(UsernamePassword(name, secret))))

    try:
        perspective = yield connect(b"m2", SECRET)
        for name, secret in ((b"m2", b"wrong-secret-wrong"), (b"bad name!", SECRET), (b"", SECRET)):
            with pytest.raises(pb.RemoteError) as refused:
                yield connect(name, secret)
            assert refused.value.remoteType == b"presence.billing.remote.RefusedLogin"
        copy = yield within(perspective.callRemote("account", ALICE))
        assert isinstance(copy, RemoteAccountCopy) and copy.info == node.fake.accounts[ALICE]
        for args in ((42,), ("x" * 2000,), (b"sip:alice@example.test",)):
            with pytest.raises(pb.RemoteError, match="not an AOR"):
                yield within(perspective.callRemote("account", *args))
        with pytest.raises(pb.RemoteError, match="not an AOR"):
            yield within(perspective.callRemote("watchDecision", ALICE, None))
        node.fake.error = RuntimeError("database is down")
        with pytest.raises(pb.RemoteError, match="cannot read its database"):
            yield within(perspective.callRemote("watchDecision", ALICE, BOB))
        node.server.authorizer = None
        with pytest.raises(pb.RemoteError, match="starting"):
            yield within(perspective.callRemote("account", ALICE))
        assert (yield within(perspective.callRemote("account", ALICE)).addErrback(lambda f: "alive")) == "alive"
    finally:
        for broker, closed in brokers:
            broker.transport.loseConnection()
            yield within(closed)
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_disconnectFailsFastThenReconnectsAfresh():
    node = Node()
    port = node.port
    retries = Retries(delay=0.05)
    authorizer = client(port, retries=retries)
    changes = Changes()
    authorizer.addChangeListener(changes)
    try:
        yield within(authorizer.whenConnected())
        assert (yield authorizer.account(ALICE)) is not None
        lost = retries.next()
        yield node.stop()
        yield within(lost)
        assert not authorizer.connected and authorizer.counters["disconnects"] == 1
        # A miss fails at once; a cached answer is still served.
        failure = result(authorizer.account(BOB))
        assert failure.check(BillingUnavailable)
        assert result(authorizer.account(ALICE)) == node.fake.accounts[ALICE]
        # The node comes back on the same port: the client logs in again,
        # drops what it cached and tells its listeners to re-check all.
        node = Node(port)
        waiting = changes.next()
        yield within(authorizer.whenConnected())
        assert (yield within(waiting)) is None
        assert authorizer.cacheSize == 0 and authorizer.counters["logins"] == 2
        assert (yield authorizer.account(BOB)) == node.fake.accounts[BOB]
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_callsTimeOutAndAStuckNodeIsDropped():
    """
    A node that stops answering: each call fails after call_timeout (on
    the client's clock); after three in a row the client drops the
    connection and makes a new one.
    """
    node = Node()
    clock = Clock()
    retries = Retries(delay=1.0)
    authorizer = client(node.port, clock=clock, retries=retries, callTimeout=2.0)
    try:
        yield within(authorizer.whenConnected())
        node.fake.held = []
        pending = [authorizer.account(ALICE), authorizer.watchDecision(ALICE, BOB), authorizer.account(BOB)]
        while len(node.fake.held) < 3:
            yield within(_turn())
        clock.advance(1.9)
        assert not any(d.called for d in pending)
        lost = retries.next()
        clock.advance(0.2)
        for d in pending:
            failure = result(d)
            assert failure.check(BillingUnavailable) and "in time" in failure.getErrorMessage()
        assert authorizer.counters["timeouts"] == 3
        yield within(lost)
        assert not authorizer.connected
        node.fake.held = None
        clock.advance(1.0)
        yield within(authorizer.whenConnected())
        assert (yield authorizer.account(ALICE)) == node.fake.accounts[ALICE]
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_stopLetsOutstandingLookupsFinish():
    """
    An orderly stop keeps the connection while lookups are outstanding,
    including the follow-up a caller issues from an answer (a SUBSCRIBE
    asks for the account, then the decision), then closes it.
    """
    node = Node()
    authorizer = client(node.port)
    try:
        yield within(authorizer.whenConnected())
        node.fake.held = []
        followUps: List[Deferred] = []
        first = authorizer.account(ALICE)
        first.addCallback(lambda info: (followUps.append(authorizer.watchDecision(ALICE, BOB)), info)[1])
        while not node.fake.held:
            yield within(_turn())
        stopped = authorizer.stop(grace=30.0)
        assert not stopped.called and authorizer.connected
        held, node.fake.held = node.fake.held, None
        held[0].callback(node.fake.accounts[ALICE])
        yield within(stopped)
        assert (yield first) == node.fake.accounts[ALICE]
        assert (yield followUps[0]) == "allow"
        assert not authorizer.connected and authorizer.counters["failures"] == 0
    finally:
        yield authorizer.stop()
        yield node.stop()


@pytest_twisted.inlineCallbacks
def test_overTLS(tmp_path):
    """
    The node listens on an ssl: endpoint, the client connects with a tls:
    one that checks the node's certificate; a client trusting another
    certificate never logs in.
    """
    from twisted.internet import reactor

    keyPath, certPath, roots = selfSigned(tmp_path, ["billing.example.test"])
    node = Node(description="ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath))
    authorizer = RemoteAuthorizer(
        clientFromString(reactor, "tls:127.0.0.1:%d:trustRoots=%s" % (node.port, roots)),
        "m1", SECRET, reactor, retryPolicy=Retries(),
    )
    other = tmp_path / "other"
    other.mkdir()
    _, _, otherRoots = selfSigned(other, ["billing.example.test"])
    retries = Retries(delay=60.0)
    stranger = RemoteAuthorizer(
        clientFromString(reactor, "tls:127.0.0.1:%d:trustRoots=%s" % (node.port, otherRoots)),
        "m2", SECRET, reactor, retryPolicy=retries,
    )
    refused = retries.next()
    authorizer.start()
    stranger.start()
    try:
        yield within(authorizer.whenConnected())
        assert (yield authorizer.account(ALICE)) == node.fake.accounts[ALICE]
        yield within(refused)
        assert not stranger.connected and [a.node for a in node.server.clients] == ["m1"]
    finally:
        yield authorizer.stop()
        yield stranger.stop()
        yield node.stop()


# The service tree.


def _options(tmp_path: Any, role: str, billing: str) -> Any:
    from presence.tap import Options

    config = tmp_path / "presence.ini"
    config.write_text("[billing]\n" + billing)
    options = Options()
    options.parseOptions(
        ["--config", str(config), "--role", role, "--database", "sqlite:///%s" % (tmp_path / "p.sqlite",)]
    )
    return options


def _secretFile(tmp_path: Any, mode: int = 0o600) -> str:
    path = tmp_path / "peer.secret"
    path.write_bytes(SECRET)
    os.chmod(path, mode)
    return str(path)


def test_serviceTrees(tmp_path):
    from presence.billing.service import BillingService
    from presence.tap import makeService, servicesOf

    secret = _secretFile(tmp_path)
    tree = makeService(_options(tmp_path, "billing", "peer_secret_file = %s\nlisten = tcp:0\n" % (secret,)))
    names = [child.name for child in servicesOf(tree)]
    assert names == ["store", "billing", "billing-node"]
    assert type(tree.getServiceNamed("billing")) is BillingService
    # Into a .tap file and back: configuration only.
    copy = pickle.loads(pickle.dumps(tree))
    assert copy.getServiceNamed("billing-node").config.billingPeerSecretFile == secret
    tree = makeService(
        _options(tmp_path, "manager", "peer_secret_file = %s\nremote = tcp:127.0.0.1:8790\n" % (secret,))
    )
    assert isinstance(tree.getServiceNamed("billing"), RemoteBillingService)
    assert tree.getServiceNamed("manager") is not None
    copy = pickle.loads(pickle.dumps(tree))
    assert isinstance(copy.getServiceNamed("billing"), RemoteBillingService)
    tree = makeService(_options(tmp_path, "all", ""))
    assert type(tree.getServiceNamed("billing")) is BillingService


@pytest.mark.parametrize("role, billing", [
    ("billing", ""),
    ("billing", "peer_secret_file = {bad}\n"),
    ("manager", "remote = tcp:127.0.0.1:8790\n"),
    ("all", "remote = tcp:127.0.0.1:8790\npeer_secret_file = {bad}\n"),
])
def test_badPeerSecretStopsStartUp(tmp_path, capsys, role, billing):
    from presence.tap import makeService

    bad = _secretFile(tmp_path, 0o644)
    with pytest.raises(SystemExit):
        makeService(_options(tmp_path, role, billing.format(bad=bad)))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "peer_secret_file" in lines[0], lines
