"""
The registrar (RFC 3261 §10.3, RFC 5626 §6) and the presence it gives:
REGISTER with digest authentication, several bindings per AOR with
q-values and +sip.instance/reg-id, 423, un-REGISTER, wildcard removal,
the bindings in the 200, expiry on the clock, reload after a restart,
bindings ending with their TCP connection; registration-derived presence
(open while a binding lives, closed when the last one goes) reaching the
watchers at once; NOTIFYs reusing a registered flow; the store's binding
table on every implementation; STUN keep-alives.

Unit tests on the sans-IO core: a Clock, a fake network, TCP connections
over StringTransport, the in-memory store (and SQLite/PostgreSQL for the
store contract).
"""

from __future__ import annotations

import re
import struct
from typing import Any, Dict, Iterator, List, Optional

import pytest
import pytest_twisted
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import FakeDatagramTransport
from zope.interface.verify import verifyObject

from presence.billing import db
from presence.config import Config, ConfigError
from presence.interfaces import IBindingStore
from presence.registrar.binding import (
    ContactError,
    bindingId,
    bindingKey,
    canonicalContact,
    formatQ,
    parseContacts,
)
from presence.sip.digest import makeAuthorization, parseChallenge
from presence.sip.message import Request, Response
from presence.sip.parser import DEFAULT_LIMITS
from presence.sip.stun import bindingRequest, bindingResponse, isStun, mappedAddress
from presence.sip.target import Target
from presence.sip.transport import SIPDatagramProtocol
from presence.store import BindingRecord, MemoryStore, SQLStore, StoreError
from presence.store import schema
from presence.store.sql import createEngine
from tests.harness import PUBLISHER, WATCHER, pidf, publish, subscribe
from tests.registrarharness import ALICE, BOB, RegistrarHarness, StreamPeer, register
from tests.test_store import pgUrl  # noqa: F401  (the PostgreSQL fixture of bindingStore)

PIDF = "application/pidf+xml"


@pytest.fixture
def make():
    """
    Registrar harnesses (authentication off for example.test unless a
    test asks); each is stopped afterwards and must leave no timer behind.
    """
    made: List[RegistrarHarness] = []

    def factory(**kw: Any) -> RegistrarHarness:
        h = RegistrarHarness(**kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.stop()
        assert h.clock.getDelayedCalls() == []


def contactsOf(response: Response) -> List[str]:
    return response.headerValues("contact")


def expiresOf(value: str) -> int:
    match = re.search(r";expires=(\d+)", value)
    assert match, value
    return int(match.group(1))


def basics(notify: Request) -> List[str]:
    return [b.decode() for b in re.findall(rb"<basic>(\w+)</basic>", notify.body)]


def watched(h: RegistrarHarness, presentity: str = BOB) -> Request:
    """
    Alice subscribes to C{presentity}; return the first NOTIFY (answered).
    """
    _, _, notify = h.subscribed(uri=presentity)
    return notify


# The Contact header of a REGISTER.


def test_parseContacts() -> None:
    wildcard, specs = parseContacts(["*"])
    assert (wildcard, specs) == (True, [])
    assert parseContacts([]) == (False, [])
    _, (a, b) = parseContacts([
        '"Bob" <sip:bob@192.0.2.20:5060;transport=tcp>;expires=120;q=0.7',
        '<sip:bob@198.51.100.1>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=2',
    ])
    assert (a.uri, a.expires, a.q, a.instance, a.regId) == ("sip:bob@192.0.2.20:5060;transport=tcp", 120, 0.7, "", 0)
    assert (b.uri, b.expires, b.q) == ("sip:bob@198.51.100.1", None, None)
    assert (b.instance, b.regId) == ("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", 2)


@pytest.mark.parametrize(
    "values, reason",
    [
        (["*", "<sip:a@b>"], "Wildcard Contact Not Alone"),
        (["<sip:a@b>;q=1.5"], "Bad Contact q"),
        (["<sip:a@b>;q=0.1234"], "Bad Contact q"),
        (["<sip:a@b>;expires=soon"], "Bad Contact expires"),
        (["<sip:a@b>;reg-id=1"], "reg-id Without +sip.instance"),
        (['<sip:a@b>;+sip.instance="<urn:x>";reg-id=0'], "Bad reg-id"),
        (["<no-scheme>"], None),
    ],
)
def test_parseContactsRefuses(values: List[str], reason: Optional[str]) -> None:
    with pytest.raises(ContactError) as caught:
        parseContacts(values)
    if reason is not None:
        assert str(caught.value) == reason


@given(st.lists(st.text(max_size=80), max_size=4))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_parseContactsOnlyRaisesContactError(values: List[str]) -> None:
    """
    Whatever a client writes in Contact, the registrar gets specs or a
    ContactError (a 400), never another exception.
    """
    try:
        _, specs = parseContacts(values)
    except ContactError:
        return
    for spec in specs:
        assert bindingKey(spec.uri, spec.instance, spec.regId)


def test_bindingIdentity() -> None:
    """
    RFC 3261 §19.1.4 comparison for plain contacts (host case, escapes,
    irrelevant parameters ignored; transport kept); instance and reg-id
    when given (RFC 5626), whatever the contact URI.
    """
    assert canonicalContact("sip:%62ob@Host.Example:5060;ob;transport=TCP") == canonicalContact(
        "sip:bob@host.example:5060;transport=tcp"
    )
    assert canonicalContact("sip:Bob@host") != canonicalContact("sip:bob@host")
    assert bindingKey("sip:bob@HOST:5060;ob") == bindingKey("sip:bob@host:5060")
    assert bindingKey("sip:bob@host:5060;transport=tcp") != bindingKey("sip:bob@host:5060")
    assert bindingKey("sip:bob@host:5060") != bindingKey("sip:bob@host")
    assert bindingKey("sip:x@a", "<urn:uuid:1>", 1) == bindingKey("sip:y@b", "<urn:uuid:1>", 1)
    assert bindingKey("sip:x@a", "<urn:uuid:1>", 1) != bindingKey("sip:x@a", "<urn:uuid:1>", 2)
    assert bindingId(BOB, "k") == bindingId(BOB, "k") != bindingId(ALICE, "k")
    assert [formatQ(q) for q in (1.0, 0.5, 0.125, 0.0)] == ["1.0", "0.5", "0.125", "0.0"]


# REGISTER.


def test_registerListsBindings(make) -> None:
    """
    A REGISTER with two contacts (q-values) makes two bindings; the 200
    lists every binding with the time it has left, preferred first, and
    the store holds them once the 200 is sent.
    """
    h = make()
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.20:5060>;q=0.5", "<sip:bob@192.0.2.21:5070>;q=1.0"],
                                  Expires="300"))
    assert contactsOf(ok) == [
        "<sip:bob@192.0.2.21:5070>;expires=300;q=1.0",
        "<sip:bob@192.0.2.20:5060>;expires=300;q=0.5",
    ]
    assert ok.toAddr().tag
    assert sorted(b.contact for b in h.store.bindings.values()) == [
        "sip:bob@192.0.2.20:5060", "sip:bob@192.0.2.21:5070"
    ]
    record = h.store.bindings[bindingId(BOB, bindingKey("sip:bob@192.0.2.20:5060"))]
    assert (record.aor, record.q, record.transport, record.peerHost, record.peerPort, record.flowToken) == (
        BOB, 0.5, "UDP", PUBLISHER.host, PUBLISHER.port, ""
    )
    assert record.owner == h.config.node and record.cseq == 1 and record.callId == "reg-bob"
    # A third contact later: all three in the answer, times running down.
    h.clock.advance(100)
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.22>"], cseq=2, Expires="600"))
    assert [expiresOf(c) for c in contactsOf(ok)] == [600, 200, 200]
    assert contactsOf(ok)[0].startswith("<sip:bob@192.0.2.22>")


def test_expiresParameterHeaderAndDefaults(make) -> None:
    """
    A contact's expires parameter beats the Expires header, which beats
    the default; anything above the maximum is cut down to it.
    """
    h = make(registerDefaultExpires=1800, registerMaxExpires=7200)
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.20>;expires=120", "<sip:bob@192.0.2.21>"],
                                  Expires="240"))
    assert sorted(expiresOf(c) for c in contactsOf(ok)) == [120, 240]
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.22>"], cseq=2))
    assert 1800 in [expiresOf(c) for c in contactsOf(ok)]
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.23>;expires=99999"], cseq=3))
    assert 7200 in [expiresOf(c) for c in contactsOf(ok)]


@pytest.mark.parametrize("where", ["header", "parameter"])
def test_intervalTooBrief(make, where: str) -> None:
    """
    423 with Min-Expires for an expiry below the minimum (RFC 3261 §10.3
    step 7); nothing is registered.
    """
    h = make(registerMinExpires=120)
    if where == "header":
        request = register(Expires="30")
    else:
        request = register(contacts=["<sip:bob@192.0.2.20>;expires=30"])
    h.receive(request, PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.header("min-expires")) == (423, "120")
    assert h.store.bindings == {} and h.registrar.bindings == {}


def test_unregisterOneContact(make) -> None:
    """
    expires=0 on one contact removes that binding only.
    """
    h = make()
    h.registered(register(contacts=["<sip:bob@192.0.2.20>", "<sip:bob@192.0.2.21>"]))
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.20;ob>;expires=0"], cseq=2))
    assert [c.split(">")[0] for c in contactsOf(ok)] == ["<sip:bob@192.0.2.21"]
    assert [b.contact for b in h.store.bindings.values()] == ["sip:bob@192.0.2.21"]


def test_wildcardRemovesEverything(make) -> None:
    h = make()
    h.registered(register(contacts=["<sip:bob@192.0.2.20>", "<sip:bob@192.0.2.21>"]))
    ok, _ = h.registered(register(contacts=["*"], cseq=2, Expires="0"))
    assert contactsOf(ok) == []
    assert h.store.bindings == {} and h.registrar.bindings == {}


@pytest.mark.parametrize(
    "contacts, headers, reason",
    [
        (["*"], {"Expires": "60"}, "Wildcard Needs Expires 0"),
        (["*"], {}, "Wildcard Needs Expires 0"),
        (["*", "<sip:bob@192.0.2.20>"], {"Expires": "0"}, "Wildcard Contact Not Alone"),
        (["<sip:bob@192.0.2.20>;q=2"], {}, "Bad Contact q"),
    ],
)
def test_badContactsAre400(make, contacts: List[str], headers: Dict[str, str], reason: str) -> None:
    h = make()
    h.registered(register(contacts=["<sip:bob@192.0.2.20>"]))
    h.receive(register(contacts=contacts, cseq=2, **headers), PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.reason) == (400, reason)
    assert len(h.store.bindings) == 1


def test_queryChangesNothing(make) -> None:
    """
    A REGISTER without Contact asks for the current bindings.
    """
    h = make()
    h.registered(register(contacts=["<sip:bob@192.0.2.20>"], Expires="300"))
    h.clock.advance(10)
    ok, _ = h.registered(register(contacts=[], cseq=2))
    assert contactsOf(ok) == ["<sip:bob@192.0.2.20>;expires=290"]
    other, _ = h.registered(register(ALICE, contacts=[]))
    assert contactsOf(other) == []


def test_callIdAndCSeqOrdering(make) -> None:
    """
    RFC 3261 §10.3 step 7: an update from the same Call-ID with a CSeq
    not above the binding's fails; another Call-ID (a rebooted UA) may
    update it whatever its CSeq.
    """
    h = make()
    h.registered(register(cseq=5))
    h.receive(register(cseq=5, Expires="0"), PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.reason) == (500, "CSeq Out Of Order")
    assert len(h.registrar.bindings[BOB]) == 1
    ok, _ = h.registered(register(callId="rebooted", cseq=1, Expires="0"))
    assert contactsOf(ok) == []


def test_instanceAndRegId(make) -> None:
    """
    SIP Outbound: a contact with +sip.instance and reg-id is one binding
    per (instance, reg-id); a new contact of the same pair replaces the
    old one; the 200 says Require: outbound (the registrar is the first
    hop) and, when configured, the keep-alive interval.
    """
    h = make(registerFlowTimer=25)
    instance = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    ok, _ = h.registered(register(contacts=["<sip:bob@192.0.2.20:5060;ob>;%s;reg-id=1" % (instance,),
                                            "<sip:bob@192.0.2.20:5062;ob>;%s;reg-id=2" % (instance,)]))
    assert len(contactsOf(ok)) == 2
    assert ok.header("require") == "outbound" and ok.header("flow-timer") == "25"
    assert all(instance in c for c in contactsOf(ok))
    # The UA's address changed (a NAT rebinding): same instance and reg-id.
    ok, _ = h.registered(register(contacts=["<sip:bob@198.51.100.7:6000;ob>;%s;reg-id=1" % (instance,)], cseq=2))
    assert sorted(c.split(";")[0] for c in contactsOf(ok)) == ["<sip:bob@192.0.2.20:5062", "<sip:bob@198.51.100.7:6000"]
    assert len(h.store.bindings) == 2
    # Without reg-id, no outbound.
    ok, _ = h.registered(register(ALICE, contacts=["<sip:alice@192.0.2.10>"]))
    assert ok.header("require") is None and ok.header("flow-timer") is None


def test_tooManyBindings(make) -> None:
    h = make(registerMaxBindings=2)
    h.registered(register(contacts=["<sip:bob@192.0.2.20>", "<sip:bob@192.0.2.21>"]))
    h.receive(register(contacts=["<sip:bob@192.0.2.22>"], cseq=2), PUBLISHER)
    (response,) = h.responses()
    assert response.code == 403
    # Replacing one is fine.
    h.registered(register(contacts=["<sip:bob@192.0.2.22>", "<sip:bob@192.0.2.20>;expires=0"], cseq=3))


@pytest.mark.parametrize(
    "to, code",
    [("sip:bob@elsewhere.test", 404), ("sip:example.test", 400), ("<<bad", 400)],
)
def test_notOurs(make, to: str, code: int) -> None:
    h = make()
    request = register()
    request.setHeader("To", "<%s>" % (to,) if not to.startswith("<") else to)
    h.receive(request, PUBLISHER)
    (response,) = h.responses()
    assert response.code == code


def test_startingUpAnswers503() -> None:
    """
    Until the registrar has reloaded, the manager service answers REGISTER
    503 with Retry-After, as it does SUBSCRIBE and PUBLISH.
    """
    from presence.manager.service import _unavailable
    from presence.sip.core import SIPCore
    from tests.harness import FakeNetwork
    from twisted.internet.task import Clock

    clock = Clock()
    core = SIPCore(clock, advertisedHost="192.0.2.1")
    core.udp = FakeNetwork()  # type: ignore[assignment]
    core.addHandler("REGISTER", _unavailable(core))
    core.messageReceived(register(), PUBLISHER)
    ((response, _, _),) = core.udp.sent  # type: ignore[attr-defined]
    assert (response.code, response.header("retry-after")) == (503, "1")
    core.transactions.stop()


# Authentication (billing's digest, shared with SUBSCRIBE and PUBLISH).


def withAccounts(make: Any, **kw: Any) -> RegistrarHarness:
    kw.setdefault("billingNoAuthDomains", ())
    h = make(**kw)
    for aor in (ALICE, BOB):
        h.billing(lambda conn, aor=aor: db.addAccount(conn, aor, "pw-" + aor[4:7], "acme"))
    return h


def signed(request: Request, challenge: str, user: str, nc: int = 1, cnonce: Optional[str] = None) -> Request:
    request.setHeader(
        "Authorization",
        makeAuthorization(challenge, request.method, request.uri, user[4:].split("@")[0], "pw-" + user[4:7],
                          nc=nc, cnonce=cnonce),
    )
    return request


def test_registerIsAuthenticated(make) -> None:
    """
    REGISTER is challenged (realm: the AOR's domain), registered with good
    credentials, challenged again with a wrong password; a blocked account
    gets 403.
    """
    h = withAccounts(make)
    h.receive(register(), PUBLISHER)
    (challenge,) = h.responses()
    assert challenge.code == 401
    offered = challenge.headerValues("www-authenticate")
    assert [parseChallenge(v).realm for v in offered] == ["example.test"] * len(offered)
    assert h.store.bindings == {}
    ok, _ = h.registered(signed(register(cseq=2), offered[0], BOB))
    assert len(contactsOf(ok)) == 1
    wrong = register(ALICE, contacts=["<sip:alice@192.0.2.10>"])
    wrong.setHeader("Authorization", makeAuthorization(offered[0], "REGISTER", wrong.uri, "alice", "guess"))
    h.receive(wrong, WATCHER)
    (again,) = h.responses()
    assert again.code == 401
    h.billing(lambda conn: db.setStatus(conn, ALICE, "blocked"))
    h.authorizer.poll()
    h.receive(register(ALICE, contacts=["<sip:alice@192.0.2.10>"]), WATCHER)
    (c,) = h.responses()
    h.receive(signed(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], cseq=2), c.headerValues("www-authenticate")[0], ALICE), WATCHER)
    (blocked,) = h.responses()
    assert blocked.code == 403


def test_billingDownIs500(make) -> None:
    h = withAccounts(make)

    class Broken:
        def account(self, aor: str) -> Deferred:
            return fail(StoreError("billing down"))

    h.registrar.gate.authorizer = Broken()
    h.receive(register(), PUBLISHER)
    (challenge,) = h.responses()
    h.receive(signed(register(cseq=2), challenge.headerValues("www-authenticate")[0], BOB), PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.header("retry-after")) == (500, "5")
    assert h.registrar.counters["billingErrors"] == 1


# Writes: 200 after commit.


class HeldBindings(MemoryStore):
    """
    A memory store whose binding writes wait until the test commits or
    fails them.
    """

    def __init__(self) -> None:
        MemoryStore.__init__(self)
        self.held: List[Any] = []

    def putBinding(self, record: BindingRecord) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((MemoryStore.putBinding, record, d))
        return d

    def removeBinding(self, bindingId: str) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((MemoryStore.removeBinding, bindingId, d))
        return d

    def commitAll(self) -> None:
        while self.held:
            method, arg, d = self.held.pop(0)
            method(self, arg).chainDeferred(d)

    def failAll(self) -> None:
        while self.held:
            _, _, d = self.held.pop(0)
            d.errback(StoreError("injected"))


def test_answeredOnlyOnceCommitted(make) -> None:
    """
    The 200 waits for the writes, which a REGISTER of several contacts
    issues together (one group commit); memory changes only then.
    """
    store = HeldBindings()
    store.start()
    h = make(store=store)
    h.receive(register(contacts=["<sip:bob@192.0.2.20>", "<sip:bob@192.0.2.21>"]), PUBLISHER)
    assert h.responses() == [] and len(store.held) == 2
    assert h.registrar.bindings == {}
    store.commitAll()
    (ok,) = h.responses()
    assert ok.code == 200 and len(contactsOf(ok)) == 2
    assert len(store.bindings) == 2


def test_failedWriteIs500AndUndone(make) -> None:
    store = HeldBindings()
    store.start()
    h = make(store=store)
    h.receive(register(contacts=["<sip:bob@192.0.2.20>"]), PUBLISHER)
    store.commitAll()
    h.responses()
    h.receive(register(contacts=["<sip:bob@192.0.2.21>", "<sip:bob@192.0.2.20>;expires=0"], cseq=2), PUBLISHER)
    # The put commits, the removal fails.
    method, arg, d = store.held.pop(0)
    method(store, arg).chainDeferred(d)
    _, _, d = store.held.pop(0)
    d.errback(StoreError("injected"))
    (response,) = h.responses()
    assert (response.code, response.header("retry-after")) == (500, "5")
    # Memory is as before, and the store again holds what memory holds.
    store.commitAll()
    assert [b.contact for b in h.registrar.bindingsOf(BOB)] == ["sip:bob@192.0.2.20"]
    assert [b.contact for b in store.bindings.values()] == ["sip:bob@192.0.2.20"]
    assert h.registrar.counters["storeErrors"] == 1


# Expiry and reload.


def test_bindingsExpire(make) -> None:
    h = make()
    h.registered(register(contacts=["<sip:bob@192.0.2.20>;expires=60", "<sip:bob@192.0.2.21>;expires=120"]))
    h.clock.advance(59)
    assert len(h.registrar.bindingsOf(BOB)) == 2
    h.clock.advance(1.5)
    assert [b.contact for b in h.registrar.bindingsOf(BOB)] == ["sip:bob@192.0.2.21"]
    assert len(h.store.bindings) == 1
    h.clock.advance(60)
    assert h.registrar.bindings == {} and h.store.bindings == {}
    assert h.registrar.counters["expired"] == 2


def test_reloadAfterRestart(make) -> None:
    """
    UDP bindings come back after a restart with their remaining time;
    expired ones and those tied to a connection of the previous run (it
    died with the process) are deleted.
    """
    h = make()
    peer = StreamPeer(h.core)
    h.registered(register(contacts=["<sip:bob@192.0.2.20>"], Expires="600"))
    h.registered(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], Expires="60"))
    peer.send(register("sip:carol@example.test", contacts=["<sip:carol@192.0.2.30:40000;transport=tcp>"],
                       source=peer.source))
    (ok,), _ = peer.split()
    assert ok.code == 200 and len(h.store.bindings) == 3
    h.clock.advance(100)
    h.restart()
    assert list(h.registrar.bindings) == [BOB]
    assert list(h.store.bindings.values())[0].aor == BOB and len(h.store.bindings) == 1
    ok, _ = h.registered(register(contacts=[], cseq=5))
    assert contactsOf(ok) == ["<sip:bob@192.0.2.20>;expires=500"]
    h.clock.advance(500)
    assert h.registrar.bindings == {}


# Connections.


def test_closedConnectionRemovesItsBindings(make) -> None:
    """
    Bindings registered over a TCP connection end when it closes; those
    of other connections and of UDP stay.
    """
    h = make()
    one, two = StreamPeer(h.core, port=40001), StreamPeer(h.core, port=40002)
    one.send(register(contacts=["<sip:bob@192.0.2.30:40001;transport=tcp>"], source=one.source))
    two.send(register(contacts=["<sip:bob@192.0.2.30:40002;transport=tcp>"], source=two.source, cseq=2))
    h.registered(register(contacts=["<sip:bob@192.0.2.20>"], cseq=3))
    assert [r.code for r in one.split()[0] + two.split()[0]] == [200, 200]
    record = h.store.bindings[bindingId(BOB, bindingKey("sip:bob@192.0.2.30:40001;transport=tcp"))]
    assert (record.transport, record.flowToken) == ("TCP", one.token)
    one.close()
    assert sorted(b.contact for b in h.registrar.bindingsOf(BOB)) == [
        "sip:bob@192.0.2.20", "sip:bob@192.0.2.30:40002;transport=tcp"
    ]
    assert len(h.store.bindings) == 2
    assert h.registrar.counters["flowClosed"] == 1


def test_refreshOverNewConnectionMovesTheBinding(make) -> None:
    """
    A UA that reconnects and refreshes its binding over the new
    connection keeps it when the old connection's close comes late.
    """
    h = make()
    old, new = StreamPeer(h.core, port=40001), StreamPeer(h.core, port=40003)
    old.send(register(source=old.source))
    new.send(register(source=new.source, cseq=2))
    old.close()
    assert [b.flowToken for b in h.registrar.bindingsOf(BOB)] == [new.token]
    new.close()
    assert h.registrar.bindings == {}


def test_connectionClosedBeforeCommit(make) -> None:
    store = HeldBindings()
    store.start()
    h = make(store=store)
    peer = StreamPeer(h.core)
    peer.send(register(source=peer.source))
    peer.close()
    store.commitAll()
    store.commitAll()
    assert h.registrar.bindings == {} and store.bindings == {}


# Presence derived from registration.


def test_registrationGivesPresence(make) -> None:
    """
    Without publication: closed before any registration, open (with the
    contact) as soon as a binding is committed, closed as soon as the
    last binding goes, each change NOTIFYed at once.
    """
    h = make()
    first = watched(h)
    assert basics(first) == ["closed"]
    ok, notifies = h.registered(register(contacts=["<sip:bob@192.0.2.20>"]))
    (notify,) = notifies
    assert basics(notify) == ["open"] and b"<contact>sip:bob@192.0.2.20</contact>" in notify.body
    h.answer(notify)
    # A second binding changes nothing a watcher sees (bytes compared).
    _, notifies = h.registered(register(contacts=["<sip:bob@192.0.2.21>;q=0.1"], cseq=2))
    assert notifies == []
    _, notifies = h.registered(register(contacts=["<sip:bob@192.0.2.20>;expires=0"], cseq=3))
    (notify,) = notifies
    assert b"<contact>sip:bob@192.0.2.21</contact>" in notify.body
    h.answer(notify)
    _, notifies = h.registered(register(contacts=["*"], cseq=4, Expires="0"))
    (notify,) = notifies
    assert basics(notify) == ["closed"]


def test_expiryAndClosedConnectionNotify(make) -> None:
    h = make()
    watched(h)
    _, notifies = h.registered(register(contacts=["<sip:bob@192.0.2.20>;expires=60"]))
    h.answerAll(notifies, WATCHER)
    h.clock.advance(61)
    _, (notify,) = h.split()
    assert basics(notify) == ["closed"]
    h.answer(notify)
    peer = StreamPeer(h.core)
    peer.send(register(contacts=["<sip:bob@192.0.2.30:40000;transport=tcp>"], source=peer.source, cseq=2))
    _, (notify,) = h.split()
    assert basics(notify) == ["open"]
    h.answer(notify)
    peer.close()
    _, (notify,) = h.split()
    assert basics(notify) == ["closed"]


def test_publicationWinsOverRegistration(make) -> None:
    """
    A live publication is what watchers see; registering or not changes
    nothing then; when it goes, the registration shows again.
    """
    h = make()
    watched(h)
    etag, notifies = h.published(body=pidf(BOB, "closed", "pub"))
    h.answerAll(notifies, WATCHER)
    _, notifies = h.registered(register())
    assert notifies == []
    h.receive(publish(body=b"", SIP_If_Match=etag, Expires="0"), PUBLISHER)
    _, (notify,) = h.split()
    assert basics(notify) == ["open"]


def test_registeredBeforeWatched(make) -> None:
    """
    A presentity nobody watched when it registered is open to its first
    watcher, and after a restart.
    """
    h = make()
    h.registered(register())
    assert h.manager.presentities == {}
    assert basics(watched(h)) == ["open"]
    h.restart()
    # The reloaded watcher is told its state again (notify_on_start): open,
    # the bindings being reloaded before the subscriptions.
    (onStart,) = h.take()
    assert basics(onStart) == ["open"]
    h.answer(onStart)
    h.receive(subscribe(fromURI="sip:carol@example.test"), WATCHER)
    _, (notify,) = h.split()
    assert basics(notify) == ["open"]
    h.answer(notify)


def test_notifyReusesRegisteredFlow(make) -> None:
    """
    A watcher on TCP whose SUBSCRIBE connection closed still gets its
    NOTIFYs over the connection it registered its contact over.
    """
    h = make()
    subscribing, registering = StreamPeer(h.core, port=41000), StreamPeer(h.core, port=41001)
    contact = "<sip:alice@192.0.2.30:41001;transport=tcp>"
    registering.send(register(ALICE, contacts=[contact], source=registering.source))
    assert [r.code for r in registering.split()[0]] == [200]
    request = subscribe(fromURI=ALICE, source=subscribing.source)
    request.setHeader("Contact", contact)
    subscribing.send(request)
    (ok,), (first,) = subscribing.split()
    subscribing.send(Response.forRequest(first, 200))
    subscribing.close()
    h.registered(register())
    assert subscribing.take() == []
    (notify,) = registering.take()
    assert isinstance(notify, Request) and notify.method == "NOTIFY" and basics(notify) == ["open"]


# The dispatcher forwards REGISTER by the AOR of its To.


def test_dispatcherForwardsRegisterByTo() -> None:
    from presence.dispatcher.dispatcher import FORWARDED_METHODS, _presentityKey

    assert "REGISTER" in FORWARDED_METHODS
    assert _presentityKey(register(), None) == BOB
    assert _presentityKey(register(ALICE), None) == ALICE
    assert _presentityKey(subscribe(), None) == BOB


def test_dispatcherRelaysRegister() -> None:
    """
    Through a dispatching node, REGISTER goes to the manager that gets the
    AOR's SUBSCRIBEs (hash of the To, whatever the Request-URI), without
    a Record-Route, and its answer comes back to the UA.
    """
    from tests.test_dispatcher import UA, Node
    from tests.test_dispatcher import subscribe as dispatchedSubscribe

    node = Node()
    node.receive(dispatchedSubscribe(BOB), UA)
    ((_, subHost, subPort),) = node.takeNonPing()
    request = register(source=UA, uri="sip:example.test;transport=udp")
    node.receive(request, UA)
    ((forwarded, host, port),) = node.takeNonPing()
    assert isinstance(forwarded, Request) and forwarded.method == "REGISTER"
    assert (host, port) == (subHost, subPort)
    assert forwarded.header("record-route") is None and len(forwarded.vias()) == 2
    node.receive(Response.forRequest(forwarded, 200), Target("UDP", host, port))
    ((answer, toHost, toPort),) = node.takeNonPing()
    assert isinstance(answer, Response) and answer.code == 200 and (toHost, toPort) == (UA.host, UA.port)
    node.dispatcher.stop()


# Configuration.


def test_registrarSettings() -> None:
    config = Config.fromString(
        "[registrar]\nmin_expires = 30\ndefault_expires = 600\nmax_expires = 3600\nmax_bindings = 4\nflow_timer = 25\n"
    )
    assert (config.registerMinExpires, config.registerDefaultExpires, config.registerMaxExpires) == (30, 600, 3600)
    assert (config.registerMaxBindings, config.registerFlowTimer) == (4, 25)
    assert Config().registerFlowTimer == 0
    with pytest.raises(ConfigError):
        Config.fromString("[registrar]\nmin_expires = 0\n")


# The store's bindings, on every implementation.


def binding(n: int, **changes: Any) -> BindingRecord:
    fields: Dict[str, Any] = dict(
        id="b%d" % (n,),
        aor=BOB,
        contact="sip:bob@192.0.2.%d:5060" % (n,),
        expiresAt=2000000000.5,
        registeredAt=1700000000.25,
        callId="call-%d" % (n,),
        cseq=7,
        owner="manager-a",
        transport="TCP",
        peerHost="192.0.2.%d" % (n,),
        peerPort=40000 + n,
        flowToken="f%d" % (n,),
        instance='<urn:uuid:"quoted">',
        regId=n,
        q=0.5,
    )
    fields.update(changes)
    return BindingRecord(**fields)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def bindingStore(request: Any, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        store: Any = MemoryStore()
    elif request.param == "sqlite":
        store = SQLStore("sqlite:///%s" % (tmp_path / "store.sqlite",))
    else:
        store = SQLStore(request.getfixturevalue("pgUrl"))
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())



@pytest_twisted.inlineCallbacks
def test_storeBindings(bindingStore: Any) -> Any:
    """
    putBinding inserts or replaces by id (several in one batch too),
    removeBinding deletes (a missing one is fine), loadBindings reads all
    or one owner's; values round-trip exactly, q may be absent.
    """
    store = bindingStore
    assert verifyObject(IBindingStore, store)
    yield store.putBinding(binding(1))
    yield store.putBinding(binding(2, owner="manager-b", q=None, instance="", regId=0, flowToken=""))
    loaded = yield store.loadBindings()
    assert sorted(loaded, key=lambda b: b.id) == [
        binding(1), binding(2, owner="manager-b", q=None, instance="", regId=0, flowToken="")
    ]
    # Replace twice in one group commit, and remove, all issued together.
    from twisted.internet.defer import gatherResults

    yield gatherResults([
        store.putBinding(binding(1, cseq=8)),
        store.putBinding(binding(1, cseq=9, expiresAt=2000000100.0)),
        store.putBinding(binding(3)),
        store.removeBinding("b2"),
        store.removeBinding("missing"),
    ])
    mine = yield store.loadBindings("manager-a")
    assert sorted(mine, key=lambda b: b.id) == [binding(1, cseq=9, expiresAt=2000000100.0), binding(3)]
    assert (yield store.loadBindings("manager-b")) == []
    with pytest.raises(TypeError):
        yield store.putBinding({"id": "x"})


@pytest_twisted.inlineCallbacks
def test_schemaStep3KeepsData(tmp_path: Any) -> Any:
    """
    A version-2 database (subscriptions, publications, billing) takes
    step 3 (bindings) with its rows intact.
    """
    url = "sqlite:///%s" % (tmp_path / "v2.sqlite",)
    engine = createEngine(url)
    try:
        with engine.connect() as conn:
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                assert schema.upgrade(conn, target=2) == 2
                db.addAccount(conn, BOB, "pw", "acme")
    finally:
        engine.dispose()
    store = SQLStore(url)
    yield store.start()
    try:
        assert store.schemaVersion == schema.CURRENT_VERSION
        yield store.putBinding(binding(1))
        assert len((yield store.loadBindings())) == 1
        accounts = yield store.runRead(lambda conn: conn.execute(sa.text("SELECT aor FROM accounts")).scalars().all())
        assert accounts == [BOB]
    finally:
        yield store.stop()


# STUN keep-alives on the SIP UDP port (RFC 5626 §4.4.2).


def test_stunBindingAnswered() -> None:
    transaction = bytes(range(12))
    request = bindingRequest(transaction)
    assert isStun(request)
    response = bindingResponse(request, "198.51.100.7", 40123)
    assert response is not None and isStun(response) and response[8:20] == transaction
    assert mappedAddress(response) == ("198.51.100.7", 40123)
    six = bindingResponse(request, "2001:db8::7", 5060)
    assert six is not None and mappedAddress(six) == ("2001:db8::7", 5060)
    # Not a Binding request, or a length that lies: no answer.
    assert bindingResponse(b"\x01\x01" + request[2:], "198.51.100.7", 1) is None
    assert bindingResponse(request[:2] + struct.pack("!H", 8) + request[4:], "198.51.100.7", 1) is None
    # A comprehension-required attribute we do not know: no answer.
    unknown = struct.pack("!HHI", 0x0001, 8, 0x2112A442) + transaction + struct.pack("!HHI", 0x0024, 4, 1)
    assert bindingResponse(unknown, "198.51.100.7", 1) is None


@given(st.binary(max_size=120), st.integers(min_value=1, max_value=65535))
@settings(max_examples=300)
def test_stunNeverRaises(data: bytes, port: int) -> None:
    response = bindingResponse(b"\x00\x01" + data, "192.0.2.1", port)
    assert response is None or isStun(response)


def test_udpListenerAnswersStun() -> None:
    """
    The UDP listener answers a STUN keep-alive on the SIP port and counts
    it; SIP still reaches the core.
    """
    from presence.sip.core import SIPCore
    from twisted.internet.task import Clock

    core = SIPCore(Clock())
    protocol = SIPDatagramProtocol(core, DEFAULT_LIMITS)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    protocol.datagramReceived(bindingRequest(b"k" * 12), ("192.0.2.40", 5062))
    ((data, addr),) = transport.written
    assert addr == ("192.0.2.40", 5062) and mappedAddress(data) == ("192.0.2.40", 5062)
    assert core.counters["keepalives"] == 1
    protocol.datagramReceived(b"\x00\x01garbage", ("192.0.2.40", 5062))
    assert len(transport.written) == 1 and core.counters["malformed"] == 1
    core.transactions.stop()
