"""
The plain values billing hands out, and the checks on what operators type.

Only these immutable values cross the L{presence.interfaces.IAuthorizer}
boundary, never database rows: a remote billing node can send them over
Perspective Broker as they are, and a cache can share them freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from presence.sip.digest import MD5, SHA256
from presence.sip.uri import SipURI, URIError

ACTIVE = "active"
BLOCKED = "blocked"
STATUSES = frozenset([ACTIVE, BLOCKED])

ALLOW = "allow"
ASK = "ask"
BLOCK = "block"
#: The actions of a watch rule, and the decisions of L{presence.billing.policy.decide}.
ACTIONS = frozenset([ALLOW, ASK, BLOCK])

#: The pattern of a watch rule that matches every watcher.
EVERYONE = "*"

_CUSTOMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}\Z")


class BillingError(ValueError):
    """
    Bad provisioning input or a provisioning conflict, said in one line.
    """


class UnknownAccount(BillingError):
    """
    No account has this AOR.
    """


class DuplicateAccount(BillingError):
    """
    An account with this AOR exists already.
    """


@dataclass(frozen=True)
class AccountInfo:
    """
    What billing knows of one account: enough to check its digest
    credentials and decide what it may do.

    @ivar aor: the address of record, C{sip:user@domain}.
    @ivar username: the digest username (usually the user part of C{aor}).
    @ivar realm: the digest realm the HA1 values are bound to: the domain.
    @ivar ha1Md5: C{MD5(username:realm:password)} in hex.
    @ivar ha1Sha256: C{SHA-256(username:realm:password)} in hex.
    @ivar status: C{"active"} or C{"blocked"}.
    @ivar presenceEnabled: whether the account may use presence at all.
    @ivar customer: the tenant the account belongs to.
    @ivar createdAt: when it was provisioned, epoch seconds.
    """

    aor: str
    username: str
    realm: str
    ha1Md5: str
    ha1Sha256: str
    status: str
    presenceEnabled: bool
    customer: str
    createdAt: float = 0.0

    def ha1For(self, algorithm: str) -> Optional[str]:
        """
        The stored HA1 for a digest C{algorithm}, or L{None} if we keep none.
        """
        if algorithm == MD5:
            return self.ha1Md5 or None
        if algorithm == SHA256:
            return self.ha1Sha256 or None
        return None

    @property
    def usable(self) -> bool:
        """
        Whether the account may use presence: active and presence enabled.
        """
        return self.status == ACTIVE and self.presenceEnabled


def domainOf(aor: str) -> str:
    """
    The domain of a canonical AOR (C{sip:user@domain}).
    """
    return aor.rpartition("@")[2]


def customerOf(aor: str, account: Optional[AccountInfo]) -> str:
    """
    The customer an AOR belongs to: its account's, or for an address
    without an account (possible only in a domain where authentication is
    off) the customer named after its domain, which is also the default
    customer of accounts.
    """
    if account is not None:
        return account.customer
    return domainOf(aor)


def parseAOR(text: str) -> str:
    """
    Check an address of record typed by an operator and put it in
    canonical form: C{alice@example.test}, C{sip:alice@example.test} and
    C{sips:Alice@EXAMPLE.test} become C{sip:alice@example.test} (the user
    part keeps its case, as SIP compares it).

    @raise BillingError: unless it is C{[sip:]user@host} without port,
        parameters or headers.
    """
    if not isinstance(text, str):
        raise BillingError("malformed AOR %r" % (text,))
    raw = text.strip()
    if not raw or len(raw) > 256:
        raise BillingError("malformed AOR %r" % (text,))
    lowered = raw[:5].lower()
    if not (lowered.startswith("sip:") or lowered.startswith("sips:")):
        raw = "sip:" + raw
    try:
        uri = SipURI.fromString(raw)
    except URIError as e:
        raise BillingError("malformed AOR %r: %s" % (text, e))
    if uri.user is None:
        raise BillingError("malformed AOR %r: no user part (expected user@domain)" % (text,))
    if uri.password is not None or uri.port is not None or uri.params or uri.headers:
        raise BillingError("malformed AOR %r: an AOR has no password, port or parameters" % (text,))
    return uri.aor()


def parseDomain(text: str) -> str:
    """
    Check a domain name typed by an operator; return it lower-cased.

    @raise BillingError: when it is not a host name.
    """
    domain = text.strip().lower()
    if not re.match(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z", domain):
        raise BillingError("malformed domain %r" % (text,))
    return domain


def parsePattern(text: str) -> str:
    """
    Check the watcher pattern of a watch rule: an AOR, C{@domain} (every
    watcher of that domain) or C{*} (everyone).

    @return: the canonical pattern.
    @raise BillingError: when it is none of these.
    """
    raw = text.strip()
    if raw == EVERYONE:
        return EVERYONE
    if raw.startswith("@"):
        return "@" + parseDomain(raw[1:])
    return parseAOR(raw)


def parseCustomer(text: str) -> str:
    """
    Check a customer name: 1 to 128 characters, letters, digits and
    C{. _ : + -}, starting with a letter or digit.

    @raise BillingError: otherwise.
    """
    name = text.strip()
    if not _CUSTOMER.match(name):
        raise BillingError(
            "malformed customer %r (1-128 letters, digits or . _ : + -)" % (text,)
        )
    return name
