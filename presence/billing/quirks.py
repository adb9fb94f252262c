"""
Which digest challenges to offer a client, by its User-Agent.

The default offer (C{[billing] algorithms}: SHA-256, then MD5, RFC 8760
section 2.4) suits every client that reads RFC 8760: it takes the topmost
challenge it supports.  A few clients cannot take that offer at all: they
give up on the whole 401 when one challenge names an algorithm they do
not know, whatever else it offers.  Offering them MD5 alone is what
Kamailio and OpenSIPS do for everybody by default; here it is done only
for the clients known to need it, so the others keep SHA-256.

The table is data, one L{Quirk} per client release line, in
L{KNOWN_QUIRKS}; C{[billing] user_agent_algorithms} replaces it (see
L{parseQuirks} for the syntax).  A client forging its User-Agent to get
MD5 gains nothing: it can always answer the MD5 challenge of the default
offer.  A quirk never offers an algorithm the server does not accept
(C{[billing] algorithms}): an operator who turned MD5 off keeps it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Tuple

from presence.sip.digest import MD5, SHA256

_ALGORITHMS = {"md5": MD5, "sha-256": SHA256}

#: The product name and version of a User-Agent: its first word (up to a
#: C{/}, space or end), then the first dotted number after it, with or
#: without a C{v} or C{/} before it: C{baresip v1.0.0 (x86_64/linux)},
#: C{Linphone/5.1.65 (belle-sip/5.1.64)}, C{sipsak 0.9.8.1}.
_USER_AGENT = re.compile(r"\s*([^\s/]+)(?:[/\s]+v?(\d+(?:\.\d+)*))?")
_RULE = re.compile(r"\s*([^\s<:]+)\s*(?:<\s*(\d+(?:\.\d+)*)\s*)?:\s*(.*?)\s*\Z")


def _version(text: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Quirk:
    """
    The challenges offered to one client release line.

    @ivar product: the User-Agent's first word, lower-case.
    @ivar below: the rule holds for versions below this one (C{(3, 12)}
        for "before 3.12"), or for every version when empty; a
        User-Agent without a version is taken to be an affected one.
    @ivar algorithms: what to offer it, in order.
    @ivar why: what the client does, for the operator reading the table
        (not part of the rule's value).
    """

    product: str
    below: Tuple[int, ...]
    algorithms: Tuple[str, ...]
    why: str = field(default="", compare=False)

    def matches(self, product: str, version: Optional[Tuple[int, ...]]) -> bool:
        if product != self.product:
            return False
        return not self.below or version is None or version < self.below


#: The clients tested against this server that cannot take the default
#: offer (README, "Softphones").  Linphone 5.1 answers SHA-256 when it
#: comes first; our own client (presence.sip.digest) takes the strongest
#: it knows.
KNOWN_QUIRKS: Tuple[Quirk, ...] = (
    Quirk(
        "baresip",
        (3, 12),
        (MD5,),
        "libre before 3.12 (baresip 1.0 in Debian 12) computes MD5 digests only "
        "and gives up on the whole 401 as soon as one challenge names another "
        "algorithm, even with an MD5 challenge beside it",
    ),
    Quirk(
        "sipp",
        (),
        (MD5,),
        "SIPp 3.6 computes MD5 only and answers the first challenge it reads; "
        "it sends no User-Agent of its own: a scenario names itself with "
        "'User-Agent: sipp'",
    ),
    Quirk(
        "sipsak",
        (),
        (MD5,),
        "sipsak 0.9.8 (Debian 12) reads the first challenge and stops with "
        "'unsupported authentication algorithm' on SHA-256",
    ),
)


class ChallengeQuirks:
    """
    Picks the algorithms to challenge a request with.

    @ivar quirks: the rules, first match wins.
    """

    def __init__(self, quirks: Iterable[Quirk] = KNOWN_QUIRKS) -> None:
        self.quirks = tuple(quirks)

    def algorithmsFor(self, userAgent: Optional[str], accepted: Sequence[str]) -> Tuple[str, ...]:
        """
        The algorithms to offer a client sending C{userAgent}, in order:
        its quirk's offer cut to the C{accepted} ones, or C{accepted} as it
        is for any other client (or when nothing of the quirk is left).
        """
        accepted = tuple(accepted)
        if not userAgent or not self.quirks:
            return accepted
        match = _USER_AGENT.match(userAgent)
        if match is None:
            return accepted
        product = match.group(1).lower()
        version = _version(match.group(2)) if match.group(2) else None
        for quirk in self.quirks:
            if quirk.matches(product, version):
                offer = tuple(a for a in quirk.algorithms if a in accepted)
                return offer or accepted
        return accepted


def parseQuirks(text: str) -> Tuple[Quirk, ...]:
    """
    Parse C{[billing] user_agent_algorithms}: one rule per line (or
    separated by C{;}), C{PRODUCT [< VERSION]: ALGORITHM...}, e.g.::

        baresip < 3.12: MD5
        sipp: MD5

    PRODUCT is the User-Agent's first word (any case); C{< VERSION} limits
    the rule to older releases.  An empty value means no quirks at all.

    @raise ValueError: naming the line that is wrong.
    """
    quirks = []
    for line in re.split(r"[\n;]", text):
        if not line.strip():
            continue
        match = _RULE.match(line)
        if match is None:
            raise ValueError("%r is not PRODUCT [< VERSION]: ALGORITHMS" % (line.strip(),))
        product, below, names = match.groups()
        algorithms = []
        for name in names.replace(",", " ").split():
            if name.lower() not in _ALGORITHMS:
                raise ValueError("unknown digest algorithm %r in %r (use SHA-256 and/or MD5)" % (name, line.strip()))
            algorithms.append(_ALGORITHMS[name.lower()])
        if not algorithms:
            raise ValueError("no algorithm in %r" % (line.strip(),))
        quirks.append(Quirk(product.lower(), _version(below) if below else (), tuple(dict.fromkeys(algorithms))))
    return tuple(quirks)
