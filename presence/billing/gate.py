"""
The door of the subscription manager: digest authentication of SUBSCRIBE
and PUBLISH (RFC 3261 section 22, RFC 7616, RFC 8760), then the account's
standing, before any policy decision.

Sans-IO: L{AuthGate.admit} takes a request, its source and the AOR it
claims (its From), and fires with L{Admitted} or with the L{Refused}
answer to send; it never touches a transport, so the manager, a future
registrar and the tests share it.

What each answer is, and why:

  - no credentials: 401 with one C{WWW-Authenticate} per algorithm
    (SHA-256 first, then MD5), C{qop="auth"}, realm = the AOR's domain;
    a client known to fail on that offer gets the one it can answer,
    chosen by its User-Agent (L{presence.billing.quirks});
  - good credentials: admitted, unless the account is blocked or its
    presence is disabled (403) -- told only to whom knows the password;
  - good credentials of another account than the AOR's (authenticated
    as alice, acting for bob): 403 -- another 401 would have the UA
    retry the same credentials for ever.  The other account is the one
    whose AOR has the digest username as user part, in the same domain;
  - wrong password, unknown account, unusable or replayed credentials: a
    fresh 401, the same for all of them (no account enumeration: the
    digest check does the same work for an unknown user);
  - right password on an expired nonce: 401 with C{stale=true}, so the UA
    retries without asking its user;
  - C{maxFailures} failures from one source address within C{window}
    seconds: 403 "Too Many Failed Authentications" with Retry-After,
    without even looking at the credentials, until the window has passed.
    The table of sources is bounded (least recently failing dropped first).
  - a domain in C{noAuthDomains} (trusted networks): no challenge, the
    From AOR is trusted as it is; its account, if it has one, must still
    be active with presence enabled.  Anyone who can reach the server can
    claim such an AOR: list only domains whose traffic comes from trusted
    networks.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from presence.billing.quirks import ChallengeQuirks
from presence.billing.records import BLOCKED, AccountInfo, domainOf
from presence.sip.digest import (
    DigestAuthenticator,
    DigestCredentials,
    DigestParseError,
    DigestResult,
    parseCredentials,
)

Headers = List[Tuple[str, str]]

#: A digest username that can be the user part of an AOR (RFC 3261
#: section 25.1 unreserved and user-unreserved characters, and escapes).
_USER_PART = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]{1,128}\Z")


class Admitted:
    """
    The request may go on, on behalf of C{aor}.

    @ivar account: its account, or L{None} in a domain without
        authentication where it has none.
    """

    __slots__ = ("aor", "account")

    def __init__(self, aor: str, account: Optional[AccountInfo]) -> None:
        self.aor = aor
        self.account = account

    def __repr__(self) -> str:
        return "<Admitted %s>" % (self.aor,)


class Refused:
    """
    Answer the request with C{code} (401 or 403), C{reason} and C{headers}.
    """

    __slots__ = ("code", "reason", "headers")

    def __init__(self, code: int, reason: Optional[str] = None, headers: Optional[Headers] = None) -> None:
        self.code = code
        self.reason = reason
        self.headers = headers or []

    def __repr__(self) -> str:
        return "<Refused %d %s>" % (self.code, self.reason or "")


class FailureLimiter:
    """
    Counts authentication failures per source address in a sliding window,
    in bounded memory: at most C{maxSources} addresses, each with at most
    C{maxFailures} timestamps.
    """

    def __init__(self, clock: Any, maxFailures: int = 10, window: float = 60.0, maxSources: int = 10000) -> None:
        self.clock = clock
        self.maxFailures = maxFailures
        self.window = window
        self.maxSources = maxSources
        self._failures: OrderedDict[str, List[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retryAfter(self, host: str) -> Optional[int]:
        """
        Seconds until C{host} may try again, or L{None} if it may now.
        """
        times = self._failures.get(host)
        if times is None or len(times) < self.maxFailures:
            return None
        now = self.clock.seconds()
        wait = times[0] + self.window - now
        if wait <= 0:
            return None
        return max(1, int(math.ceil(wait)))

    def failed(self, host: str) -> None:
        """
        Record one failure of C{host}.
        """
        now = self.clock.seconds()
        times = self._failures.pop(host, None)
        if times is None:
            times = []
        cutoff = now - self.window
        times = [t for t in times if t > cutoff]
        times.append(now)
        del times[: -self.maxFailures]
        self._failures[host] = times
        while len(self._failures) > self.maxSources:
            self._failures.popitem(last=False)


class AuthGate:
    """
    Authenticates requests and checks the account's standing.

    @ivar counters: C{challenges} (401 without a failure), C{failures}
        (bad credentials), C{stale}, C{rateLimited}, C{forbidden} (403 for
        the account's standing, or credentials of another account),
        C{admitted}.
    """

    log = Logger()

    def __init__(
        self,
        authorizer: Any,
        digest: DigestAuthenticator,
        clock: Any,
        noAuthDomains: Iterable[str] = (),
        limiter: Optional[FailureLimiter] = None,
        quirks: Optional[ChallengeQuirks] = None,
    ) -> None:
        """
        @param authorizer: an L{presence.interfaces.IAuthorizer}.
        @param digest: issues and checks nonces; managers of one cluster
            share its secret.
        @param quirks: the challenges per User-Agent; the built-in table
            by default.
        """
        self.authorizer = authorizer
        self.digest = digest
        self.clock = clock
        self.noAuthDomains = frozenset(d.lower() for d in noAuthDomains)
        self.limiter = limiter if limiter is not None else FailureLimiter(clock)
        self.quirks = quirks if quirks is not None else ChallengeQuirks()
        self.counters = {
            "challenges": 0,
            "failures": 0,
            "stale": 0,
            "rateLimited": 0,
            "forbidden": 0,
            "admitted": 0,
        }

    def challenge(self, request: Any, realm: str, stale: bool = False) -> Headers:
        """
        The C{WWW-Authenticate} headers of a 401 to C{request} for C{realm}.
        """
        algorithms = self.quirks.algorithmsFor(request.header("user-agent"), self.digest.algorithms)
        return [("WWW-Authenticate", value) for value in self.digest.challenge(realm, stale, algorithms)]

    def admit(self, request: Any, host: str, aor: str) -> Deferred:
        """
        Decide whether C{request}, from source address C{host}, may act for
        C{aor} (the canonical AOR of its From).

        @return: a Deferred firing with L{Admitted} or L{Refused}; failing
            only when billing cannot be reached.
        """
        retry = self.limiter.retryAfter(host)
        if retry is not None:
            self.counters["rateLimited"] += 1
            return succeed(Refused(403, "Too Many Failed Authentications", [("Retry-After", str(retry))]))
        if "@" not in aor:
            self.counters["forbidden"] += 1
            return succeed(Refused(403, "No User In From"))
        domain = domainOf(aor)
        if domain in self.noAuthDomains:
            return self.authorizer.account(aor).addCallback(self._standing, aor)
        values = request.headerValues("authorization")
        if not values:
            self.counters["challenges"] += 1
            return succeed(Refused(401, None, self.challenge(request, domain)))
        credentials = None
        for value in values:
            try:
                parsed = parseCredentials(value)
            except DigestParseError:
                continue
            if parsed.realm == domain:
                credentials = parsed
                break
        if credentials is None:
            return succeed(self._failed(request, host, domain, aor, "no usable credentials"))
        d = self.authorizer.account(aor)
        d.addCallback(self._verify, request, credentials, host, domain, aor)
        return d

    def _verify(
        self,
        account: Optional[AccountInfo],
        request: Any,
        credentials: DigestCredentials,
        host: str,
        domain: str,
        aor: str,
    ) -> Any:
        if account is None or account.username != credentials.username:
            return self._verifyOther(request, credentials, host, domain, aor)
        result = self.digest.verify(
            credentials, request.method, account.ha1For(credentials.algorithm), domain, request.uri
        )
        if result is DigestResult.OK:
            return self._standing(account, aor)
        return self._refused(result, request, host, domain, aor)

    def _verifyOther(
        self, request: Any, credentials: DigestCredentials, host: str, domain: str, aor: str
    ) -> Any:
        """
        The credentials are not those of C{aor}'s account: are they the
        good credentials of another one?  Then the UA knows its password
        and acts for an AOR that is not its own: 403.
        """
        other = "sip:%s@%s" % (credentials.username, domain)
        if other == aor or not _USER_PART.match(credentials.username):
            d: Deferred = succeed(None)
        else:
            d = self.authorizer.account(other)

        def verified(account: Optional[AccountInfo]) -> Any:
            ha1 = None
            if account is not None and account.username == credentials.username:
                ha1 = account.ha1For(credentials.algorithm)
            result = self.digest.verify(credentials, request.method, ha1, domain, request.uri)
            if result is DigestResult.OK:
                self.counters["forbidden"] += 1
                self.log.info(
                    "{other} authenticated from {host} for {aor}: refused",
                    other=other, host=host, aor=aor,
                )
                return Refused(403, "Credentials Of Another Account")
            return self._refused(result, request, host, domain, aor)

        return d.addCallback(verified)

    def _refused(self, result: DigestResult, request: Any, host: str, domain: str, aor: str) -> Refused:
        if result is DigestResult.STALE:
            self.counters["stale"] += 1
            return Refused(401, None, self.challenge(request, domain, stale=True))
        return self._failed(request, host, domain, aor, result.value)

    def _failed(self, request: Any, host: str, domain: str, aor: str, why: str) -> Refused:
        self.counters["failures"] += 1
        self.limiter.failed(host)
        self.log.info(
            "Authentication failed for {aor} from {host}: {why}", aor=aor, host=host, why=why
        )
        return Refused(401, None, self.challenge(request, domain))

    def _standing(self, account: Optional[AccountInfo], aor: str) -> Any:
        if account is not None:
            if account.status == BLOCKED:
                self.counters["forbidden"] += 1
                return Refused(403, "Account Blocked")
            if not account.presenceEnabled:
                self.counters["forbidden"] += 1
                return Refused(403, "Presence Not Enabled")
        self.counters["admitted"] += 1
        return Admitted(aor, account)
