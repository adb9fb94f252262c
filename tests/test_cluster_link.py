"""
The cluster over real Perspective Broker connections on 127.0.0.1
(pytest-twisted): login with the shared secrets, replication, a resync
larger than one Banana string, reconnection after a one-sided cut, and
a malformed call refused without harm.

The managers are real (L{tests.harness.Harness}, their own clock set to
the wall clock so that expiry times agree with the group's), their
groups and links run on the reactor.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Sequence

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from presence.cluster.group import PeerGroup
from presence.cluster.link import ClusterServerFactory, PeerLink
from presence.cluster.messages import PublicationUpdate
from presence.sip.message import Request
from presence.store import MemoryStore
from tests.harness import Harness
from tests.certs import selfSigned

SECRETS = {"a": b"secret of a, 20+ bytes", "b": b"secret of b, 20+ bytes"}
NOTE = "x" * 40_000


def bigPidf(aor: str, index: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
        '<tuple id="t%d"><status><basic>open</basic></status><note>%s</note></tuple></presence>'
        % (aor, index, NOTE)
    ).encode("utf-8")


def when(predicate: Callable[[], bool], timeout: float = 5.0) -> Deferred:
    """
    Fire once C{predicate()} holds, checked after every reactor turn that
    ran a delayed call; fail after C{timeout} seconds.
    """
    d: Deferred = Deferred()
    deadline = time.monotonic() + timeout

    def check() -> None:
        if predicate():
            d.callback(None)
        elif time.monotonic() > deadline:
            d.errback(AssertionError("condition not met within %s s" % (timeout,)))
        else:
            reactor.callLater(0.005, check)

    check()
    return d


class PBNode:
    """
    A manager with its group, PB listener and links.
    """

    def __init__(self, name: str, names: Sequence[str], shared: MemoryStore) -> None:
        self.name = name
        self.harness = Harness(store=shared, node=name)
        self.harness.clock.advance(time.time() - self.harness.clock.seconds())
        self.manager = self.harness.manager
        self.group = PeerGroup(name, names, reactor, adoptAfter=600.0)
        self.group.attach(self.manager)
        self.factory = ClusterServerFactory(self.group, SECRETS)
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.portNumber = self.port.getHost().port
        self.links: Dict[str, PeerLink] = {}

    def linkTo(self, other: PBNode, secret: bytes = b"") -> PeerLink:
        link = PeerLink(
            self.group, other.name, "tcp:127.0.0.1:%d" % (other.portNumber,),
            secret or SECRETS[self.name], reactor, retryDelay=0.05, pingInterval=0.5, loginTimeout=5.0,
        )
        self.links[other.name] = link
        link.start()
        return link

    def notifies(self) -> List[Request]:
        sent = [m for m in self.harness.take() if isinstance(m, Request) and m.method == "NOTIFY"]
        for notify in sent:
            self.harness.answer(notify)
        return sent

    def closeListener(self) -> Deferred:
        d = self.port.stopListening()
        self.factory.closeAll()
        return d

    def reopenListener(self) -> None:
        self.port = reactor.listenTCP(self.portNumber, self.factory, interface="127.0.0.1")

    @pytest_twisted.inlineCallbacks
    def stop(self) -> Any:
        self.group.stop()
        yield gatherResults([link.stop() for link in self.links.values()])
        if self.port.connected:
            yield self.port.stopListening()
        self.factory.closeAll()
        yield when(lambda: not self.factory.brokers)
        self.harness.stop()


@pytest.fixture
def pair():
    shared = MemoryStore()
    shared.start()
    nodes = [PBNode("a", ["a", "b"], shared), PBNode("b", ["a", "b"], shared)]
    yield nodes
    pytest_twisted.blockon(gatherResults([node.stop() for node in nodes]))


@pytest_twisted.inlineCallbacks
def linked(a: PBNode, b: PBNode) -> Any:
    synced = [a.group.whenSynced("b"), b.group.whenSynced("a")]
    a.linkTo(b)
    b.linkTo(a)
    yield gatherResults(synced).addTimeout(10, reactor)


@pytest_twisted.inlineCallbacks
def test_publicationReplicatedOverPB(pair):
    a, b = pair
    yield linked(a, b)
    b.harness.subscribed()
    etag, _ = a.harness.published()
    yield when(lambda: etag in b.manager.publications)
    [notify] = b.notifies()
    assert b"<basic>open</basic>" in notify.body
    assert b.manager.publications[etag].origin == "a"


@pytest_twisted.inlineCallbacks
def test_linksSendAtOnce(pair):
    """
    Both ends of a link have Nagle's algorithm off: an update is a small
    write that must not wait for the peer's delayed ACK.
    """
    import socket

    a, b = pair
    yield linked(a, b)
    client = a.links["b"]._broker.transport.getHandle()  # type: ignore[union-attr]
    [server] = [broker.transport.getHandle() for broker in b.factory.brokers]
    for sock in (client, server):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest_twisted.inlineCallbacks
def test_wrongSecretRefused(pair):
    a, b = pair
    link = a.linkTo(b, secret=b"not the secret of a at all")
    failures: List[Any] = []
    original = link._loginFailed
    link._loginFailed = lambda failure, broker: (failures.append(failure), original(failure, broker))[1]  # type: ignore
    yield when(lambda: len(failures) >= 2)
    assert "b" not in a.group.peers
    assert "UnauthorizedLogin" in str(failures[0].type), failures[0]


@pytest_twisted.inlineCallbacks
def test_resyncLargerThanOneBananaString(pair):
    """
    a holds 30 publications of 40 KB (1.2 MB, twice Banana's 640 KiB
    string limit) before b links: b pulls them all, page by page.
    """
    a, b = pair
    etags = []
    for i in range(30):
        aor = "sip:big%d@example.test" % (i,)
        etags.append(a.harness.published(uri=aor, body=bigPidf(aor, i))[0])
    yield linked(a, b)
    assert set(etags) <= set(b.manager.publications)
    assert b.group.counters["applied"] >= 30
    # 1.2 MB in pages of at most 256 KiB of bodies.
    assert b.group.counters["pages"] >= 5


@pytest_twisted.inlineCallbacks
def test_missedUpdatesCaughtUpAfterReconnection(pair):
    """
    b's link into a is cut (a's listener closes for a moment) while b
    takes a publication; when b logs in again, a pulls what it missed.
    """
    a, b = pair
    yield linked(a, b)
    yield a.closeListener()
    yield when(lambda: "a" not in b.group.peers)
    etag, _ = b.harness.published()
    assert etag not in a.manager.publications
    a.reopenListener()
    yield when(lambda: etag in a.manager.publications)


@pytest_twisted.inlineCallbacks
def test_malformedCallRefusedConnectionKept(pair):
    a, b = pair
    yield linked(a, b)
    avatar = a.links["b"].peer.avatar  # type: ignore[union-attr]
    with pytest.raises(Exception) as e:
        yield avatar.callRemote("updates", ["not an update"])
    assert "PublicationUpdate" in str(e.value)
    with pytest.raises(Exception):
        yield avatar.callRemote("page", "zero", None)
    assert "b" in a.group.peers
    good = PublicationUpdate(
        "sip:bob@example.test", "e1", bigPidf("sip:bob@example.test", 1), time.time() + 60, time.time(), 1, "a",
    )
    count = yield avatar.callRemote("updates", [good])
    assert count == 1 and "e1" in b.manager.publications


@pytest_twisted.inlineCallbacks
def test_deadPeerReportedDown(pair):
    """
    b vanishes (listener and connections closed, links stopped): a
    reports it down at once and keeps trying to reconnect.
    """
    a, b = pair
    yield linked(a, b)
    yield gatherResults([link.stop() for link in b.links.values()])
    yield b.closeListener()
    yield when(lambda: "b" not in a.group.peers)
    assert a.links["b"].running


@pytest_twisted.inlineCallbacks
def test_overTLS(tmp_path):
    """
    The production set-up: b listens with TLS (C{ssl:}), a connects with
    C{tls:} and checks b's certificate; replication works the same.
    """
    from twisted.internet.endpoints import serverFromString

    keyPath, certPath, trust = selfSigned(tmp_path)
    shared = MemoryStore()
    shared.start()
    a, b = PBNode("a", ["a", "b"], shared), PBNode("b", ["a", "b"], shared)
    try:
        yield b.port.stopListening()
        b.port = yield serverFromString(
            reactor, "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath)
        ).listen(b.factory)
        synced = a.group.whenSynced("b")
        link = PeerLink(
            a.group, "b", "tls:127.0.0.1:%d:trustRoots=%s" % (b.port.getHost().port, trust),
            SECRETS["a"], reactor, retryDelay=0.05, pingInterval=0.5,
        )
        a.links["b"] = link
        link.start()
        yield synced.addTimeout(10, reactor)
        etag, _ = a.harness.published()
        yield when(lambda: etag in b.manager.publications)
    finally:
        yield gatherResults([a.stop(), b.stop()])


@pytest_twisted.inlineCallbacks
def test_tlsPeerWithUntrustedCertificateRefused(tmp_path):
    """
    A peer whose certificate the trust roots do not vouch for is never
    logged in to: the link keeps failing and retrying.
    """
    from twisted.internet.endpoints import serverFromString

    (tmp_path / "b").mkdir()
    (tmp_path / "other").mkdir()
    keyPath, certPath, _ = selfSigned(tmp_path / "b")
    _, _, otherTrust = selfSigned(tmp_path / "other")
    shared = MemoryStore()
    shared.start()
    a, b = PBNode("a", ["a", "b"], shared), PBNode("b", ["a", "b"], shared)
    try:
        yield b.port.stopListening()
        b.port = yield serverFromString(
            reactor, "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath)
        ).listen(b.factory)
        link = PeerLink(
            a.group, "b", "tls:127.0.0.1:%d:trustRoots=%s" % (b.port.getHost().port, otherTrust),
            SECRETS["a"], reactor, retryDelay=0.05, pingInterval=0.5,
        )
        lost: List[Any] = []
        original = link._disconnected
        link._disconnected = lambda broker: (lost.append(broker), original(broker))[1]  # type: ignore
        a.links["b"] = link
        link.start()
        yield when(lambda: len(lost) >= 2)
        assert "b" not in a.group.peers and link.peer is None
    finally:
        yield gatherResults([a.stop(), b.stop()])
