"""
A subscription manager wired to a SIP core with a fake network, a
L{MemoryStore} and a L{Clock}: bytes in, bytes out, no sockets, no time.

Billing is real: an L{EmbeddedAuthorizer} on an in-memory SQLite database
with the current schema, read synchronously (L{ConnectionReader}), loaded
at once, and polled after each change made with L{Harness.billing}, so
lookups answer at once and see every change.  By default authentication is off for
example.test (C{billingNoAuthDomains}) and nobody has an account, so every
AOR of example.test belongs to the customer "example.test" and may watch
every other: the manager behaves as it did before billing.  Tests of
billing pass C{billingNoAuthDomains=()} and provision with L{Harness.billing}.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from presence.billing.authorizer import ConnectionReader, EmbeddedAuthorizer
from presence.config import Config
from presence.manager.manager import SubscriptionManager
from presence.sip.core import SIPCore
from presence.sip.digest import DigestAuthenticator
from presence.sip.message import Message, Request, Response
from presence.sip.parser import parseMessage
from presence.sip.target import Target
from presence.store import MemoryStore, StoreError
from presence.store import schema
from presence.store.sql import createEngine

WATCHER = Target("UDP", "192.0.2.10", 5060)
PUBLISHER = Target("UDP", "192.0.2.20", 5060)

PIDF_TEMPLATE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="%s"><status><basic>%s</basic></status></tuple></presence>'
)


def pidf(entity: str = "sip:bob@example.test", basic: str = "open", tupleId: str = "t1") -> bytes:
    return (PIDF_TEMPLATE % (entity, tupleId, basic)).encode("utf-8")


class FakeNetwork:
    """
    Stands in for the UDP listener: records what the core sends, parsed.
    """

    def __init__(self) -> None:
        self.sent: List[Tuple[Message, str, int]] = []

    def write(self, data: bytes, host: str, port: int) -> None:
        self.sent.append((parseMessage(data), host, port))


class HeldWrite:
    """
    One write a L{HeldStore} holds: the method, its arguments, and the
    Deferred the manager is waiting on.
    """

    def __init__(self, method: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.deferred: Deferred = Deferred()

    def __repr__(self) -> str:
        return "<HeldWrite %s%r>" % (self.method, self.args)


class HeldStore:
    """
    A L{MemoryStore} whose writes wait until the test commits or fails
    them, to show what the manager does before a write is durable and when
    it fails.  Reads pass straight through; so do writes while C{holding}
    is false.  A committed write is applied to the inner store only then.

    @ivar held: the writes not yet committed or failed, in issue order.
    """

    WRITES = frozenset(
        [
            "addSubscription",
            "updateSubscription",
            "removeSubscription",
            "putPublication",
            "replacePublication",
            "removePublication",
        ]
    )

    def __init__(self, inner: Optional[MemoryStore] = None) -> None:
        self.inner = inner if inner is not None else MemoryStore()
        self.held: List[HeldWrite] = []
        self.holding = True

    def __getattr__(self, name: str) -> Any:
        if name in HeldStore.WRITES:
            return lambda *args, **kwargs: self._write(name, args, kwargs)
        return getattr(self.inner, name)

    def _write(self, method: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Deferred:
        if not self.holding:
            return getattr(self.inner, method)(*args, **kwargs)
        write = HeldWrite(method, args, kwargs)
        self.held.append(write)
        return write.deferred

    def methods(self) -> List[str]:
        return [w.method for w in self.held]

    def commit(self, index: int = 0) -> None:
        """
        Apply held write C{index} to the inner store and fire its Deferred
        with the inner store's result.
        """
        write = self.held.pop(index)
        getattr(self.inner, write.method)(*write.args, **write.kwargs).chainDeferred(write.deferred)

    def commitAll(self) -> None:
        while self.held:
            self.commit(0)

    def fail(self, index: int = 0, error: Optional[Exception] = None) -> None:
        """
        Fail held write C{index} without applying it.
        """
        write = self.held.pop(index)
        write.deferred.errback(Failure(error or StoreError("injected failure")))


class Harness:
    """
    A manager under test.  C{receive} feeds a request as if it came from the
    network; C{take} returns (and forgets) what the server sent.
    """

    def __init__(self, store: Optional[Any] = None, startBilling: bool = True, **settings: Any) -> None:
        """
        @param startBilling: start the authorizer (load the billing
            tables); false leaves that to the test.
        """
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.core = SIPCore(self.clock, advertisedHost="192.0.2.1")
        self.core.ports = {"UDP": 5060, "TCP": 5060}
        self.network = FakeNetwork()
        self.core.udp = self.network  # type: ignore[assignment]
        self.store = store if store is not None else MemoryStore()
        if not getattr(self.store, "running", True) is True:
            self.store.start()
        values = dict(
            domains=("example.test",), notifyMinInterval=0.0, billingNoAuthDomains=("example.test",)
        )
        values.update(settings)
        self.config = Config(**values)
        self.billingEngine = createEngine("sqlite://")
        self.billing(schema.upgrade)
        self.authorizer = EmbeddedAuthorizer(ConnectionReader(self.billingEngine), self.clock, pollInterval=0)
        if startBilling:
            self.authorizer.start()
        self.digest = DigestAuthenticator(
            os.urandom(32), self.clock, self.config.billingNonceLifetime, self.config.billingAlgorithms
        )
        self.manager = self._newManager()
        self.manager.install()

    def _newManager(self) -> SubscriptionManager:
        return SubscriptionManager(
            self.core, self.store, self.config, self.clock, self.authorizer, self.digest
        )

    def billing(self, work: Any) -> Any:
        """
        Run C{work(conn)} in one transaction on the billing database, as
        C{presence-admin} does (e.g. C{db.addAccount}); then let a started
        authorizer poll the change log, as a running server does within
        its poll interval.
        """
        with self.billingEngine.begin() as conn:
            result = work(conn)
        authorizer = getattr(self, "authorizer", None)
        if authorizer is not None and authorizer.running:
            authorizer.poll()
        return result

    def crash(self) -> None:
        """
        Stop the manager and its core as if the process died: nothing is
        sent any more and no timer runs until L{restart}.
        """
        self.manager.stop()
        self.core.transactions.stop()

    def restart(self, fenced: bool = False) -> SubscriptionManager:
        """
        A new manager (and core) on the same store, as after a crash.

        @param fenced: fence the new manager's notifier before it loads,
            as the manager service does for a manager of a cluster.
        """
        self.manager.stop()
        self.core.transactions.stop()
        self.core = SIPCore(self.clock, advertisedHost="192.0.2.1")
        self.core.ports = {"UDP": 5060, "TCP": 5060}
        self.core.udp = self.network  # type: ignore[assignment]
        self.manager = self._newManager()
        if fenced:
            self.manager.notifier.fence()
        self.manager.load()
        self.manager.install()
        return self.manager

    def receive(self, message: Message, source: Target = WATCHER) -> None:
        self.core.messageReceived(parseMessage(message.toBytes()), source)

    def receiveBytes(self, data: bytes, source: Target = WATCHER) -> None:
        """
        Feed raw bytes, as the UDP listener would (parse errors included).
        """
        from presence.sip.parser import ParseError

        try:
            message = parseMessage(data)
        except ParseError as e:
            self.core.badMessage(e, source)
            return
        self.core.messageReceived(message, source)

    def take(self) -> List[Message]:
        sent = [message for message, _, _ in self.network.sent]
        self.network.sent = []
        return sent

    def responses(self) -> List[Response]:
        return [m for m in self.take() if isinstance(m, Response)]

    def split(self) -> Tuple[List[Response], List[Request]]:
        """
        Take what was sent: the responses and the requests (NOTIFYs).
        """
        sent = self.take()
        return (
            [m for m in sent if isinstance(m, Response)],
            [m for m in sent if isinstance(m, Request)],
        )

    def subscribed(self, **kw: Any) -> Tuple[Request, Response, Request]:
        """
        Subscribe (to bob by default) and answer the first NOTIFY.

        @return: the SUBSCRIBE, its 200 and the first NOTIFY.
        """
        sub = subscribe(**kw)
        self.receive(sub, kw.get("source", WATCHER))
        responses, notifies = self.split()
        assert [r.code for r in responses] == [200], responses
        assert len(notifies) == 1, notifies
        self.answer(notifies[0], source=kw.get("source", WATCHER))
        return sub, responses[0], notifies[0]

    def published(self, body: Optional[bytes] = None, **kw: Any) -> Tuple[str, List[Request]]:
        """
        PUBLISH (for bob by default) and expect 200.

        @return: the entity-tag and the NOTIFYs sent (unanswered).
        """
        self.receive(publish(body=body, **kw), PUBLISHER)
        responses, notifies = self.split()
        assert [r.code for r in responses] == [200], responses
        etag = responses[0].header("sip-etag")
        assert etag
        return etag, notifies

    def answer(self, request: Request, code: int = 200, source: Target = WATCHER) -> None:
        """
        Answer a NOTIFY the server sent, as the watcher would.
        """
        response = Response.forRequest(request, code)
        self.receive(response, source)

    def stop(self) -> None:
        self.manager.stop()
        self.core.transactions.stop()
        self.authorizer.stop()
        self.billingEngine.dispose()


def request(
    method: str,
    uri: str = "sip:bob@example.test",
    fromURI: str = "sip:alice@example.test",
    fromTag: Optional[str] = None,
    toTag: Optional[str] = None,
    callId: Optional[str] = None,
    cseq: int = 1,
    source: Target = WATCHER,
    body: bytes = b"",
    **headers: str,
) -> Request:
    """
    A request from C{source}, with the headers a UA sends; extra headers by
    keyword (underscores become dashes).
    """
    r = Request(method, uri)
    r.addHeader("Via", "SIP/2.0/UDP %s:%d;branch=z9hG4bK%s;rport" % (source.host, source.port, os.urandom(6).hex()))
    r.addHeader("Max-Forwards", "70")
    r.addHeader("From", "<%s>;tag=%s" % (fromURI, fromTag or os.urandom(4).hex()))
    r.addHeader("To", "<%s>%s" % (uri, ";tag=" + toTag if toTag else ""))
    r.addHeader("Call-ID", callId or os.urandom(8).hex())
    r.addHeader("CSeq", "%d %s" % (cseq, method))
    r.addHeader("Contact", "<sip:%s@%s:%d>" % (fromURI.split(":")[1].split("@")[0], source.host, source.port))
    for name, value in headers.items():
        r.setHeader(name.replace("_", "-"), value)
    r.body = body
    return r


def subscribe(uri: str = "sip:bob@example.test", **kw: Any) -> Request:
    kw.setdefault("Event", "presence")
    kw.setdefault("Accept", "application/pidf+xml")
    return request("SUBSCRIBE", uri, **kw)


def refresh(sub: Request, ok: Response, cseq: int, **kw: Any) -> Request:
    """
    An in-dialog SUBSCRIBE for the dialog that C{ok} (the 200 to C{sub})
    established.
    """
    fromURI = sub.fromAddr().uri
    return subscribe(
        sub.uri,
        fromURI=fromURI,
        fromTag=sub.fromAddr().tag,
        toTag=ok.toAddr().tag,
        callId=sub.callId,
        cseq=cseq,
        **kw,
    )


def publish(uri: str = "sip:bob@example.test", body: Optional[bytes] = None, **kw: Any) -> Request:
    kw.setdefault("Event", "presence")
    kw.setdefault("source", PUBLISHER)
    kw.setdefault("fromURI", uri)
    if body is None:
        body = pidf(uri)
    if body:
        kw.setdefault("Content_Type", "application/pidf+xml")
    return request("PUBLISH", uri, body=body, **kw)
