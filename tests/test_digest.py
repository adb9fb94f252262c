"""
Tests for L{presence.sip.digest}: RFC example vectors, the client/server
round trip, nonce lifetime and tampering, nonce-count replays, the bounded
replay table, and hypothesis fuzzing of the header parsers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from presence.sip.digest import (
    MAX_HEADER_LENGTH,
    MD5,
    SHA256,
    DigestAuthenticator,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    DigestParseError,
    DigestResult,
    chooseChallenge,
    computeHA1,
    computeResponse,
    makeAuthorization,
    parseChallenge,
    parseCredentials,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.test"
USER = "alice"
PASSWORD = "wonderland"
URI = "sip:bob@example.test"
LIFETIME = 300

# RFC 2617 section 3.5.
RFC2617_REALM = "testrealm@host.com"
RFC2617_NONCE = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
RFC2617_OPAQUE = "5ccc069c403ebaf9f0171e9517f40e41"

# RFC 7616 section 3.9.1 (password "Circle of Life", lower-case o: erratum 4495).
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSES = {
    MD5: "8ca523f5e9506fed4657c9700eebdbec",
    SHA256: "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def ha1For(algorithm: str, password: str = PASSWORD, realm: str = REALM) -> str:
    return computeHA1(USER, realm, password, algorithm)


def challenged(authenticator: DigestAuthenticator, algorithm: str) -> str:
    """
    The challenge header value that C{authenticator} offers for C{algorithm}.
    """
    for value in authenticator.challenge(REALM):
        if parseChallenge(value).algorithm == algorithm:
            return value
    raise AssertionError("%s not offered" % (algorithm,))


def answer(
    challenge: str,
    method: str = "SUBSCRIBE",
    password: str = PASSWORD,
    cnonce: str = "client-nonce",
    nc: int = 1,
) -> DigestCredentials:
    return parseCredentials(
        makeAuthorization(challenge, method, URI, USER, password, cnonce=cnonce, nc=nc)
    )


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def authenticator(clock: Clock) -> DigestAuthenticator:
    return DigestAuthenticator(SECRET, clock, nonceLifetime=LIFETIME)


# ------------------------------------------------------------ RFC vectors


def test_rfc2617Example() -> None:
    """
    RFC 2617 section 3.5: Mufasa / "Circle Of Life", qop=auth.
    """
    ha1 = computeHA1("Mufasa", RFC2617_REALM, "Circle Of Life", MD5)
    response = computeResponse(
        ha1, "GET", "/dir/index.html", RFC2617_NONCE, MD5, "auth", 1, "0a4f113b"
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2617ExampleThroughClient() -> None:
    """
    The client answers the RFC 2617 challenge with the RFC's response and
    echoes its opaque.
    """
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="%s", opaque="%s"' % (RFC2617_NONCE, RFC2617_OPAQUE)
    )
    credentials = parseCredentials(
        makeAuthorization(
            challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life",
            cnonce="0a4f113b",
        )
    )
    assert credentials.response == "6629fae49393a05397450978507c4ef1"
    assert credentials.opaque == RFC2617_OPAQUE
    assert (credentials.algorithm, credentials.qop, credentials.nc) == (MD5, "auth", 1)


@pytest.mark.parametrize("algorithm", [MD5, SHA256])
def test_rfc7616Examples(algorithm: str) -> None:
    """
    RFC 7616 section 3.9.1, MD5 and SHA-256, through the client and through
    the bare response computation with a precomputed HA1.
    """
    challenge = (
        'Digest realm="%s", qop="auth, auth-int", algorithm=%s, nonce="%s", '
        'opaque="%s"' % (RFC7616_REALM, algorithm, RFC7616_NONCE, RFC7616_OPAQUE)
    )
    header = makeAuthorization(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life",
        cnonce=RFC7616_CNONCE, nc=1,
    )
    credentials = parseCredentials(header)
    assert credentials.response == RFC7616_RESPONSES[algorithm]
    assert credentials.algorithm == algorithm
    assert "algorithm=%s," % (algorithm,) in header
    assert "nc=00000001" in header and "qop=auth" in header

    ha1 = computeHA1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    assert computeResponse(
        ha1, "GET", "/dir/index.html", RFC7616_NONCE, algorithm, "auth", 1,
        RFC7616_CNONCE,
    ) == RFC7616_RESPONSES[algorithm]


def test_parseRfc7616Authorization() -> None:
    """
    The RFC 7616 SHA-256 Authorization value, laid out over folded lines
    as in the RFC, parses into its fields.
    """
    value = (
        'Digest username="Mufasa",\r\n'
        '    realm="http-auth@example.org",\r\n'
        '    uri="/dir/index.html",\r\n'
        "    algorithm=SHA-256,\r\n"
        '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
        "    nc=00000001,\r\n"
        '    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",\r\n'
        "    qop=auth,\r\n"
        '    response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",\r\n'
        '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert parseCredentials(value) == DigestCredentials(
        username="Mufasa",
        realm=RFC7616_REALM,
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=RFC7616_RESPONSES[SHA256],
        algorithm=SHA256,
        cnonce=RFC7616_CNONCE,
        nc=1,
        qop="auth",
        opaque=RFC7616_OPAQUE,
    )


# ------------------------------------------------------------ challenges


def test_challengeOffersSha256ThenMd5(authenticator: DigestAuthenticator) -> None:
    """
    RFC 8760 section 2.4: SHA-256 first, then MD5, each with an explicit
    algorithm, qop="auth", one shared fresh nonce, and no stale flag.
    """
    values = authenticator.challenge(REALM)
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == [SHA256, MD5]
    challenges = [parseChallenge(v) for v in values]
    assert [c.algorithm for c in challenges] == [SHA256, MD5]
    for value, c in zip(values, challenges):
        assert value.startswith("Digest ")
        assert 'qop="auth"' in value
        assert "stale" not in value and "opaque" not in value
        assert (c.realm, c.qop, c.stale, c.opaque) == (REALM, ("auth",), False, None)
    assert challenges[0].nonce == challenges[1].nonce
    assert authenticator.challenge(REALM)[0] != values[0]


def test_challengeStale(authenticator: DigestAuthenticator) -> None:
    values = authenticator.challenge(REALM, stale=True)
    assert all(v.endswith(", stale=true") for v in values)
    assert all(parseChallenge(v).stale for v in values)


def test_challengeSomeAlgorithms(authenticator: DigestAuthenticator) -> None:
    """
    A client that cannot take every challenge is offered some of them, in
    the order asked, and what it answers is verified as usual; never an
    algorithm the authenticator does not accept.
    """
    (value,) = authenticator.challenge(REALM, algorithms=["md5"])
    assert parseChallenge(value).algorithm == MD5
    assert [parseChallenge(v).algorithm for v in authenticator.challenge(REALM, True, (MD5, SHA256))] == [MD5, SHA256]
    credentials = parseCredentials(makeAuthorization(value, "SUBSCRIBE", URI, USER, PASSWORD))
    ha1 = computeHA1(USER, REALM, PASSWORD, MD5)
    assert authenticator.verify(credentials, "SUBSCRIBE", ha1, REALM) is DigestResult.OK
    md5Only = DigestAuthenticator(SECRET, authenticator._clock, algorithms=[MD5])
    for wrong in ([SHA256], []):
        with pytest.raises(ValueError):
            md5Only.challenge(REALM, algorithms=wrong)


def test_challengeWithOpaque(clock: Clock) -> None:
    authenticator = DigestAuthenticator(SECRET, clock, useOpaque=True)
    challenge = parseChallenge(authenticator.challenge(REALM)[0])
    assert challenge.opaque
    credentials = answer(challenge.toHeaderValue())
    assert credentials.opaque == challenge.opaque
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.OK


@pytest.mark.parametrize("opaque", [None, "forged"])
def test_wrongOpaque(clock: Clock, opaque: object) -> None:
    authenticator = DigestAuthenticator(SECRET, clock, useOpaque=True)
    challenge = parseChallenge(authenticator.challenge(REALM)[0])
    forged = DigestChallenge(
        realm=challenge.realm, nonce=challenge.nonce, algorithm=challenge.algorithm,
        qop=challenge.qop, opaque=opaque,  # type: ignore[arg-type]
    )
    credentials = answer(forged.toHeaderValue())
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_NONCE


def test_algorithmsConfigurable(clock: Clock) -> None:
    authenticator = DigestAuthenticator(SECRET, clock, algorithms=["sha-256"])
    assert [parseChallenge(v).algorithm for v in authenticator.challenge(REALM)] == [
        SHA256
    ]
    with pytest.raises(ValueError):
        DigestAuthenticator(SECRET, clock, algorithms=["SHA-512-256"])
    with pytest.raises(ValueError):
        DigestAuthenticator(b"short", clock)


# ------------------------------------------------------------ verification


@pytest.mark.parametrize("algorithm", [SHA256, MD5])
def test_roundTrip(authenticator: DigestAuthenticator, algorithm: str) -> None:
    """
    Our client answers our challenge; the server accepts it with the HA1
    stored for that algorithm, and accepts the next nonce-count too.
    """
    challenge = challenged(authenticator, algorithm)
    credentials = answer(challenge)
    assert credentials.algorithm == algorithm
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(algorithm), REALM, requestUri=URI
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, nc=2), "SUBSCRIBE", ha1For(algorithm), REALM
    ) is DigestResult.OK


def test_roundTripWithHa1(authenticator: DigestAuthenticator) -> None:
    """
    A client holding only the HA1 produces the same header as one holding
    the password.
    """
    challenge = challenged(authenticator, SHA256)
    fromPassword = makeAuthorization(
        challenge, "PUBLISH", URI, USER, PASSWORD, cnonce="c", nc=7
    )
    fromHa1 = makeAuthorization(
        challenge, "PUBLISH", URI, USER, ha1=ha1For(SHA256), cnonce="c", nc=7
    )
    assert fromPassword == fromHa1
    assert authenticator.verify(
        parseCredentials(fromHa1), "PUBLISH", ha1For(SHA256), REALM
    ) is DigestResult.OK


def test_wrongHa1Algorithm(authenticator: DigestAuthenticator) -> None:
    """
    An MD5 HA1 does not verify SHA-256 credentials.
    """
    credentials = answer(challenged(authenticator, SHA256))
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.BAD_RESPONSE


def test_staleNonce(authenticator: DigestAuthenticator, clock: Clock) -> None:
    """
    A nonce is good for exactly the lifetime, then the right password gets
    STALE (so the client retries silently), while a wrong one still gets
    BAD_RESPONSE.
    """
    challenge = challenged(authenticator, SHA256)
    clock.advance(LIFETIME)
    assert authenticator.verify(
        answer(challenge, nc=1), "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.OK
    clock.advance(0.01)
    assert authenticator.verify(
        answer(challenge, nc=2), "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.STALE
    assert authenticator.verify(
        answer(challenge, nc=3, password="guess"), "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_RESPONSE


def test_nonceFromTheFuture(authenticator: DigestAuthenticator, clock: Clock) -> None:
    """
    A genuine nonce stamped far ahead of our clock (it stepped backwards,
    or another node's clock is ahead) is stale, not valid forever.
    """
    clock.advance(LIFETIME + 1)
    challenge = challenged(authenticator, MD5)
    clock.rightNow -= 2 * LIFETIME + 2
    assert authenticator.verify(
        answer(challenge), "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.STALE


def tamper(nonce: str) -> str:
    middle = len(nonce) // 2
    return nonce[:middle] + ("A" if nonce[middle] != "A" else "B") + nonce[middle + 1:]


@pytest.mark.parametrize(
    "forge",
    [
        tamper,
        lambda nonce: nonce[:-1],
        lambda nonce: nonce + "A",
        lambda nonce: "!" * len(nonce),
        lambda nonce: "",
        lambda nonce: nonce[:-1] + "\n",
        lambda nonce: DigestAuthenticator(b"another secret!!", Clock()).newNonce(REALM),
        lambda nonce: DigestAuthenticator(SECRET, Clock()).newNonce("other.test"),
    ],
    ids=["flipped", "short", "long", "alphabet", "empty", "newline", "secret", "realm"],
)
def test_badNonce(authenticator: DigestAuthenticator, forge: object) -> None:
    """
    Credentials correctly computed over a nonce we did not issue for this
    realm are refused before any password check.
    """
    nonce = forge(parseChallenge(challenged(authenticator, SHA256)).nonce)  # type: ignore[operator]
    response = computeResponse(
        ha1For(SHA256), "SUBSCRIBE", URI, nonce, SHA256, "auth", 1, "c"
    )
    credentials = DigestCredentials(
        username=USER, realm=REALM, nonce=nonce, uri=URI, response=response,
        algorithm=SHA256, cnonce="c", nc=1, qop="auth",
    )
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_NONCE


def test_replayedNonceCount(authenticator: DigestAuthenticator) -> None:
    """
    A nonce-count must grow strictly per (nonce, cnonce); another cnonce
    has its own count.
    """
    challenge = challenged(authenticator, SHA256)
    ha1 = ha1For(SHA256)
    first = answer(challenge, nc=1)
    assert authenticator.verify(first, "SUBSCRIBE", ha1, REALM) is DigestResult.OK
    assert authenticator.verify(first, "SUBSCRIBE", ha1, REALM) is DigestResult.REPLAY
    assert authenticator.verify(
        answer(challenge, nc=5), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    for nc in (5, 4, 2):
        assert authenticator.verify(
            answer(challenge, nc=nc), "SUBSCRIBE", ha1, REALM
        ) is DigestResult.REPLAY
    assert authenticator.verify(
        answer(challenge, nc=1, cnonce="other"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, nc=6), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK


def test_badGuessDoesNotBurnCount(authenticator: DigestAuthenticator) -> None:
    """
    A wrong response does not record its nonce-count, so an attacker cannot
    lock the real client out by guessing with high counts.
    """
    challenge = challenged(authenticator, MD5)
    assert authenticator.verify(
        answer(challenge, nc=99, password="guess"), "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.BAD_RESPONSE
    assert authenticator.trackedCount == 0
    assert authenticator.verify(
        answer(challenge, nc=1), "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.OK


def test_wrongPassword(authenticator: DigestAuthenticator) -> None:
    credentials = answer(challenged(authenticator, SHA256), password="wrong")
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_RESPONSE


def test_unknownUser(authenticator: DigestAuthenticator) -> None:
    credentials = answer(challenged(authenticator, SHA256))
    assert authenticator.verify(
        credentials, "SUBSCRIBE", None, REALM
    ) is DigestResult.BAD_RESPONSE


def test_unknownUserWithZeroHa1(authenticator: DigestAuthenticator) -> None:
    """
    The stand-in HA1 used for unknown users is never accepted, even by a
    client that guessed it.
    """
    challenge = challenged(authenticator, SHA256)
    credentials = parseCredentials(
        makeAuthorization(challenge, "SUBSCRIBE", URI, "nobody", ha1="0" * 64, cnonce="c")
    )
    assert authenticator.verify(
        credentials, "SUBSCRIBE", None, REALM
    ) is DigestResult.BAD_RESPONSE
    assert authenticator.trackedCount == 0


def test_wrongMethod(authenticator: DigestAuthenticator) -> None:
    """
    The method is covered: a REGISTER answer does not authorize a PUBLISH.
    """
    credentials = answer(challenged(authenticator, SHA256), method="REGISTER")
    assert authenticator.verify(
        credentials, "PUBLISH", ha1For(SHA256), REALM
    ) is DigestResult.BAD_RESPONSE


def test_wrongRealm(authenticator: DigestAuthenticator) -> None:
    """
    Credentials for another realm are refused even when self-consistent.
    """
    value = authenticator.challenge(REALM)[0].replace(REALM, "evil.test")
    credentials = answer(value)
    assert credentials.realm == "evil.test"
    ha1 = computeHA1(USER, "evil.test", PASSWORD, SHA256)
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1, REALM
    ) is DigestResult.WRONG_REALM


def test_wrongUri(authenticator: DigestAuthenticator) -> None:
    credentials = answer(challenged(authenticator, SHA256))
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM, requestUri="sip:carol@example.test"
    ) is DigestResult.BAD_URI


def test_algorithmNotOffered(clock: Clock) -> None:
    """
    Credentials with an algorithm we did not challenge with, or do not
    know, are refused.
    """
    md5Only = DigestAuthenticator(SECRET, clock, algorithms=[MD5])
    both = DigestAuthenticator(SECRET, clock)
    credentials = answer(challenged(both, SHA256))
    assert md5Only.verify(
        credentials, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_ALGORITHM
    unknown = replace(credentials, algorithm="SHA-512-256")
    assert both.verify(
        unknown, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_ALGORITHM


def withoutQop(authenticator: DigestAuthenticator) -> DigestCredentials:
    """
    RFC 2069 credentials for a nonce the authenticator issued.
    """
    challenge = parseChallenge(challenged(authenticator, MD5))
    legacy = DigestChallenge(realm=REALM, nonce=challenge.nonce, algorithm=MD5)
    header = makeAuthorization(legacy, "SUBSCRIBE", URI, USER, PASSWORD)
    assert "qop" not in header and "nc=" not in header and "cnonce" not in header
    return parseCredentials(header)


def test_qopRequiredByDefault(authenticator: DigestAuthenticator) -> None:
    assert authenticator.verify(
        withoutQop(authenticator), "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.BAD_QOP


def test_noQopAllowedWhenConfigured(clock: Clock) -> None:
    authenticator = DigestAuthenticator(SECRET, clock, allowNoQop=True)
    credentials = withoutQop(authenticator)
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For(MD5), REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1For("MD5", password="wrong"), REALM
    ) is DigestResult.BAD_RESPONSE


@pytest.mark.parametrize(
    "changes",
    [{"qop": "auth-int"}, {"nc": None}, {"cnonce": None}, {"cnonce": ""}, {"nc": 0}],
)
def test_badQop(authenticator: DigestAuthenticator, changes: dict) -> None:
    credentials = answer(challenged(authenticator, SHA256))
    broken = replace(credentials, **changes)
    assert authenticator.verify(
        broken, "SUBSCRIBE", ha1For(SHA256), REALM
    ) is DigestResult.BAD_QOP


# ------------------------------------------------------------ replay table


def test_replayTableBounded(clock: Clock) -> None:
    """
    The table never exceeds its cap; a pair pushed out of it cannot be
    replayed (STALE), while pairs still tracked keep working.
    """
    authenticator = DigestAuthenticator(SECRET, clock, maxTracked=3)
    ha1 = ha1For(SHA256)
    challenge = challenged(authenticator, SHA256)
    for i in range(3):
        assert authenticator.verify(
            answer(challenge, cnonce="c%d" % (i,)), "SUBSCRIBE", ha1, REALM
        ) is DigestResult.OK
    assert authenticator.trackedCount == 3
    clock.advance(1)
    newer = challenged(authenticator, SHA256)
    assert authenticator.verify(
        answer(newer, cnonce="d"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.trackedCount == 3
    # c0 was evicted: replaying it must not succeed.
    assert authenticator.verify(
        answer(challenge, cnonce="c0"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.STALE
    assert authenticator.verify(
        answer(challenge, cnonce="c2"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.REPLAY
    assert authenticator.verify(
        answer(challenge, cnonce="c2", nc=2), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(newer, cnonce="d"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.REPLAY


def test_replayTableEvictsLeastRecentlyUsed(clock: Clock) -> None:
    """
    A pair in active use stays tracked; the idle one is evicted.
    """
    authenticator = DigestAuthenticator(SECRET, clock, maxTracked=2)
    ha1 = ha1For(MD5)
    challenge = challenged(authenticator, MD5)
    for cnonce in ("a", "b"):
        assert authenticator.verify(
            answer(challenge, cnonce=cnonce), "SUBSCRIBE", ha1, REALM
        ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, cnonce="a", nc=2), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, cnonce="c"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, cnonce="a", nc=3), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.OK
    assert authenticator.verify(
        answer(challenge, cnonce="b", nc=2), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.STALE


def test_replayTableDropsExpiredNonces(
    authenticator: DigestAuthenticator, clock: Clock
) -> None:
    """
    Counts are forgotten once their nonce has expired: a replay of an
    expired nonce is STALE anyway.
    """
    ha1 = ha1For(SHA256)
    old = challenged(authenticator, SHA256)
    for i in range(5):
        assert authenticator.verify(
            answer(old, cnonce="c%d" % (i,)), "SUBSCRIBE", ha1, REALM
        ) is DigestResult.OK
    assert authenticator.trackedCount == 5
    clock.advance(LIFETIME + 1)
    assert authenticator.verify(
        answer(old, cnonce="c0"), "SUBSCRIBE", ha1, REALM
    ) is DigestResult.STALE
    fresh = challenged(authenticator, SHA256)
    assert authenticator.verify(answer(fresh), "SUBSCRIBE", ha1, REALM) is DigestResult.OK
    assert authenticator.trackedCount == 1


# ------------------------------------------------------------ parser


def test_parseRobustness() -> None:
    """
    Case-insensitive scheme and names, whitespace around '=' and ',',
    escapes and commas inside quotes, tokens where quotes are usual, empty
    list elements, unknown parameters ignored.
    """
    value = (
        '  dIgEsT USERNAME = "a\\"li\\\\ce, x" ,, Realm="ex, ample" ,\tNONCE=abc,'
        ' uri="sip:bob@example.test;transport=tcp", response="0A1b",'
        ' algorithm=sha-256, qop="AUTH", nc=0000000A, cnonce="x=y", extra="ig,nored" '
    )
    assert parseCredentials(value) == DigestCredentials(
        username='a"li\\ce, x',
        realm="ex, ample",
        nonce="abc",
        uri="sip:bob@example.test;transport=tcp",
        response="0A1b",
        algorithm=SHA256,
        cnonce="x=y",
        nc=10,
        qop="auth",
    )
    assert parseCredentials(value.encode("utf-8")) == parseCredentials(value)


def test_parseChallengeDefaults() -> None:
    challenge = parseChallenge('Digest realm="r", nonce="n", stale=TRUE, domain="sip:r"')
    assert challenge == DigestChallenge(realm="r", nonce="n", algorithm=MD5, stale=True)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        "Digest ",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digest,username="a"',
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", realm="s"',
        'Digest username="a, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a" realm="r", nonce="n", uri="u", response="x"',
        'Digest username=, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", nc=1',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", nc=0000000g',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop="a b"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=""',
        'Digest username="a\x00", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a\r\nVia: x", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="\ud800", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x\\',
        b'Digest username="\xff", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="%s", realm="r", nonce="n", uri="u", response="x"'
        % ("a" * MAX_HEADER_LENGTH,),
        None,
    ],
)
def test_parseErrors(value: object) -> None:
    with pytest.raises(DigestParseError):
        parseCredentials(value)  # type: ignore[arg-type]


def test_serializationRefusesInjection() -> None:
    credentials = DigestCredentials(
        username="a\r\nVia: evil", realm="r", nonce="n", uri="u", response="x"
    )
    with pytest.raises(ValueError):
        credentials.toHeaderValue()


# ------------------------------------------------------------ client


def test_chooseChallengePrefersSha256() -> None:
    md5 = 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"'
    sha = 'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"'
    odd = 'Digest realm="r", nonce="n3", algorithm=SHA-512-256, qop="auth"'
    intOnly = 'Digest realm="r", nonce="n4", algorithm=SHA-256, qop="auth-int"'
    assert chooseChallenge([md5, "garbage", odd, sha]).nonce == "n2"
    assert chooseChallenge([intOnly, md5, 'Basic realm="r"']).nonce == "n1"
    with pytest.raises(DigestError):
        chooseChallenge([odd, intOnly, "Basic x"])


def test_clientRefusesWhatItCannotAnswer() -> None:
    with pytest.raises(DigestError):
        makeAuthorization(
            'Digest realm="r", nonce="n", algorithm=SHA-512-256', "SUBSCRIBE", URI,
            USER, PASSWORD,
        )
    with pytest.raises(DigestError):
        makeAuthorization(
            'Digest realm="r", nonce="n", qop="auth-int"', "SUBSCRIBE", URI, USER,
            PASSWORD,
        )
    with pytest.raises(ValueError):
        makeAuthorization('Digest realm="r", nonce="n"', "SUBSCRIBE", URI, USER)


def test_clientGeneratesCnonce() -> None:
    challenge = 'Digest realm="r", nonce="n", qop="auth"'
    first = parseCredentials(makeAuthorization(challenge, "SUBSCRIBE", URI, USER, "p"))
    second = parseCredentials(makeAuthorization(challenge, "SUBSCRIBE", URI, USER, "p"))
    assert first.cnonce and second.cnonce and first.cnonce != second.cnonce


# ------------------------------------------------------------ hypothesis

_FRAGMENTS = st.sampled_from(
    [
        "Digest", "digest", " ", "\t", ",", "=", '"', "\\", "\r\n ", "\r\n", "\n",
        "username", "realm", "nonce", "uri", "response", "nc", "qop", "cnonce",
        "algorithm", "opaque", "stale", "auth", "auth-int", "00000001", "0000000G",
        "MD5", "SHA-256", "true", "sip:a@b", "x", "é", "\x00", "\ud800", "\x7f",
    ]
)
_HEADERISH = st.one_of(
    st.text(max_size=200),
    st.lists(_FRAGMENTS, max_size=60).map("".join),
    st.lists(_FRAGMENTS, max_size=30).map(
        lambda parts: 'Digest username="u", realm="r", nonce="n", uri="s", '
        'response="x", ' + "".join(parts)
    ),
)


@settings(max_examples=400, deadline=None)
@given(_HEADERISH)
def test_fuzzParseCredentials(value: str) -> None:
    """
    Any text gives credentials or DigestParseError, and what parses renders
    back into a header that parses to the same credentials.
    """
    try:
        credentials = parseCredentials(value)
    except DigestParseError:
        return
    assert parseCredentials(credentials.toHeaderValue()) == credentials


@settings(max_examples=400, deadline=None)
@given(_HEADERISH)
def test_fuzzParseChallenge(value: str) -> None:
    try:
        parseChallenge(value)
    except DigestParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzParseBytes(value: bytes) -> None:
    try:
        parseCredentials(value)
    except DigestParseError:
        pass


_VALUES = st.text(
    st.characters(exclude_categories=["Cc", "Cs"]) | st.just("\t"), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(
    username=_VALUES, realm=_VALUES, nonce=_VALUES, uri=_VALUES, response=_VALUES,
    algorithm=st.sampled_from([MD5, SHA256, "SHA-512-256"]),
    cnonce=st.none() | _VALUES, opaque=st.none() | _VALUES,
    nc=st.none() | st.integers(0, 0xFFFFFFFF),
    qop=st.none() | st.sampled_from(["auth", "auth-int"]),
)
def test_credentialsRoundTrip(**fields: object) -> None:
    """
    Credentials with arbitrary printable values (quotes, backslashes,
    commas, non-ASCII) survive rendering and parsing unchanged.
    """
    credentials = DigestCredentials(**fields)  # type: ignore[arg-type]
    assert parseCredentials(credentials.toHeaderValue()) == credentials


@settings(max_examples=50, deadline=None)
@given(
    username=_VALUES,
    password=_VALUES,
    cnonce=_VALUES.filter(bool),
    algorithm=st.sampled_from([MD5, SHA256]),
)
def test_fuzzRoundTripVerifies(
    username: str, password: str, cnonce: str, algorithm: str
) -> None:
    """
    Whatever the user name, password and cnonce, our client's answer to our
    challenge verifies, and only once.
    """
    authenticator = DigestAuthenticator(SECRET, Clock())
    challenges: List[str] = authenticator.challenge(REALM)
    challenge = [c for c in challenges if parseChallenge(c).algorithm == algorithm][0]
    credentials = parseCredentials(
        makeAuthorization(challenge, "SUBSCRIBE", URI, username, password, cnonce=cnonce)
    )
    assert credentials.username == username
    ha1 = computeHA1(username, REALM, password, algorithm)
    assert authenticator.verify(credentials, "SUBSCRIBE", ha1, REALM) is DigestResult.OK
    assert authenticator.verify(
        credentials, "SUBSCRIBE", ha1, REALM
    ) is DigestResult.REPLAY
