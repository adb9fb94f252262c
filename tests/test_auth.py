"""
Authentication and authorization of SUBSCRIBE and PUBLISH in the
subscription manager, with real digest exchanges made by our own client
code (L{presence.sip.digest.makeAuthorization}) for MD5 and SHA-256, a
Clock, the in-memory store and billing on an in-memory SQLite database.

Every answer of the issue is here: the challenge, good credentials, wrong
password, unknown account, stale nonce, rate limiting, blocked account,
presence disabled, PUBLISH for another AOR, in-dialog refreshes, who may
watch whom (same customer, other customer, allow/block/ask rules, changes
while subscribed), and domains without authentication.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.billing import db
from presence.billing.gate import FailureLimiter
from presence.sip.digest import MD5, SHA256, makeAuthorization, parseChallenge
from presence.sip.message import Request, Response
from presence.sip.target import Target
from tests.harness import PUBLISHER, WATCHER, Harness, HeldStore, pidf, publish, refresh, subscribe

ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
CAROL = "sip:carol@example.test"
DAVE = "sip:dave@example.test"
PASSWORDS = {ALICE: "alice-secret", BOB: "bob-secret", CAROL: "carol-secret", DAVE: "dave-secret"}
ALGORITHMS = [MD5, SHA256]


@pytest.fixture
def make():
    """
    Harnesses with authentication on for example.test and four accounts:
    alice and bob of customer acme, carol of globex, dave of acme.
    Each is stopped afterwards and must leave no timer behind.
    """
    made: List[Harness] = []

    def factory(**kw: Any) -> Harness:
        kw.setdefault("billingNoAuthDomains", ())
        h = Harness(**kw)
        made.append(h)
        for aor, customer in ((ALICE, "acme"), (BOB, "acme"), (CAROL, "globex"), (DAVE, "acme")):
            h.billing(lambda conn, aor=aor, customer=customer: db.addAccount(conn, aor, PASSWORDS[aor], customer))
        return h

    yield factory
    for h in made:
        h.stop()
        assert h.clock.getDelayedCalls() == []


def challenges(response: Response) -> List[str]:
    return response.headerValues("www-authenticate")


def challengeFor(response: Response, algorithm: str) -> str:
    """
    The challenge of C{response} for C{algorithm}.
    """
    for value in challenges(response):
        if parseChallenge(value).algorithm == algorithm:
            return value
    raise AssertionError("no %s challenge in %r" % (algorithm, challenges(response)))


def signed(request: Request, challenge: str, user: str, password: str, nc: int = 1, cnonce: Optional[str] = None) -> Request:
    """
    C{request} with an Authorization header answering C{challenge}.
    """
    username = user[4:].split("@")[0]
    request.setHeader(
        "Authorization",
        makeAuthorization(challenge, request.method, request.uri, username, password, nc=nc, cnonce=cnonce),
    )
    return request


class Attempt:
    """
    One request sent twice, as a UA does: without credentials, then with
    the credentials answering the 401 (same Call-ID and From tag, CSeq + 1,
    a new branch).
    """

    def __init__(self, h: Harness, build: Callable[..., Request], source: Target) -> None:
        self.h = h
        self.build = build
        self.source = source
        self.cseq = 0

    def send(self, **headers: str) -> Tuple[List[Response], List[Request]]:
        self.cseq += 1
        self.h.receive(self.build(self.cseq, **headers), self.source)
        return self.h.split()

    def challenged(self) -> Response:
        (response,), notifies = self.send()
        assert response.code == 401, response
        assert notifies == []
        return response

    def sendSigned(
        self, challenge: str, user: str, password: str, nc: int = 1
    ) -> Tuple[List[Response], List[Request]]:
        self.cseq += 1
        request = signed(self.build(self.cseq), challenge, user, password, nc)
        self.h.receive(request, self.source)
        return self.h.split()


def subscribing(h: Harness, watcher: str = ALICE, presentity: str = BOB, source: Target = WATCHER, **extra: str) -> Attempt:
    tag = "t" + watcher[4:9]
    callId = "c-%s-%s" % (watcher[4:9], presentity[4:9])
    extra.setdefault("Expires", "600")

    def build(cseq: int, **headers: str) -> Request:
        headers = dict(extra, **headers)
        return subscribe(presentity, fromURI=watcher, fromTag=tag, callId=callId, cseq=cseq, source=source, **headers)

    return Attempt(h, build, source)


def publishing(h: Harness, user: str = BOB, presentity: Optional[str] = None, body: Optional[bytes] = None) -> Attempt:
    presentity = presentity or user

    def build(cseq: int, **headers: str) -> Request:
        headers.setdefault("Expires", "600")
        return publish(presentity, body=body if body is not None else pidf(presentity), fromURI=user, fromTag="p",
                       callId="pub-" + user[4:9], cseq=cseq, **headers)

    return Attempt(h, build, PUBLISHER)


def authedSubscribe(h: Harness, watcher: str = ALICE, presentity: str = BOB, algorithm: str = SHA256, **extra: str) -> Tuple[Attempt, str, List[Response], List[Request]]:
    attempt = subscribing(h, watcher, presentity, **extra)
    challenge = challengeFor(attempt.challenged(), algorithm)
    responses, notifies = attempt.sendSigned(challenge, watcher, PASSWORDS[watcher])
    return attempt, challenge, responses, notifies


def authedPublish(h: Harness, user: str = BOB, algorithm: str = SHA256, **kw: Any) -> Tuple[List[Response], List[Request]]:
    attempt = publishing(h, user, **kw)
    challenge = challengeFor(attempt.challenged(), algorithm)
    return attempt.sendSigned(challenge, user, PASSWORDS[user])


def basics(notify: Request) -> List[str]:
    return [b.decode() for b in re.findall(rb"<basic>(\w+)</basic>", notify.body)]


def poll(h: Harness) -> None:
    """
    What a running server does every poll interval: read billing_changes.
    """
    h.authorizer.poll()


# The challenge.


@pytest.mark.parametrize("kind", ["SUBSCRIBE", "PUBLISH"])
def test_challengeOffersSha256ThenMd5(make, kind):
    """
    No credentials: 401 with SHA-256 first, then MD5, sharing one fresh
    nonce, qop="auth", realm = the domain; nothing is recorded.
    """
    h = make()
    attempt = subscribing(h) if kind == "SUBSCRIBE" else publishing(h)
    response = attempt.challenged()
    parsed = [parseChallenge(value) for value in challenges(response)]
    assert [c.algorithm for c in parsed] == [SHA256, MD5]
    assert {c.realm for c in parsed} == {"example.test"}
    assert all(c.qop == ("auth",) for c in parsed)
    assert len({c.nonce for c in parsed}) == 1
    assert not any(c.stale for c in parsed)
    again = parseChallenge(challenges(attempt.challenged())[0])
    assert again.nonce != parsed[0].nonce
    assert h.store.subscriptions == {} and h.store.publications == {}
    assert h.manager.gate.counters["challenges"] == 2
    assert h.manager.gate.counters["failures"] == 0


def test_challengeAlgorithmsConfigurable(make):
    h = make(billingAlgorithms=(MD5,))
    response = subscribing(h).challenged()
    assert [parseChallenge(v).algorithm for v in challenges(response)] == [MD5]


# Good credentials.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_goodCredentialsSubscribe(make, algorithm):
    h = make()
    _, _, (ok,), (notify,) = authedSubscribe(h, algorithm=algorithm)
    assert ok.code == 200 and ok.header("expires") == "600"
    assert notify.header("subscription-state") == "active;expires=600"
    assert basics(notify) == ["closed"]
    (record,) = h.store.subscriptions.values()
    assert record.watcher == ALICE and record.state == "active"
    h.answer(notify)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_goodCredentialsPublishReachesWatcher(make, algorithm):
    h = make()
    _, _, _, (first,) = authedSubscribe(h, algorithm=algorithm)
    h.answer(first)
    (ok,), (notify,) = authedPublish(h, BOB, algorithm)
    assert ok.code == 200 and ok.header("sip-etag")
    assert basics(notify) == ["open"]
    assert len(h.store.publications) == 1


# Wrong password, unknown account.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["SUBSCRIBE", "PUBLISH"])
def test_wrongPasswordGetsFreshChallenge(make, algorithm, kind):
    """
    Wrong password: a new 401 with a new nonce, never a 2xx, nothing
    recorded, and the failure counted.
    """
    h = make()
    attempt = subscribing(h) if kind == "SUBSCRIBE" else publishing(h)
    challenge = challengeFor(attempt.challenged(), algorithm)
    user = ALICE if kind == "SUBSCRIBE" else BOB
    for _ in range(3):
        (response,), notifies = attempt.sendSigned(challenge, user, "not-the-password")
        assert response.code == 401 and notifies == []
        fresh = [parseChallenge(v) for v in challenges(response)]
        assert [c.algorithm for c in fresh] == [SHA256, MD5]
        assert fresh[0].nonce != parseChallenge(challenge).nonce and not fresh[0].stale
        challenge = challengeFor(response, algorithm)
    assert h.store.subscriptions == {} and h.store.publications == {}
    assert h.manager.gate.counters["failures"] == 3


def _shape(response: Response) -> Tuple[Any, ...]:
    """
    What an attacker can compare between two answers.
    """
    parsed = [parseChallenge(v) for v in challenges(response)]
    return (
        response.code,
        response.reason,
        sorted(k for k in response.headers if k not in ("via", "from", "to", "call-id", "cseq")),
        [(c.realm, c.algorithm, c.qop, c.stale, c.opaque, len(c.nonce)) for c in parsed],
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unknownAccountAnsweredAsWrongPassword(make, algorithm):
    """
    No account enumeration: an unknown user with any password gets exactly
    the answer of a known user with a wrong password, also for the
    blocked account (whose standing is told only to whom knows the
    password), and also on an expired nonce.
    """
    h = make()
    h.billing(lambda conn: db.setStatus(conn, CAROL, "blocked"))
    shapes = []
    for user, password in ((ALICE, "wrong"), ("sip:nobody@example.test", "wrong"), (CAROL, "wrong")):
        attempt = subscribing(h, user, BOB)
        challenge = challengeFor(attempt.challenged(), algorithm)
        (response,), _ = attempt.sendSigned(challenge, user, password)
        shapes.append(_shape(response))
        h.clock.advance(400)  # past the nonce lifetime
        (stale,), _ = attempt.sendSigned(challenge, user, password)
        shapes.append(_shape(stale))
    assert shapes[0] == shapes[1] == shapes[2] == shapes[3] == shapes[4] == shapes[5]
    assert shapes[0][0] == 401
    assert h.store.subscriptions == {}


def _signedAs(attempt: Attempt, challenge: str, username: str, password: str, **headers: str) -> Request:
    """
    The next request of C{attempt}, signed with another username's
    credentials.
    """
    attempt.cseq += 1
    request = attempt.build(attempt.cseq, **headers)
    request.setHeader(
        "Authorization", makeAuthorization(challenge, request.method, request.uri, username, password)
    )
    return request


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["SUBSCRIBE", "PUBLISH"])
def test_credentialsOfAnotherAccountForbidden(make, algorithm, kind):
    """
    Bob's good credentials on a request acting for alice (her From, her
    PUBLISH): 403, not another 401, which the UA would answer with the
    same credentials for ever.  Nothing is recorded, and it is no
    authentication failure of bob's address.
    """
    h = make()
    attempt = subscribing(h, ALICE, DAVE) if kind == "SUBSCRIBE" else publishing(h, ALICE)
    challenge = challengeFor(attempt.challenged(), algorithm)
    request = _signedAs(attempt, challenge, "bob", PASSWORDS[BOB])
    h.receive(request, attempt.source)
    (response,), notifies = h.split()
    assert (response.code, response.reason) == (403, "Credentials Of Another Account")
    assert notifies == [] and h.store.subscriptions == {} and h.store.publications == {}
    assert h.manager.gate.counters["failures"] == 0 and h.manager.gate.counters["forbidden"] == 1
    assert len(h.manager.gate.limiter) == 0


def test_credentialsOfAnotherAccountForUnknownAOR(make):
    """
    The same for an AOR without an account: bob knows his password, so
    he gets 403 whether or not the AOR exists (which tells him nothing).
    """
    h = make()
    attempt = subscribing(h, "sip:nobody@example.test", BOB)
    challenge = challengeFor(attempt.challenged(), SHA256)
    h.receive(_signedAs(attempt, challenge, "bob", PASSWORDS[BOB]), WATCHER)
    (response,), _ = h.split()
    assert response.code == 403


@pytest.mark.parametrize("username, password", [("bob", "wrong"), ("nobody", "secret"), ('b"o@b', "x")])
def test_otherUsernameWithoutItsPasswordChallenged(make, username, password):
    """
    Another username with a wrong password, one without an account, or
    one that names no AOR: a fresh 401 and a failure, as any bad
    credentials.
    """
    h = make()
    attempt = subscribing(h, ALICE, DAVE)
    challenge = challengeFor(attempt.challenged(), SHA256)
    h.receive(_signedAs(attempt, challenge, username, password), WATCHER)
    (response,), _ = h.split()
    assert response.code == 401 and "stale=true" not in challenges(response)[0]
    assert h.manager.gate.counters["failures"] == 1


def test_credentialsOfAnotherAccountStaleFirst(make):
    """
    Bob's good credentials on an expired nonce: stale=true first (he
    signs again without asking his user), then 403.
    """
    h = make()
    attempt = subscribing(h, ALICE, DAVE)
    challenge = challengeFor(attempt.challenged(), SHA256)
    h.clock.advance(h.manager.gate.digest.nonceLifetime + 1)
    h.receive(_signedAs(attempt, challenge, "bob", PASSWORDS[BOB]), WATCHER)
    (stale,), _ = h.split()
    assert stale.code == 401 and "stale=true" in challenges(stale)[0]
    h.receive(_signedAs(attempt, challengeFor(stale, SHA256), "bob", PASSWORDS[BOB]), WATCHER)
    (response,), _ = h.split()
    assert response.code == 403


def test_credentialsForOtherRealmOrUriRefused(make):
    h = make()
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), SHA256)
    other = challenge.replace('realm="example.test"', 'realm="other.test"')
    (response,), _ = attempt.sendSigned(other, ALICE, PASSWORDS[ALICE])
    assert response.code == 401
    # Credentials computed for another Request-URI.
    attempt.cseq += 1
    request = attempt.build(attempt.cseq)
    request.setHeader(
        "Authorization",
        makeAuthorization(challenge, "SUBSCRIBE", "sip:someone@example.test", "alice", PASSWORDS[ALICE]),
    )
    h.receive(request, WATCHER)
    (response,), _ = h.split()
    assert response.code == 401
    assert h.manager.gate.counters["failures"] == 2


# Stale nonce.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expiredNonceGetsStale(make, algorithm):
    h = make(billingNonceLifetime=300.0)
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), algorithm)
    h.clock.advance(301)
    (response,), notifies = attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE])
    assert response.code == 401 and notifies == []
    parsed = [parseChallenge(v) for v in challenges(response)]
    assert all(c.stale for c in parsed)
    assert parsed[0].nonce != parseChallenge(challenge).nonce
    assert h.manager.gate.counters["stale"] == 1
    assert h.manager.gate.counters["failures"] == 0
    # The UA retries with the new nonce, without asking its user.
    (ok,), (notify,) = attempt.sendSigned(challengeFor(response, algorithm), ALICE, PASSWORDS[ALICE])
    assert ok.code == 200
    h.answer(notify)


# Rate limiting.


def test_repeatedFailuresAreRateLimited(make):
    """
    Ten failures in a minute from one address: that address gets 403 with
    Retry-After, even with the right password, until the window passes;
    another address is not affected.
    """
    h = make(billingMaxAuthFailures=10, billingAuthFailureWindow=60.0)
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), SHA256)
    for i in range(10):
        (response,), _ = attempt.sendSigned(challenge, ALICE, "guess-%d" % (i,))
        assert response.code == 401
        challenge = challengeFor(response, SHA256)
        h.clock.advance(1)
    (response,), _ = attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE])
    assert response.code == 403 and response.reason == "Too Many Failed Authentications"
    retry = int(response.header("retry-after"))
    assert 1 <= retry <= 60
    # Not even a challenge for a request without credentials.
    (response,), _ = attempt.send()
    assert response.code == 403
    assert h.manager.gate.counters["rateLimited"] == 2
    # Another source is served.
    other = Target("UDP", "192.0.2.99", 5060)
    _, _, (ok,), (notify,) = authedSubscribe(h, DAVE, BOB, source=other)
    assert ok.code == 200
    h.answer(notify, source=other)
    # Once the window has passed, the right password works again.
    h.clock.advance(retry)
    attempt2 = subscribing(h)
    (ok,), (notify,) = attempt2.sendSigned(challengeFor(attempt2.challenged(), SHA256), ALICE, PASSWORDS[ALICE])
    assert ok.code == 200
    h.answer(notify)


def test_failureTableIsBounded():
    from twisted.internet.task import Clock

    clock = Clock()
    limiter = FailureLimiter(clock, maxFailures=3, window=60.0, maxSources=100)
    for i in range(1000):
        for _ in range(5):
            limiter.failed("10.0.%d.%d" % (i // 256, i % 256))
    assert len(limiter) == 100
    assert limiter.retryAfter("10.0.3.231") == 60  # the last one, still blocked
    assert limiter.retryAfter("10.0.0.0") is None  # dropped first
    clock.advance(61)
    assert limiter.retryAfter("10.0.3.231") is None


# The account's standing.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["SUBSCRIBE", "PUBLISH"])
@pytest.mark.parametrize(
    "change, reason",
    [(lambda conn, aor: db.setStatus(conn, aor, "blocked"), "Account Blocked"),
     (lambda conn, aor: db.setPresenceEnabled(conn, aor, False), "Presence Not Enabled")],
    ids=["blocked", "presence-disabled"],
)
def test_unusableAccountForbidden(make, algorithm, kind, change, reason):
    h = make()
    user = ALICE if kind == "SUBSCRIBE" else BOB
    h.billing(lambda conn: change(conn, user))
    attempt = subscribing(h) if kind == "SUBSCRIBE" else publishing(h)
    challenge = challengeFor(attempt.challenged(), algorithm)
    (response,), notifies = attempt.sendSigned(challenge, user, PASSWORDS[user])
    assert (response.code, response.reason) == (403, reason)
    assert notifies == []
    assert h.store.subscriptions == {} and h.store.publications == {}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_publishOnlyForOwnAOR(make, algorithm):
    h = make()
    attempt = publishing(h, ALICE, presentity=BOB)
    challenge = challengeFor(attempt.challenged(), algorithm)
    (response,), _ = attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE])
    assert (response.code, response.reason) == (403, "Not Your Presentity")
    assert h.store.publications == {}


# In-dialog requests.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_refreshIsAuthenticatedWithIncreasingNonceCount(make, algorithm):
    """
    A refresh without credentials is challenged; a UA reusing its nonce
    with nc=2 is accepted; replaying nc=2 is not.
    """
    h = make()
    attempt, challenge, (ok,), (notify,) = authedSubscribe(h, algorithm=algorithm)
    h.answer(notify)
    sub = attempt.build(2)
    h.receive(refresh(sub, ok, 3, Expires="600"), WATCHER)
    (response,), _ = h.split()
    assert response.code == 401
    again = signed(refresh(sub, ok, 4, Expires="900"), challenge, ALICE, PASSWORDS[ALICE], nc=2, cnonce="cn1")
    h.receive(again, WATCHER)
    (response,), (notify,) = h.split()
    assert response.code == 200 and response.header("expires") == "900"
    h.answer(notify)
    replay = signed(refresh(sub, ok, 5, Expires="900"), challenge, ALICE, PASSWORDS[ALICE], nc=2, cnonce="cn1")
    h.receive(replay, WATCHER)
    (response,), notifies = h.split()
    assert response.code == 401 and notifies == []
    # Un-SUBSCRIBE, authenticated too.
    bye = signed(refresh(sub, ok, 6, Expires="0"), challenge, ALICE, PASSWORDS[ALICE], nc=3, cnonce="cn1")
    h.receive(bye, WATCHER)
    (response,), (final,) = h.split()
    assert response.code == 200
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert h.store.subscriptions == {}


def test_refreshByAnotherAccountForbidden(make):
    """
    Another account that knows the dialog identifiers cannot refresh or
    end the subscription.
    """
    h = make()
    attempt, challenge, (ok,), (notify,) = authedSubscribe(h)
    h.answer(notify)
    sub = attempt.build(2)
    forged = refresh(sub, ok, 3, Expires="0")
    forged.setHeader("From", "<%s>;tag=%s" % (DAVE, sub.fromAddr().tag))
    daveChallenge = challengeFor(subscribing(h, DAVE, DAVE).challenged(), SHA256)
    h.receive(signed(forged, daveChallenge, DAVE, PASSWORDS[DAVE]), WATCHER)
    (response,), notifies = h.split()
    assert (response.code, response.reason) == (403, "Not The Watcher")
    assert notifies == []
    assert len(h.store.subscriptions) == 1


# Who may watch whom.


def test_otherCustomerRefused(make):
    h = make()
    _, _, (response,), notifies = authedSubscribe(h, CAROL, BOB)
    assert (response.code, response.reason) == (403, "Not Authorized To Watch")
    assert notifies == []
    assert h.store.subscriptions == {}
    assert h.manager.counters["rejected"] == 1


def test_ownerAlwaysSeesItself(make):
    h = make()
    h.billing(lambda conn: db.setRule(conn, BOB, "*", "block"))
    _, _, (ok,), (notify,) = authedSubscribe(h, BOB, BOB)
    assert ok.code == 200 and notify.header("subscription-state").startswith("active")
    h.answer(notify)


@pytest.mark.parametrize(
    "rules, watcher, expected",
    [
        ({"*": "allow"}, CAROL, 200),
        ({"@example.test": "allow"}, CAROL, 200),
        ({CAROL: "allow"}, CAROL, 200),
        ({CAROL: "allow", "@example.test": "block"}, CAROL, 200),
        ({ALICE: "block"}, ALICE, 403),
        ({"@example.test": "block"}, ALICE, 403),
        ({"*": "block"}, ALICE, 403),
        ({ALICE: "allow", "*": "block"}, ALICE, 200),
        ({"@example.test": "allow", "*": "block"}, DAVE, 200),
    ],
)
def test_rulesOverrideTheDefault(make, rules, watcher, expected):
    h = make()
    for pattern, action in rules.items():
        h.billing(lambda conn, p=pattern, a=action: db.setRule(conn, BOB, p, a))
    _, _, (response,), notifies = authedSubscribe(h, watcher, BOB)
    assert response.code == expected
    for notify in notifies:
        h.answer(notify)


def test_askIsPendingUntilAllowed(make):
    """
    "Ask first": 200, then pending NOTIFYs without state, publications
    notify nobody; once the owner allows it, active with the state.
    """
    h = make()
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    _, _, (ok,), (notify,) = authedSubscribe(h)
    assert ok.code == 200
    assert notify.header("subscription-state") == "pending;expires=600"
    assert notify.body == b"" and not notify.hasHeader("content-type")
    h.answer(notify)
    (record,) = h.store.subscriptions.values()
    assert record.state == "pending"
    (published,), notifies = authedPublish(h, BOB)
    assert published.code == 200 and notifies == []
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "allow"))
    poll(h)
    (notify,) = h.take()
    assert notify.header("subscription-state").startswith("active;expires=")
    assert basics(notify) == ["open"]
    h.answer(notify)
    assert list(h.store.subscriptions.values())[0].state == "active"


def test_allowedThenAskWithdrawsState(make):
    h = make()
    _, _, _, (notify,) = authedSubscribe(h)
    h.answer(notify)
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    poll(h)
    (notify,) = h.take()
    assert notify.header("subscription-state").startswith("pending;")
    assert notify.body == b""
    h.answer(notify)
    assert list(h.store.subscriptions.values())[0].state == "pending"


@pytest.mark.parametrize(
    "change",
    [
        lambda conn: db.setRule(conn, BOB, ALICE, "block"),
        lambda conn: db.setRule(conn, BOB, "@example.test", "block"),
        lambda conn: db.setStatus(conn, ALICE, "blocked"),
        lambda conn: db.setPresenceEnabled(conn, BOB, False),
        lambda conn: db.setCustomer(conn, ALICE, "globex"),
        lambda conn: db.removeAccount(conn, ALICE),
    ],
    ids=["rule", "domain-rule", "watcher-blocked", "presentity-disabled", "customer", "watcher-removed"],
)
def test_blockEndsSubscriptionRejected(make, change):
    h = make()
    _, _, _, (notify,) = authedSubscribe(h)
    h.answer(notify)
    h.billing(change)
    poll(h)
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=rejected"
    assert final.body == b""
    h.answer(final)
    assert h.store.subscriptions == {} and h.manager.subscriptions == {}


def test_unrelatedChangeTouchesNothing(make):
    h = make()
    _, _, _, (notify,) = authedSubscribe(h)
    h.answer(notify)
    h.billing(lambda conn: db.setRule(conn, CAROL, "*", "block"))
    poll(h)
    assert h.take() == []
    assert len(h.manager.subscriptions) == 1


def test_changeWhileRecordingIsApplied(make):
    """
    Billing changes after the decision but before the subscription is
    committed: it is decided again once recorded.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), SHA256)
    store.holding = True
    attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE])
    assert store.methods() == ["addSubscription"]
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "block"))
    poll(h)
    store.holding = False
    store.commitAll()
    sent = h.take()
    assert [m.code for m in sent if isinstance(m, Response)] == [200]
    (first,) = [m for m in sent if isinstance(m, Request)]
    # The final NOTIFY waits for the one in flight (RFC 6665 §4.2.2).
    h.answer(first)
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=rejected"
    h.answer(final)
    assert h.manager.subscriptions == {} and store.inner.subscriptions == {}


def test_fetchWhilePendingCarriesNoState(make):
    h = make()
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    authedPublish(h, BOB)
    _, _, (ok,), (notify,) = authedSubscribe(h, Expires="0")
    assert ok.code == 200
    assert notify.header("subscription-state") == "terminated;reason=timeout"
    assert notify.body == b""
    h.answer(notify)


def test_pendingExpiryCarriesNoState(make):
    h = make()
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    _, _, _, (notify,) = authedSubscribe(h, Expires="60")
    h.answer(notify)
    h.clock.advance(61)
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert final.body == b""
    h.answer(final)


# The replica.


def test_lookupsComeFromMemoryAndFollowChanges(make):
    """
    Once billing is loaded, authentication and decisions read no database;
    a change made with presence-admin applies at the next poll of the
    change log.
    """
    h = make()
    reads: List[Any] = []
    real = h.authorizer._read

    def counting(fn: Any) -> Any:
        reads.append(fn)
        return real(fn)

    h.authorizer._read = counting
    counters = h.authorizer.counters
    lookups = counters["lookups"]
    _, _, _, (notify,) = authedSubscribe(h)
    h.answer(notify)
    (ok,), (notify,) = _again(h)
    assert ok.code == 200
    h.answer(notify)
    assert reads == []
    assert counters["lookups"] >= lookups + 4
    # Until the next poll, alice's old password is what billing knows...
    with h.billingEngine.begin() as conn:
        db.setPassword(conn, ALICE, "new-secret")
    (ok,), _ = _again(h, tag="3", answer=True)
    assert ok.code == 200
    # ... then the new one.
    changes = counters["changes"]
    poll(h)
    assert reads and counters["changes"] == changes + 1
    (refused,), _ = _again(h, tag="4")
    assert refused.code == 401
    (ok,), _ = _again(h, tag="5", answer=True, password="new-secret")
    assert ok.code == 200


def _again(
    h: Harness, tag: str = "2", answer: bool = False, password: str = PASSWORDS[ALICE]
) -> Tuple[List[Response], List[Request]]:
    """
    A new subscription of alice to bob (a new dialog), authenticated.
    """

    def build(cseq: int, **headers: str) -> Request:
        return subscribe(BOB, fromURI=ALICE, fromTag="again" + tag, callId="again-" + tag, cseq=cseq,
                         Expires="600", **headers)

    attempt = Attempt(h, build, WATCHER)
    responses, notifies = attempt.sendSigned(challengeFor(attempt.challenged(), MD5), ALICE, password)
    if answer:
        for n in notifies:
            h.answer(n)
    return responses, notifies


def test_billingUnavailable(make):
    """
    Billing cannot load the accounts: a request waits for them a few
    seconds, then gets 500 with Retry-After, nothing decided.  The load is
    retried; once it works, requests pass.
    """
    from twisted.internet.defer import fail

    h = make(startBilling=False)
    real = h.authorizer._read

    def broken(fn: Any) -> Any:
        return fail(RuntimeError("database down"))

    h.authorizer._read = broken
    h.authorizer.start()
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), SHA256)
    assert attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE]) == ([], [])
    h.clock.advance(h.authorizer.lookupTimeout)
    (response,), notifies = h.split()
    assert (response.code, response.reason) == (500, "Billing Unavailable")
    assert response.header("retry-after") == "5"
    assert notifies == [] and h.store.subscriptions == {}
    assert h.manager.counters["billingErrors"] == 1
    h.authorizer._read = real
    h.clock.advance(h.authorizer.maxRetryDelay)
    assert h.authorizer.loaded
    challenge = challengeFor(attempt.challenged(), SHA256)
    (ok,), (notify,) = attempt.sendSigned(challenge, ALICE, PASSWORDS[ALICE])
    assert ok.code == 200
    h.answer(notify)


# Domains without authentication.


def test_noAuthDomainTrustsFrom(make):
    """
    Authentication off for example.test: no challenge, the From AOR is
    trusted; policy still applies, and so does the account's standing.
    """
    h = make(billingNoAuthDomains=("example.test",))
    (ok,), (notify,) = subscribing(h).send()
    assert ok.code == 200
    h.answer(notify)
    (refused,), _ = subscribing(h, CAROL, BOB).send()
    assert refused.code == 403
    h.billing(lambda conn: db.setStatus(conn, DAVE, "blocked"))
    (blocked,), _ = subscribing(h, DAVE, BOB).send()
    assert (blocked.code, blocked.reason) == (403, "Account Blocked")
    (wrongOwner,), _ = publishing(h, ALICE, presentity=BOB).send()
    assert (wrongOwner.code, wrongOwner.reason) == (403, "Not Your Presentity")
    # Addresses without an account belong to the customer named after
    # their domain, which is also the default customer of accounts.
    (ok,), (notify,) = subscribing(h, "sip:guest@example.test", "sip:other@example.test").send()
    assert ok.code == 200
    h.answer(notify)


def test_noAuthOnlyForListedDomains(make):
    h = make(billingNoAuthDomains=("trusted.test",), domains=("example.test", "trusted.test"))
    (ok,), (notify,) = subscribing(h, "sip:t1@trusted.test", "sip:t2@trusted.test").send()
    assert ok.code == 200
    h.answer(notify)
    (challenged,), _ = subscribing(h).send()
    assert challenged.code == 401


# Hostile credentials.


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=0, max_size=300))
def test_garbageCredentialsNeverAdmitted(make, value):
    """
    Whatever an Authorization header holds: a 401 (or 400 for what the
    parser refuses), never a 2xx, never a crash.
    """
    h = make(billingMaxAuthFailures=1000000)
    attempt = subscribing(h)
    try:
        request = attempt.build(1, Authorization="Digest " + value)
        data = request.toBytes()
    except Exception:
        return
    h.receiveBytes(data, WATCHER)
    responses, notifies = h.split()
    assert notifies == []
    assert [r.code for r in responses] in ([401], [400])
    assert h.store.subscriptions == {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["username", "realm", "nonce", "uri", "response", "cnonce", "nc", "qop", "algorithm"]),
    replacement=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\'), max_size=80),
)
def test_tamperedCredentialsNeverAdmitted(make, field, replacement):
    """
    Good credentials with one field changed are refused, unless the change
    is a no-op.
    """
    h = make(billingMaxAuthFailures=1000000)
    attempt = subscribing(h)
    challenge = challengeFor(attempt.challenged(), SHA256)
    request = signed(attempt.build(2), challenge, ALICE, PASSWORDS[ALICE])
    original = request.header("authorization")
    pattern = re.compile(r'(%s=)("[^"]*"|[^,]*)' % (field,))
    match = pattern.search(original)
    assert match is not None
    quoted = match.group(2).startswith('"')
    newValue = '"%s"' % (replacement,) if quoted else replacement
    if newValue == match.group(2):
        return
    request.setHeader("Authorization", original[: match.start(2)] + newValue + original[match.end(2):])
    h.receiveBytes(request.toBytes(), WATCHER)
    responses, notifies = h.split()
    assert notifies == []
    assert all(r.code >= 400 for r in responses)
    assert h.store.subscriptions == {}


# Metrics.


def test_metricsShowAuthenticationAndBilling(make):
    """
    The metrics page carries the gate's counters and what the authorizer
    holds and did.
    """
    from tests.test_metrics import _tree, scrape

    h = make()
    _, _, _, (notify,) = authedSubscribe(h)
    h.answer(notify)
    _again(h, answer=True)
    attempt = subscribing(h, CAROL, BOB)
    attempt.sendSigned(challengeFor(attempt.challenged(), MD5), CAROL, "wrong")
    samples = {name: v for (name, labels), v in scrape(_tree(manager={"manager": h.manager})).items() if not labels}
    counters = h.authorizer.counters
    assert samples["presence_authorization_lookups_total"] == counters["lookups"] >= 4
    assert samples["presence_authorization_loaded"] == 1
    assert samples["presence_authorization_accounts"] == 4
    assert samples["presence_authorization_rules"] == 0
    assert samples["presence_authorization_changes_applied_total"] == counters["changes"] == 4
    assert samples["presence_authorization_reloads_total"] == 1
    assert samples["presence_authorization_wait_timeouts_total"] == 0
    assert "presence_authorization_cache_hits_total" not in samples
    assert samples["presence_auth_challenges_total"] == 3
    assert samples["presence_auth_failures_total"] == 1
    assert samples["presence_auth_admitted_total"] == 2
    assert samples["presence_auth_tracked_sources"] == 1


# Shutdown.


def test_whenIdleWaitsForRequestsInBilling(make):
    """
    An orderly shutdown waits until the requests taken have left billing
    (and so issued their store writes), or until a timeout.
    """
    from twisted.internet.defer import Deferred

    def holding(h: Harness) -> List[Tuple[Any, Deferred]]:
        held: List[Tuple[Any, Deferred]] = []

        def hold(fn: Any) -> Deferred:
            d: Deferred = Deferred()
            held.append((fn, d))
            return d

        h.authorizer._read = hold
        h.authorizer.start()
        return held

    # Requests wait for billing to load.
    h = make(billingNoAuthDomains=("example.test",), startBilling=False)
    real = h.authorizer._read
    held = holding(h)
    assert h.manager.whenIdle().called
    h.receive(subscribe(BOB, fromURI=ALICE, Expires="600"))
    h.receive(publish(BOB), PUBLISHER)
    assert h.take() == [] and held
    idle = h.manager.whenIdle()
    assert not idle.called
    h.authorizer._read = real
    while held:
        fn, d = held.pop(0)
        real(fn).chainDeferred(d)
    assert idle.called
    responses, notifies = h.split()
    assert sorted(r.code for r in responses) == [200, 200]
    for notify in notifies:
        h.answer(notify)
    # Billing that never answers does not hold the shutdown forever (nor
    # as long as the lookups wait for it).
    h = make(billingNoAuthDomains=("example.test",), startBilling=False)
    held = holding(h)
    h.receive(subscribe(DAVE, fromURI=ALICE, Expires="600"))
    late = h.manager.whenIdle(timeout=1.0)
    h.clock.advance(1.0)
    assert late.called and h.take() == []