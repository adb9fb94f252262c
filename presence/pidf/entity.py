"""
Comparing presentity URIs.

A PUBLISH is addressed to C{sip:bob@example.test} while the PIDF body it
carries names its entity C{pres:bob@example.test} (RFC 3863 recommends the
C{pres:} form, SIP clients mostly use the SIP URI of the account), perhaps
with a different host case or with URI parameters. Both name the same
presentity, and a body for someone else must be refused. This module holds
the small, deliberately forgiving comparison used for that check; it is not
a SIP URI parser.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple
from urllib.parse import unquote

# Schemes that address the same presentity: RFC 3856 section 3 and
# RFC 3859 map SIP and SIPS URIs to and from pres: URIs.
_PRESENTITY_SCHEMES = frozenset(("sip", "sips", "pres"))


# Cached because every PUBLISH compares its entity with its presentity, and
# both repeat; bounded because entities come from the network.
@lru_cache(maxsize=4096)
def entityKey(uri: str) -> Optional[Tuple[str, Optional[str], str]]:
    """
    Reduce a presentity URI to what identifies the presentity.

    C{sip:}, C{sips:} and C{pres:} all map to C{"sip"}; the user part is
    percent-decoded and stays case-sensitive (RFC 3261 section 19.1.4); the
    host is lowercased; the port is kept; URI parameters and headers are
    dropped. Other schemes keep their text after the scheme, minus
    parameters and headers.

    @param uri: the URI, optionally in angle brackets.
    @return: C{(scheme, user or None, hostport)}, or L{None} if C{uri} has
        no scheme.
    """
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme:
        return None
    scheme = scheme.lower()
    if scheme not in _PRESENTITY_SCHEMES:
        return (scheme, None, _cut(rest, ";?"))
    user: Optional[str]
    user, at, hostPart = rest.partition("@")
    if not at:
        user, hostPart = None, rest
    else:
        user = unquote(user)
    return ("sip", user, _cut(hostPart, ";?").lower())


def sameEntity(first: str, second: str) -> bool:
    """
    Tell whether two URIs name the same presentity (see L{entityKey}).

    C{pres:bob@example.test} equals C{sip:bob@Example.TEST;transport=tcp};
    C{sip:Bob@example.test} does not equal C{sip:bob@example.test}.
    """
    key = entityKey(first)
    return key is not None and key == entityKey(second)


def _cut(text: str, stops: str) -> str:
    """
    Return C{text} up to the first of the characters in C{stops}.
    """
    end = len(text)
    for stop in stops:
        index = text.find(stop)
        if 0 <= index < end:
            end = index
    return text[:end]
