"""
What real clients send, one quirk at a time, and the server taking it.

Each quirk was seen from baresip 1.0.0 (libre 1.1.0, Debian's) against this
server, or is named by the registrar issue: body-less UDP requests without
Content-Length; a preloaded Route naming the server (an outbound proxy
setting); SUBSCRIBE without Accept; a first PUBLISH whose <basic> is
"unknown"; two initial PUBLISHes racing at start-up; credentials sent
pre-emptively with the nonce of an earlier challenge (REGISTER's, reused
for SUBSCRIBE and PUBLISH); an empty Supported header; libre's digest that
gives up on any challenge that is not MD5, served by the challenges per
User-Agent of presence.billing.quirks.
"""

from __future__ import annotations

import os
import re
from typing import Any, List, Optional

import pytest

from presence.billing import db
from presence.dispatcher.dispatcher import Dispatcher
from presence.dispatcher.managers import ManagerSpec
from presence.billing.quirks import KNOWN_QUIRKS, ChallengeQuirks, parseQuirks
from presence.config import Config, ConfigError
from presence.sip.digest import MD5, SHA256, makeAuthorization, parseChallenge
from presence.sip.message import Request, Response
from tests.harness import PUBLISHER, WATCHER, HeldStore, publish, refresh, subscribe
from tests.registrarharness import ALICE, BOB, RegistrarHarness, register
from tests.serverprocess import REPO
from tests.test_registrar import make  # noqa: F401 (fixture)

PIDF = "application/pidf+xml"
BARESIP = "baresip v1.0.0 (x86_64/linux)"

# baresip's first PUBLISH (presence module, publisher.c), as captured.
BARESIP_UNKNOWN = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\r\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf"\r\n'
    b'    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"\r\n'
    b'    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"\r\n'
    b'    entity="sip:bob@example.test">\r\n'
    b'  <dm:person id="p4159"><rpid:activities/></dm:person>\r\n'
    b'  <tuple id="t4109">\r\n'
    b"    <status>\r\n"
    b"      <basic>%s</basic>\r\n"
    b"    </status>\r\n"
    b"    <contact>sip:bob@example.test</contact>\r\n"
    b"  </tuple>\r\n"
    b"</presence>\r\n"
)


def baresipBody(basic: str) -> bytes:
    return BARESIP_UNKNOWN % (basic.encode(),)


def basics(message: Request) -> List[str]:
    return [b.decode() for b in re.findall(rb"<basic>(\w+)</basic>", message.body)]


def seen(h: RegistrarHarness, method: str) -> List[Request]:
    """
    Record the requests of C{method} as its handler receives them.
    """
    requests: List[Request] = []
    handler = h.core.handlers[method]

    def spy(request: Request, tx: Any) -> None:
        requests.append(request)
        handler(request, tx)

    h.core.handlers[method] = spy
    return requests


# Body-less requests over UDP without Content-Length.


def test_noContentLengthOnUdp(make) -> None:
    """
    A REGISTER and a SUBSCRIBE without Content-Length (allowed over UDP,
    RFC 3261 §20.14) are served.
    """
    h = make()
    head = (
        "REGISTER sip:example.test;transport=udp SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK99e152da;rport\r\n"
        "Contact: <sip:bob-0x55c2e569e550@192.0.2.20:5060>;expires=60\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:bob@example.test>\r\n"
        "From: <sip:bob@example.test>;tag=20e66a270320cdb4\r\n"
        "Call-ID: ee41f3cf3b97da50\r\n"
        "CSeq: 12025 REGISTER\r\n"
        "User-Agent: baresip v1.0.0 (x86_64/linux)\r\n"
        "\r\n"
    )
    h.receiveBytes(head.encode(), PUBLISHER)
    (ok,) = h.responses()
    assert ok.code == 200 and ok.header("contact").startswith("<sip:bob-0x55c2e569e550@192.0.2.20:5060>")
    h.receiveBytes(
        (
            "SUBSCRIBE sip:bob@example.test SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKce1f18c6;rport\r\n"
            "Contact: <sip:alice@192.0.2.10:5060>\r\n"
            "To: <sip:bob@example.test>\r\n"
            "From: <sip:alice@example.test>;tag=f45adb7c\r\n"
            "Call-ID: 45a184fefa5bbda3\r\n"
            "CSeq: 58445 SUBSCRIBE\r\n"
            "Event: presence\r\n"
            "Expires: 600\r\n"
            "\r\n"
        ).encode(),
        WATCHER,
    )
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200] and basics(notifies[0]) == ["open"]


# A preloaded Route naming the server.


@pytest.mark.parametrize(
    "route",
    [
        "<sip:192.0.2.1:5060;transport=udp;lr>",
        "<sip:192.0.2.1;lr>",
        "<sip:example.test;lr>",
    ],
)
@pytest.mark.parametrize("method", ["REGISTER", "SUBSCRIBE", "PUBLISH"])
def test_preloadedRouteToUsIsRemoved(make, route: str, method: str) -> None:
    """
    baresip with an outbound proxy preloads a Route naming it (libre adds
    ;lr); the server takes it off as loose routing says and serves the
    request.
    """
    h = make()
    requests = seen(h, method)
    if method == "REGISTER":
        request = register(Route=route)
    elif method == "SUBSCRIBE":
        request = subscribe(Route=route)
    else:
        request = publish(Route=route)
    h.receive(request, WATCHER if method == "SUBSCRIBE" else PUBLISHER)
    responses, _ = h.split()
    assert [r.code for r in responses] == [200]
    assert requests[0].header("route") is None


def test_routeToOthersIsLeftAndServed(make) -> None:
    """
    A Route naming another host (or another port of ours) is not ours to
    remove; this server is no proxy and serves the request anyway.
    """
    h = make()
    requests = seen(h, "SUBSCRIBE")
    h.receive(subscribe(Route="<sip:192.0.2.99;lr>"), WATCHER)
    h.receive(subscribe(Route="<sip:192.0.2.1:5070;lr>", fromTag="other"), WATCHER)
    responses, _ = h.split()
    assert [r.code for r in responses] == [200, 200]
    assert [r.header("route") for r in requests] == ["<sip:192.0.2.99;lr>", "<sip:192.0.2.1:5070;lr>"]


def test_twoRoutesToUsBothRemoved(make) -> None:
    h = make()
    requests = seen(h, "SUBSCRIBE")
    request = subscribe()
    request.addHeader("Route", "<sip:192.0.2.1;lr>")
    request.addHeader("Route", "<sip:example.test;lr>")
    request.addHeader("Route", "<sip:192.0.2.99;lr>")
    h.receive(request, WATCHER)
    assert requests[0].headerValues("route") == ["<sip:192.0.2.99;lr>"]


def test_dispatcherKeepsItsRoutes() -> None:
    """
    The dispatching node reads its own signed Routes: its core must not
    strip them.
    """
    from presence.sip.core import SIPCore
    from twisted.internet.task import Clock

    clock = Clock()
    core = SIPCore(clock)
    assert core.removeOwnRoute
    dispatcher = Dispatcher(core, [ManagerSpec("m1", "UDP", "127.0.0.3", 5070)], clock, b"s" * 32)
    dispatcher.install()
    assert not core.removeOwnRoute and "REGISTER" in core.handlers


# SUBSCRIBE without Accept.


def test_subscribeWithoutAcceptGetsPidf(make) -> None:
    """
    RFC 3856 §6.7: no Accept means PIDF.
    """
    h = make()
    request = subscribe()
    request.removeHeader("Accept")
    h.receive(request, WATCHER)
    responses, (notify,) = h.split()
    assert [r.code for r in responses] == [200]
    assert notify.header("content-type") == PIDF and notify.body.startswith(b"<?xml")


# A first PUBLISH with <basic>unknown.


def test_firstPublishBasicUnknown(make) -> None:
    """
    baresip publishes <basic>unknown</basic> before it knows its state:
    not PIDF's open/closed, yet accepted (the tuple keeps its contact, the
    status is left without basic), and the next PUBLISH's state replaces
    it.
    """
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=baresipBody("unknown"))
    assert basics(notify) == [] and b"<status/>" in notify.body and b'<tuple id="t4109">' in notify.body
    h.answer(notify)
    _, (notify,) = h.published(body=baresipBody("open"), SIP_If_Match=etag)
    assert basics(notify) == ["open"]


# Two initial PUBLISHes racing.


def test_racingInitialPublishes(make) -> None:
    """
    baresip publishes at start-up and again when its registration
    succeeds, before the first answer: two initial PUBLISHes in flight at
    once.  Both succeed with their own entity-tags and compose (the same
    tuple id: the newer wins); changes then go to one of them and win over
    the other, which lasts until it expires.
    """
    store = HeldStore()
    store.inner.start()
    store.holding = False
    h = make(store=store)
    h.subscribed()
    store.holding = True
    h.receive(publish(body=baresipBody("unknown"), Expires="60", callId="p1"), PUBLISHER)
    h.clock.advance(0.01)
    h.receive(publish(body=baresipBody("open"), Expires="60", callId="p2"), PUBLISHER)
    assert h.responses() == [] and store.methods() == ["putPublication", "putPublication"]
    store.holding = False
    store.commitAll()
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200, 200]
    first, second = (r.header("sip-etag") for r in responses)
    assert first and second and first != second
    # One NOTIFY in flight at a time: the second state follows its answer.
    (notify,) = notifies
    assert basics(notify) == []
    h.answer(notify)
    _, (notify,) = h.split()
    assert basics(notify) == ["open"]
    h.answer(notify)
    # The UA modifies the publication it kept: closed wins (newest).
    h.clock.advance(1)
    _, (notify,) = h.published(body=baresipBody("closed"), SIP_If_Match=second, Expires="60")
    assert basics(notify) == ["closed"]
    h.answer(notify)
    # The other one expires; the state stays what the UA said last.
    h.clock.advance(59.5)
    assert first not in h.manager.publications and len(h.manager.publications) == 1
    assert basics(_notifyOf(h.manager.documentOf(BOB))) == ["closed"]


def _notifyOf(body: bytes) -> Request:
    request = Request("NOTIFY", "sip:x")
    request.body = body
    return request


# Credentials sent pre-emptively with an earlier challenge's nonce.


def _authHarness(make: Any, **kw: Any) -> RegistrarHarness:
    """
    Authentication on, the default challenges, accounts alice and bob
    (password "secret").
    """
    kw.setdefault("billingNoAuthDomains", ())
    h = make(**kw)
    for aor in (ALICE, BOB):
        h.billing(lambda conn, aor=aor: db.addAccount(conn, aor, "secret", "acme"))
    return h


def _sign(request: Request, challenge: str, nc: int, cnonce: Optional[str] = None) -> Request:
    user = request.fromAddr().uri[4:].split("@")[0]
    request.setHeader(
        "Authorization", makeAuthorization(challenge, request.method, request.uri, user, "secret", nc=nc, cnonce=cnonce)
    )
    return request


def test_preemptiveCredentialsWithEarlierNonce(make) -> None:
    """
    libre keeps the nonce of its last challenge per realm and signs the
    next requests with it (nonce-count up, a new cnonce, each request's own
    URI): REGISTER's nonce then serves SUBSCRIBE, PUBLISH and in-dialog
    refreshes without a new challenge while it is fresh.  Once it has
    expired the answer is 401 with stale=true, so the UA signs again
    without asking its user; a replayed count is refused.
    """
    h = _authHarness(make, billingNonceLifetime=300.0)
    h.receive(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], User_Agent=BARESIP), WATCHER)
    (challenge,) = h.responses()
    assert challenge.code == 401
    (offered,) = challenge.headerValues("www-authenticate")
    h.registered(_sign(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], User_Agent=BARESIP, cseq=2), offered, 1), WATCHER)
    sub = _sign(subscribe(fromURI=ALICE, User_Agent=BARESIP), offered, 2)
    h.receive(sub, WATCHER)
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200]
    h.answerAll(notifies, WATCHER)
    published = _sign(publish(ALICE, fromURI=ALICE, User_Agent=BARESIP), offered, 3)
    h.receive(published, PUBLISHER)
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200]
    h.answerAll(notifies, WATCHER)
    again = _sign(refresh(sub, _ok(h, sub), 5), offered, 4)
    h.receive(again, WATCHER)
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200]
    h.answerAll(notifies, WATCHER)
    # The same credentials again (same cnonce and count): a replay.
    replay = publish(ALICE, fromURI=ALICE, cseq=9)
    replay.setHeader("Authorization", published.header("authorization"))
    h.receive(replay, PUBLISHER)
    (replayed,) = h.responses()
    assert replayed.code == 401 and "stale=true" not in replayed.header("www-authenticate")
    # The nonce grows old: stale, with a fresh one to sign with.
    h.clock.advance(301)
    h.receive(_sign(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], User_Agent=BARESIP, cseq=3), offered, 5), WATCHER)
    (stale,) = h.responses()
    (fresh,) = stale.headerValues("www-authenticate")
    assert stale.code == 401 and "stale=true" in fresh and parseChallenge(fresh).algorithm == MD5
    assert parseChallenge(fresh).nonce != parseChallenge(offered).nonce
    h.registered(_sign(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], User_Agent=BARESIP, cseq=4), fresh, 1), WATCHER)


def _ok(h: RegistrarHarness, sub: Request) -> Response:
    """
    The 200 that established C{sub}'s dialog, rebuilt from the manager's
    memory (its To tag).
    """
    (subscription,) = [s for s in h.manager.subscriptions.values() if s.callId == sub.callId]
    return Response.forRequest(sub, 200, toTag=subscription.localTag)


# libre's digest: the challenges per User-Agent.


def _offered(h: RegistrarHarness, userAgent: Optional[str] = None, **kw: Any) -> List[str]:
    """
    The algorithms of the 401 to an unsigned REGISTER sent with
    C{userAgent}.
    """
    request = register(**kw) if userAgent is None else register(User_Agent=userAgent, **kw)
    h.receive(request, PUBLISHER)
    (challenge,) = h.responses()
    assert challenge.code == 401
    return [parseChallenge(v).algorithm for v in challenge.headerValues("www-authenticate")]


@pytest.mark.parametrize(
    "userAgent, expected",
    [
        (BARESIP, [MD5]),
        ("baresip v3.11.2 (aarch64/Linux)", [MD5]),
        ("BARESIP", [MD5]),
        ("baresip v3.12.0 (x86_64/Linux)", [SHA256, MD5]),
        ("sipp", [MD5]),
        ("Linphone/5.1.65 (belle-sip/5.1.64)", [SHA256, MD5]),
        ("sipsak 0.9.8.1", [MD5]),
        ("baresipx v1.0.0", [SHA256, MD5]),
        ("", [SHA256, MD5]),
        (None, [SHA256, MD5]),
    ],
)
def test_challengesPerUserAgent(make, userAgent: Optional[str], expected: List[str]) -> None:
    """
    libre before 3.12 (baresip 1.0) computes MD5 only and gives up as soon
    as one WWW-Authenticate names another algorithm, whatever the order;
    SIPp 3.6 and sipsak 0.9.8 answer the first they read, with MD5 only.
    With the default settings those get exactly one MD5 challenge; every
    other client (Linphone, newer baresip, none named) SHA-256 then MD5.
    """
    assert _offered(_authHarness(make), userAgent) == expected


def test_libreSignsItsMd5Challenge(make) -> None:
    """
    The whole exchange with the default settings: baresip's REGISTER,
    SUBSCRIBE and PUBLISH are challenged with MD5 alone and admitted with
    MD5 credentials; a wrong password and a stale nonce are challenged
    again with MD5 alone.
    """
    h = _authHarness(make)
    h.receive(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], User_Agent=BARESIP), WATCHER)
    (challenge,) = h.responses()
    (offered,) = challenge.headerValues("www-authenticate")
    h.registered(_sign(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], cseq=2, User_Agent=BARESIP), offered, 1), WATCHER)
    for build, source in ((subscribe, WATCHER), (lambda **kw: publish(ALICE, **kw), PUBLISHER)):
        h.receive(build(fromURI=ALICE, User_Agent=BARESIP), source)
        (challenge,) = h.responses()
        (value,) = challenge.headerValues("www-authenticate")
        assert challenge.code == 401 and parseChallenge(value).algorithm == MD5
        h.receive(_sign(build(fromURI=ALICE, cseq=2, User_Agent=BARESIP), value, 1), source)
        responses, notifies = h.split()
        assert [r.code for r in responses] == [200]
        h.answerAll(notifies, WATCHER)
    wrong = register(ALICE, contacts=["<sip:alice@192.0.2.10>"], cseq=3, User_Agent=BARESIP)
    wrong.setHeader("Authorization", makeAuthorization(offered, "REGISTER", wrong.uri, "alice", "wrong", nc=2))
    h.receive(wrong, WATCHER)
    (again,) = h.responses()
    assert again.code == 401 and [parseChallenge(v).algorithm for v in again.headerValues("www-authenticate")] == [MD5]
    h.clock.advance(h.manager.gate.digest.nonceLifetime + 1)
    h.receive(_sign(register(ALICE, contacts=["<sip:alice@192.0.2.10>"], cseq=4, User_Agent=BARESIP), offered, 3), WATCHER)
    (stale,) = h.responses()
    (value,) = stale.headerValues("www-authenticate")
    assert "stale=true" in value and parseChallenge(value).algorithm == MD5


def test_quirksNeverOfferWhatIsNotAccepted(make) -> None:
    """
    An operator who turned MD5 off ([billing] algorithms = SHA-256) keeps
    it off: baresip is offered SHA-256 like everyone (and cannot log in).
    """
    assert _offered(_authHarness(make, billingAlgorithms=(SHA256,)), BARESIP) == [SHA256]


def test_quirksTableFromTheIni(make) -> None:
    """
    [billing] user_agent_algorithms replaces the built-in table; empty,
    there are no quirks at all.
    """
    config = Config.fromString("[billing]\nuser_agent_algorithms =\n    Zoiper < 5.6: MD5\n    baresip: sha-256, md5\n")
    rules = config.billingUserAgentAlgorithms
    h = _authHarness(make, billingUserAgentAlgorithms=rules)
    assert _offered(h, "Zoiper 5.5.2") == [MD5]
    assert _offered(h, "zoiper5 5.5") == [SHA256, MD5]
    assert _offered(h, "Zoiper 5.6.1") == [SHA256, MD5]
    assert _offered(h, BARESIP) == [SHA256, MD5]
    none = Config.fromString("[billing]\nuser_agent_algorithms =\n").billingUserAgentAlgorithms
    assert none == () and _offered(_authHarness(make, billingUserAgentAlgorithms=none), BARESIP) == [SHA256, MD5]
    assert Config.fromString("").billingUserAgentAlgorithms == KNOWN_QUIRKS


def test_sampleShowsTheTable() -> None:
    """
    etc/presence.ini shows the built-in table as its value: the same rules.
    """
    sample = os.path.join(REPO, "etc", "presence.ini")
    assert Config.fromFile(sample).billingUserAgentAlgorithms == KNOWN_QUIRKS


@pytest.mark.parametrize(
    "value, message",
    [
        ("baresip: SHA-1", "unknown digest algorithm 'SHA-1'"),
        ("baresip:", "no algorithm"),
        ("baresip MD5", "is not PRODUCT"),
        ("baresip < 3.x: MD5", "is not PRODUCT"),
    ],
)
def test_badQuirkRules(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.fromString("[billing]\nuser_agent_algorithms = %s\n" % (value,))
    assert "[billing] user_agent_algorithms" in str(raised.value) and message in str(raised.value)


def test_quirkRulesParse() -> None:
    assert parseQuirks("baresip < 3.12: MD5; SIPp: md5 sha-256") == parseQuirks(
        "\n  baresip<3.12 : md5\n  sipp:MD5,SHA-256\n"
    )
    (quirk,) = parseQuirks("baresip < 3.12: MD5")
    assert (quirk.product, quirk.below, quirk.algorithms) == ("baresip", (3, 12), (MD5,))
    quirks = ChallengeQuirks(parseQuirks("a < 2: MD5"))
    assert quirks.algorithmsFor("a/1.9.9", (SHA256, MD5)) == (MD5,)
    assert quirks.algorithmsFor("a/2", (SHA256, MD5)) == (SHA256, MD5)
    assert quirks.algorithmsFor("a", (SHA256, MD5)) == (MD5,)
    assert quirks.algorithmsFor("  \t", (SHA256, MD5)) == (SHA256, MD5)


def test_registerWithAnotherAccountsCredentialsForbidden(make) -> None:
    """
    REGISTER goes through the same gate as SUBSCRIBE and PUBLISH: bob's
    good credentials cannot bind alice's address (403, where another 401
    would have the UA retry for ever); nothing is bound.
    """
    h = _authHarness(make)
    h.receive(register(ALICE, contacts=["<sip:alice@192.0.2.10>"]), WATCHER)
    (challenge,) = h.responses()
    request = register(ALICE, contacts=["<sip:alice@192.0.2.10>"], cseq=2)
    request.setHeader(
        "Authorization",
        makeAuthorization(challenge.header("www-authenticate"), "REGISTER", request.uri, "bob", "secret"),
    )
    h.receive(request, WATCHER)
    (response,) = h.responses()
    assert (response.code, response.reason) == (403, "Credentials Of Another Account")
    assert h.registrar.bindings == {}


# Odd but harmless headers.


def test_emptySupportedHeader(make) -> None:
    """
    baresip's SUBSCRIBE carries "Supported:" with nothing after it.
    """
    h = make()
    h.receiveBytes(
        subscribe().toBytes().replace(b"Event: presence\r\n", b"Event: presence\r\nSupported:\r\n"), WATCHER
    )
    responses, _ = h.split()
    assert [r.code for r in responses] == [200]
