"""
SIP digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760), sans-IO.

The module works on header I{values} (the text after C{WWW-Authenticate:},
C{Authorization:} and their C{Proxy-} twins), never on SIP message objects, so
the registrar, the subscription manager, the dispatcher and our own test client
can all use it without depending on one message model.

Server side: L{DigestAuthenticator} issues challenges and checks credentials.
Its nonces are stateless (a timestamp and a salt signed with a server secret),
so every manager sharing the secret accepts every other manager's nonces, and a
restart does not invalidate them. The only state is a bounded table of the
highest nonce-count seen per (nonce, cnonce), which is what rejects replays.

Passwords are never needed by the server: accounts store HA1 values made by
L{computeHA1} at provisioning time, one per algorithm.

Client side: L{parseChallenge}, L{chooseChallenge} and L{makeAuthorization}.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from presence.sip.randomness import randomBytes

MD5 = "MD5"
SHA256 = "SHA-256"

_HASHES: Dict[str, Callable[..., Any]] = {MD5: hashlib.md5, SHA256: hashlib.sha256}

# Preference order when we offer or pick an algorithm: RFC 8760 section 2.4
# wants the strongest first.
_PREFERENCE = (SHA256, MD5)

MAX_HEADER_LENGTH = 8192
"""Longest header value the parsers accept; anything longer is hostile."""

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
# Control characters other than HTAB, and lone surrogates (not valid UTF-8):
# rejected everywhere, so a parsed value can always be hashed, logged and
# written back into a header without injection.
_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_FOLD = re.compile("\r?\n[ \t]")
_NC = re.compile("[0-9a-fA-F]{8}")
_NONCE = re.compile("[A-Za-z0-9_-]{64}")
_NONCE_LABEL = b"presence.sip.digest nonce\x00"
_OPAQUE_LABEL = b"presence.sip.digest opaque\x00"


class DigestError(Exception):
    """
    Digest authentication cannot proceed (for example the client meets a
    challenge whose algorithm or qop it does not support).
    """


class DigestParseError(DigestError, ValueError):
    """
    A header value is not a well-formed digest challenge or credentials.
    The parsers raise nothing else, whatever text they are given.
    """


class DigestResult(enum.Enum):
    """
    Outcome of L{DigestAuthenticator.verify}.

    Only C{OK} admits the request. C{STALE} means the client knows the
    password but its nonce is too old: re-challenge with C{stale=True} so it
    retries without prompting the user. Every other value is a plain 401/407.
    """

    OK = "ok"
    STALE = "stale"
    BAD_NONCE = "bad-nonce"
    BAD_RESPONSE = "bad-response"
    REPLAY = "replay"
    WRONG_REALM = "wrong-realm"
    BAD_ALGORITHM = "bad-algorithm"
    BAD_QOP = "bad-qop"
    BAD_URI = "bad-uri"


def _canonicalAlgorithm(name: str) -> str:
    """
    Spell a known algorithm name the way we compare it (names are
    case-insensitive); leave unknown names as they came.
    """
    upper = name.upper()
    return upper if upper in _HASHES else name


def _isToken(value: str) -> bool:
    return bool(value) and all(c in _TOKEN_CHARS for c in value)


def _quote(value: str) -> str:
    """
    Render C{value} as a quoted-string, escaping C{"} and C{\\}.

    @raise ValueError: if it holds a control character or a lone surrogate,
        which could not be sent safely.
    """
    if _FORBIDDEN.search(value):
        raise ValueError("control character in digest parameter %r" % (value,))
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token(value: str) -> str:
    if not _isToken(value):
        raise ValueError("digest parameter %r is not a token" % (value,))
    return value


def _hexDigest(algorithm: str, data: str) -> str:
    return _HASHES[algorithm](data.encode("utf-8")).hexdigest()


def computeHA1(username: str, realm: str, password: str, algorithm: str = MD5) -> str:
    """
    Compute the HA1 that an account store keeps instead of a password.

    Store one per algorithm offered (MD5 and SHA-256), for the realm the
    server challenges with: HA1 binds the realm, so it changes with it.

    @return: C{H(username:realm:password)} in lower-case hex.
    @raise DigestError: for an algorithm this module does not implement.
    """
    algorithm = _canonicalAlgorithm(algorithm)
    if algorithm not in _HASHES:
        raise DigestError("unsupported digest algorithm %r" % (algorithm,))
    return _hexDigest(algorithm, "%s:%s:%s" % (username, realm, password))


def computeResponse(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = MD5,
    qop: Optional[str] = None,
    nc: Optional[int] = None,
    cnonce: Optional[str] = None,
) -> str:
    """
    Compute the C{response} parameter, shared by client and server.

    With C{qop="auth"} this is C{H(HA1:nonce:nc:cnonce:qop:H(method:uri))};
    without qop it is the RFC 2069 form C{H(HA1:nonce:H(method:uri))}.

    @param nc: the nonce-count as an integer, hashed as 8 hex digits.
    @raise DigestError: for an unsupported algorithm or qop.
    """
    algorithm = _canonicalAlgorithm(algorithm)
    if algorithm not in _HASHES:
        raise DigestError("unsupported digest algorithm %r" % (algorithm,))
    ha2 = _hexDigest(algorithm, "%s:%s" % (method, uri))
    if qop is None:
        return _hexDigest(algorithm, "%s:%s:%s" % (ha1, nonce, ha2))
    if qop != "auth" or nc is None or cnonce is None:
        raise DigestError("only qop=auth with nc and cnonce is supported")
    return _hexDigest(
        algorithm, "%s:%s:%08x:%s:%s:%s" % (ha1, nonce, nc, cnonce, qop, ha2)
    )


# --------------------------------------------------------------- parsing


def _parseAuthValue(value: Union[str, bytes]) -> Dict[str, str]:
    """
    Check that a challenge or credentials header value is of the Digest
    scheme and return its parameters (names lower-cased, quoted strings
    unescaped).

    Grammar (RFC 3261 section 25.1, lenient where harmless): scheme, LWS,
    then C{name = (token / quoted-string)} separated by commas with optional
    whitespace; folded lines are unfolded; empty list elements are skipped.
    A repeated parameter is an error: two realms are an ambiguity an attacker
    could exploit, not something to resolve.

    @raise DigestParseError: for anything malformed.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DigestParseError("header value is not UTF-8") from None
    if not isinstance(value, str):
        raise DigestParseError("header value must be text")
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestParseError("header value longer than %d" % (MAX_HEADER_LENGTH,))
    text = _FOLD.sub(" ", value)
    if _FORBIDDEN.search(text):
        raise DigestParseError("control character in header value")
    end = len(text)

    def skipSpace(i: int) -> int:
        while i < end and text[i] in " \t":
            i += 1
        return i

    def readToken(i: int) -> Tuple[str, int]:
        start = i
        while i < end and text[i] in _TOKEN_CHARS:
            i += 1
        if i == start:
            raise DigestParseError("expected a token at offset %d" % (start,))
        return text[start:i], i

    def readQuoted(i: int) -> Tuple[str, int]:
        # text[i] is the opening quote.
        chars = []
        i += 1
        while i < end:
            c = text[i]
            if c == '"':
                return "".join(chars), i + 1
            if c == "\\":
                i += 1
                if i == end:
                    break
                c = text[i]
            chars.append(c)
            i += 1
        raise DigestParseError("unterminated quoted string")

    i = skipSpace(0)
    scheme, i = readToken(i)
    if scheme.lower() != "digest":
        raise DigestParseError("not a Digest header: %r" % (scheme,))
    if i < end and text[i] not in " \t":
        raise DigestParseError("expected whitespace after the scheme")
    params: Dict[str, str] = {}
    while True:
        i = skipSpace(i)
        if i == end:
            break
        if text[i] == ",":
            i += 1
            continue
        name, i = readToken(i)
        i = skipSpace(i)
        if i == end or text[i] != "=":
            raise DigestParseError("expected '=' after %r" % (name,))
        i = skipSpace(i + 1)
        if i < end and text[i] == '"':
            paramValue, i = readQuoted(i)
        else:
            paramValue, i = readToken(i)
        key = name.lower()
        if key in params:
            raise DigestParseError("repeated parameter %r" % (key,))
        params[key] = paramValue
        i = skipSpace(i)
        if i < end and text[i] != ",":
            raise DigestParseError("expected ',' at offset %d" % (i,))
    if not params:
        raise DigestParseError("Digest header without parameters")
    return params


def _require(params: Dict[str, str], name: str) -> str:
    if name not in params:
        raise DigestParseError("missing %r parameter" % (name,))
    return params[name]


def _tokenParam(params: Dict[str, str], name: str) -> Optional[str]:
    value = params.get(name)
    if value is not None and not _isToken(value):
        raise DigestParseError("%r must be a token" % (name,))
    return value


@dataclass(frozen=True)
class DigestChallenge:
    """
    One digest challenge, as sent in a C{WWW-Authenticate} or
    C{Proxy-Authenticate} header value.

    @ivar qop: the qop options offered, lower-case; empty for an RFC 2069
        challenge.
    """

    realm: str
    nonce: str
    algorithm: str = MD5
    qop: Tuple[str, ...] = ()
    opaque: Optional[str] = None
    stale: bool = False

    def toHeaderValue(self) -> str:
        """
        Render this challenge as a header value. C{algorithm} is always
        written out, so no client has to guess (RFC 8760 section 2.4).
        """
        parts = ["realm=" + _quote(self.realm), "nonce=" + _quote(self.nonce)]
        if self.opaque is not None:
            parts.append("opaque=" + _quote(self.opaque))
        parts.append("algorithm=" + _token(self.algorithm))
        if self.qop:
            parts.append("qop=" + _quote(",".join(_token(q) for q in self.qop)))
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class DigestCredentials:
    """
    Digest credentials, as sent in an C{Authorization} or
    C{Proxy-Authorization} header value.

    @ivar algorithm: canonical spelling for known algorithms; C{"MD5"} when
        the client sent none, as the RFCs specify.
    @ivar qop: lower-case, or L{None} for RFC 2069 credentials.
    @ivar nc: the nonce-count as an integer.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = MD5
    cnonce: Optional[str] = None
    nc: Optional[int] = None
    qop: Optional[str] = None
    opaque: Optional[str] = None

    def toHeaderValue(self) -> str:
        """
        Render these credentials as a header value; C{algorithm}, C{qop} and
        C{nc} are tokens (RFC 7616 section 3.4), the rest quoted strings.

        @raise ValueError: if a value cannot be written safely.
        """
        parts = [
            "username=" + _quote(self.username),
            "realm=" + _quote(self.realm),
            "nonce=" + _quote(self.nonce),
            "uri=" + _quote(self.uri),
            "response=" + _quote(self.response),
            "algorithm=" + _token(self.algorithm),
        ]
        if self.cnonce is not None:
            parts.append("cnonce=" + _quote(self.cnonce))
        if self.opaque is not None:
            parts.append("opaque=" + _quote(self.opaque))
        if self.qop is not None:
            parts.append("qop=" + _token(self.qop))
        if self.nc is not None:
            if not 0 <= self.nc <= 0xFFFFFFFF:
                raise ValueError("nonce-count out of range: %r" % (self.nc,))
            parts.append("nc=%08x" % (self.nc,))
        return "Digest " + ", ".join(parts)


def parseCredentials(value: Union[str, bytes]) -> DigestCredentials:
    """
    Parse an C{Authorization} or C{Proxy-Authorization} header value.

    Only syntax is checked here (required parameters present, C{nc} eight
    hex digits, C{algorithm} and C{qop} tokens); whether the credentials are
    acceptable is L{DigestAuthenticator.verify}'s business.

    @raise DigestParseError: for any malformed input, and nothing else.
    """
    params = _parseAuthValue(value)
    nc: Optional[int] = None
    ncText = params.get("nc")
    if ncText is not None:
        if not _NC.fullmatch(ncText):
            raise DigestParseError("nc must be 8 hex digits")
        nc = int(ncText, 16)
    algorithm = _tokenParam(params, "algorithm")
    qop = _tokenParam(params, "qop")
    return DigestCredentials(
        username=_require(params, "username"),
        realm=_require(params, "realm"),
        nonce=_require(params, "nonce"),
        uri=_require(params, "uri"),
        response=_require(params, "response"),
        algorithm=MD5 if algorithm is None else _canonicalAlgorithm(algorithm),
        cnonce=params.get("cnonce"),
        nc=nc,
        qop=None if qop is None else qop.lower(),
        opaque=params.get("opaque"),
    )


def parseChallenge(value: Union[str, bytes]) -> DigestChallenge:
    """
    Parse a C{WWW-Authenticate} or C{Proxy-Authenticate} header value.

    @raise DigestParseError: for any malformed input, and nothing else.
    """
    params = _parseAuthValue(value)
    algorithm = _tokenParam(params, "algorithm")
    qop = tuple(
        q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()
    )
    return DigestChallenge(
        realm=_require(params, "realm"),
        nonce=_require(params, "nonce"),
        algorithm=MD5 if algorithm is None else _canonicalAlgorithm(algorithm),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


# --------------------------------------------------------------- client


def chooseChallenge(values: Iterable[str]) -> DigestChallenge:
    """
    Pick the challenge to answer among several header values: the
    strongest algorithm we support (RFC 8760 section 2.4), skipping values
    that are malformed, not Digest, or offer a qop other than C{auth}.

    @raise DigestError: if none is usable.
    """
    usable: Dict[str, DigestChallenge] = {}
    for value in values:
        try:
            challenge = parseChallenge(value)
        except DigestParseError:
            continue
        if challenge.qop and "auth" not in challenge.qop:
            continue
        usable.setdefault(challenge.algorithm, challenge)
    for algorithm in _PREFERENCE:
        if algorithm in usable:
            return usable[algorithm]
    raise DigestError("no usable digest challenge")


def newCnonce() -> str:
    """
    A fresh random client nonce (96 bits, base64url).
    """
    return base64.urlsafe_b64encode(randomBytes(12)).decode("ascii")


def makeAuthorization(
    challenge: Union[str, DigestChallenge],
    method: str,
    uri: str,
    username: str,
    password: Optional[str] = None,
    ha1: Optional[str] = None,
    cnonce: Optional[str] = None,
    nc: int = 1,
) -> str:
    """
    Answer a challenge: build the C{Authorization} (or
    C{Proxy-Authorization}) header value for one request.

    Uses qop=auth when offered, the RFC 2069 form when the challenge offers
    no qop at all. The caller keeps the nonce-count: increment C{nc} for
    every request reusing the same nonce.

    @param challenge: a header value or a parsed L{DigestChallenge}.
    @param uri: the Request-URI, exactly as it will be sent.
    @param password: the password, or pass C{ha1} instead.
    @param cnonce: defaults to a fresh L{newCnonce}.
    @raise DigestError: for an unsupported algorithm or qop.
    @raise DigestParseError: if C{challenge} is a malformed header value.
    @raise ValueError: if neither C{password} nor C{ha1} is given.
    """
    if not isinstance(challenge, DigestChallenge):
        challenge = parseChallenge(challenge)
    algorithm = challenge.algorithm
    if algorithm not in _HASHES:
        raise DigestError("unsupported digest algorithm %r" % (algorithm,))
    if ha1 is None:
        if password is None:
            raise ValueError("either password or ha1 is required")
        ha1 = computeHA1(username, challenge.realm, password, algorithm)
    qop: Optional[str] = None
    ncValue: Optional[int] = None
    if challenge.qop:
        if "auth" not in challenge.qop:
            raise DigestError("challenge offers no qop=auth: %r" % (challenge.qop,))
        qop, ncValue = "auth", nc
        if cnonce is None:
            cnonce = newCnonce()
    else:
        cnonce = None
    response = computeResponse(
        ha1, method, uri, challenge.nonce, algorithm, qop, ncValue, cnonce
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce,
        nc=ncValue,
        qop=qop,
        opaque=challenge.opaque,
    ).toHeaderValue()


# --------------------------------------------------------------- server


class DigestAuthenticator:
    """
    Issue digest challenges and verify credentials, for any number of realms.

    Nonce: C{base64url(issued-ms | salt | HMAC-SHA256(secret, issued-ms |
    salt | realm))}, 64 characters. Validation needs no state; nodes sharing
    C{serverSecret} accept each other's nonces. A nonce older than
    C{nonceLifetime} seconds gives L{DigestResult.STALE}.

    Replays: the highest nonce-count accepted per (nonce, cnonce) is kept
    until the nonce expires, in a table of at most C{maxTracked} entries.
    When the table is full the least recently used entry is dropped and
    every nonce issued up to that entry's nonce is then answered C{STALE}
    unless it is still tracked: memory stays bounded and an evicted entry
    can never be replayed, at worst an honest client re-authenticates.
    The table is per process: a replay sent to another node sharing the
    secret is not detected there.

    @ivar algorithms: the algorithms offered, strongest first.
    @ivar useOpaque: whether challenges carry an C{opaque} (derived from
        the nonce, so still stateless) that credentials must echo.
    @ivar allowNoQop: whether RFC 2069 credentials (no qop, hence no
        nonce-count and no replay protection) are accepted.
    """

    log = Logger()

    def __init__(
        self,
        serverSecret: bytes,
        clock: IReactorTime,
        nonceLifetime: float = 300.0,
        algorithms: Iterable[str] = _PREFERENCE,
        useOpaque: bool = False,
        allowNoQop: bool = False,
        maxTracked: int = 10000,
    ) -> None:
        """
        @param serverSecret: at least 16 random bytes, shared by every node
            that must accept the nonces issued here.
        @param clock: anything with C{seconds()}, such as the reactor or a
            L{twisted.internet.task.Clock}.
        """
        if not isinstance(serverSecret, bytes) or len(serverSecret) < 16:
            raise ValueError("serverSecret must be at least 16 bytes")
        if nonceLifetime <= 0:
            raise ValueError("nonceLifetime must be positive")
        if maxTracked < 1:
            raise ValueError("maxTracked must be at least 1")
        self.algorithms = tuple(_canonicalAlgorithm(a) for a in algorithms)
        if not self.algorithms:
            raise ValueError("no algorithm to offer")
        for algorithm in self.algorithms:
            if algorithm not in _HASHES:
                raise ValueError("unsupported digest algorithm %r" % (algorithm,))
        self._secret = serverSecret
        self._clock = clock
        self.nonceLifetime = nonceLifetime
        self._lifetimeMs = int(nonceLifetime * 1000)
        self.useOpaque = useOpaque
        self.allowNoQop = allowNoQop
        self.maxTracked = maxTracked
        # (nonce, cnonce) -> [highest nc, nonce issue time in ms]
        self._counts: OrderedDict[Tuple[str, str], List[int]] = OrderedDict()
        self._evictedUpTo = -1
        self._nextPurge = 0

    @property
    def trackedCount(self) -> int:
        """
        How many (nonce, cnonce) pairs the replay table holds now.
        """
        return len(self._counts)

    def _nowMs(self) -> int:
        return max(0, int(self._clock.seconds() * 1000))

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, label + data, hashlib.sha256).digest()

    def newNonce(self, realm: str) -> str:
        """
        Mint a nonce for C{realm}.
        """
        head = struct.pack(">Q", self._nowMs()) + randomBytes(8)
        mac = self._mac(_NONCE_LABEL, head + realm.encode("utf-8"))
        return base64.urlsafe_b64encode(head + mac).decode("ascii")

    def _nonceIssued(self, nonce: str, realm: str) -> Optional[int]:
        """
        @return: when C{nonce} was issued for C{realm}, in ms, or L{None}
            if we did not issue it.
        """
        if not _NONCE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce)
        head, mac = raw[:16], raw[16:]
        expected = self._mac(_NONCE_LABEL, head + realm.encode("utf-8"))
        if not hmac.compare_digest(mac, expected):
            return None
        return int(struct.unpack(">Q", head[:8])[0])

    def _opaqueFor(self, nonce: str) -> str:
        mac = self._mac(_OPAQUE_LABEL, nonce.encode("utf-8"))[:12]
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def challenge(
        self, realm: str, stale: bool = False, algorithms: Optional[Iterable[str]] = None
    ) -> List[str]:
        """
        Header values for a 401 C{WWW-Authenticate} (or 407
        C{Proxy-Authenticate}): one per algorithm, strongest first, sharing
        one fresh nonce, each with C{qop="auth"} and an explicit
        C{algorithm}.

        @param stale: set after L{DigestResult.STALE}, so the client retries
            with the new nonce without asking its user again.
        @param algorithms: the ones to offer this client, in order (for a
            client that cannot take them all, L{presence.billing.quirks});
            every algorithm offered by default when L{None}.
        @raise ValueError: for an algorithm not among L{algorithms}, which
            could never be verified.
        """
        if algorithms is None:
            offered = self.algorithms
        else:
            offered = tuple(_canonicalAlgorithm(a) for a in algorithms)
            if not offered or not set(offered) <= set(self.algorithms):
                raise ValueError("can only offer some of %r, not %r" % (self.algorithms, offered))
        nonce = self.newNonce(realm)
        opaque = self._opaqueFor(nonce) if self.useOpaque else None
        return [
            DigestChallenge(
                realm=realm,
                nonce=nonce,
                algorithm=algorithm,
                qop=("auth",),
                opaque=opaque,
                stale=stale,
            ).toHeaderValue()
            for algorithm in offered
        ]

    def verify(
        self,
        credentials: DigestCredentials,
        method: str,
        ha1: Optional[str],
        realm: str,
        requestUri: Optional[str] = None,
    ) -> DigestResult:
        """
        Check credentials against the stored HA1 for their user and
        algorithm.

        The response is checked before staleness (RFC 7616 section 3.3:
        only a client that knows the password is told its nonce is stale)
        and a nonce-count is recorded only once the response is right, so a
        guesser cannot fill the replay table or burn a client's counts.

        @param credentials: from L{parseCredentials}.
        @param method: the request's method, e.g. C{"SUBSCRIBE"}.
        @param ha1: the account's HA1 for C{credentials.realm} and
            C{credentials.algorithm}, or L{None} for an unknown user (which
            costs the same work and gives L{DigestResult.BAD_RESPONSE}).
        @param realm: the realm this server challenges with for the request;
            never take it from the credentials.
        @param requestUri: the Request-URI; if given, C{credentials.uri}
            must equal it exactly.
        """
        result = self._verify(credentials, method, ha1, realm, requestUri)
        if result is not DigestResult.OK:
            self.log.debug(
                "digest {result} for {username} in {realm}",
                result=result.value,
                username=credentials.username,
                realm=realm,
            )
        return result

    def _verify(
        self,
        credentials: DigestCredentials,
        method: str,
        ha1: Optional[str],
        realm: str,
        requestUri: Optional[str],
    ) -> DigestResult:
        if credentials.realm != realm:
            return DigestResult.WRONG_REALM
        algorithm = credentials.algorithm
        if algorithm not in self.algorithms:
            return DigestResult.BAD_ALGORITHM
        if requestUri is not None and credentials.uri != requestUri:
            return DigestResult.BAD_URI
        qop = credentials.qop
        cnonce = credentials.cnonce
        nc = credentials.nc
        if qop is None:
            if not self.allowNoQop:
                return DigestResult.BAD_QOP
        elif qop != "auth" or not cnonce or nc is None or nc < 1:
            return DigestResult.BAD_QOP
        issued = self._nonceIssued(credentials.nonce, realm)
        if issued is None:
            return DigestResult.BAD_NONCE
        if self.useOpaque and credentials.opaque != self._opaqueFor(credentials.nonce):
            return DigestResult.BAD_NONCE

        known = ha1 is not None
        if ha1 is None:
            ha1 = "0" * len(_HASHES[algorithm]().hexdigest())
        if qop is None:
            nc = cnonce = None
        expected = computeResponse(
            ha1, method, credentials.uri, credentials.nonce, algorithm, qop, nc, cnonce
        )
        given = credentials.response.lower().encode("utf-8")
        if not hmac.compare_digest(expected.encode("ascii"), given) or not known:
            return DigestResult.BAD_RESPONSE

        now = self._nowMs()
        if abs(now - issued) > self._lifetimeMs:
            return DigestResult.STALE
        if qop is None:
            return DigestResult.OK
        assert cnonce is not None and nc is not None
        return self._checkCount(credentials.nonce, cnonce, nc, issued, now)

    def _checkCount(
        self, nonce: str, cnonce: str, nc: int, issued: int, now: int
    ) -> DigestResult:
        """
        Accept C{nc} only if it is above every count seen for this
        (nonce, cnonce), and remember it.
        """
        key = (nonce, cnonce)
        entry = self._counts.get(key)
        if entry is not None:
            if nc <= entry[0]:
                return DigestResult.REPLAY
            entry[0] = nc
            self._counts.move_to_end(key)
            return DigestResult.OK
        if issued <= self._evictedUpTo:
            # Its count may have been evicted: make the client take a new
            # nonce rather than risk accepting a replay.
            return DigestResult.STALE
        if now >= self._nextPurge or len(self._counts) >= self.maxTracked:
            self._purgeExpired(now)
        while len(self._counts) >= self.maxTracked:
            _, (_, evictedIssued) = self._counts.popitem(last=False)
            self._evictedUpTo = max(self._evictedUpTo, evictedIssued)
        self._counts[key] = [nc, issued]
        return DigestResult.OK

    def _purgeExpired(self, now: int) -> None:
        """
        Drop counts of expired nonces: those are answered C{STALE} before
        the table is consulted, so their counts no longer matter.
        """
        expired = [
            key
            for key, (_, issued) in self._counts.items()
            if abs(now - issued) > self._lifetimeMs
        ]
        for key in expired:
            del self._counts[key]
        self._nextPurge = now + max(1, self._lifetimeMs // 2)


__all__ = [
    "MD5",
    "SHA256",
    "MAX_HEADER_LENGTH",
    "DigestError",
    "DigestParseError",
    "DigestResult",
    "DigestChallenge",
    "DigestCredentials",
    "DigestAuthenticator",
    "computeHA1",
    "computeResponse",
    "parseCredentials",
    "parseChallenge",
    "chooseChallenge",
    "newCnonce",
    "makeAuthorization",
]
