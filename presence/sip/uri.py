"""
SIP and SIPS URIs (RFC 3261 §19.1), parsed and serialised without Twisted.

A URI is parsed only when something needs its parts (routing, AOR
comparison); the message layer keeps URIs as text until then, which keeps
the hot parse path short.  Other schemes (C{tel:}, C{pres:}, C{urn:}) are
kept as an opaque L{AbsoluteURI} so that a request naming one can still be
answered precisely.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple, Union


class URIError(ValueError):
    """
    Text that is not a URI this server understands.
    """


# Characters no URI may hold unescaped: controls, space, DEL, and the
# delimiters that would end it inside a header (RFC 3261 §25.1).
_illegal = re.compile(r'[\x00-\x20\x7f<>"]').search

# A host name or IPv4 address (RFC 3261 §25.1 hostname / IPv4address; "_" is
# tolerated because real deployments use it), and the inside of an IPv6
# reference.
_hostname = re.compile(r"[A-Za-z0-9._-]+\Z").match
_ipv6 = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z").match

_escape = re.compile(r"%([0-9A-Fa-f]{2})")

# RFC 3261 §19.1.4: characters outside the reserved set are equivalent to
# their %HEX HEX form; reserved ones, and anything that may not appear
# unescaped in a user part (NUL, space...), are not.
_UNRESERVED = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()"
)


def _decodeUnreserved(match: re.Match) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normaliseEscapes(text: str) -> str:
    """
    Put the escapes of a URI part in canonical form: an escaped unreserved
    character is decoded (C{%75} becomes C{u}), every other escape is kept
    with upper-case hex digits (C{%3a} becomes C{%3A}, C{%00} stays).

    Decoding everything, as C{urllib.parse.unquote} does, would make
    C{sip:a%40b@c} and C{sip:a@b@c} collide, would not be idempotent, and
    would put NUL and spaces into AORs that are used as database keys
    (RFC 4475 §3.1.1.4).
    """
    if "%" not in text:
        return text
    return _escape.sub(_decodeUnreserved, text)


def _splitParams(text: str) -> Dict[str, Optional[str]]:
    """
    Split C{;a=b;c} into an ordered dict; names are lower-cased because URI
    parameter names are case-insensitive (RFC 3261 §19.1.4).
    """
    params: Dict[str, Optional[str]] = {}
    for part in text.split(";"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _formatParams(params: Dict[str, Optional[str]]) -> str:
    return "".join(
        ";" + name if value is None else ";" + name + "=" + value
        for name, value in params.items()
    )


def splitHostPort(text: str) -> Tuple[str, Optional[int]]:
    """
    Split C{host[:port]}, where host may be an IPv6 reference C{[::1]}.

    @return: the host (IPv6 references keep their brackets) and the port or
        L{None}.
    @raise URIError: for an empty host or a port that is not 1-65535.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise URIError("Unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise URIError("Bad host")
        portText = rest[1:] if rest else ""
        if _ipv6(host) is None:
            raise URIError("Bad host")
    else:
        host, _, portText = text.partition(":")
        if _hostname(host) is None:
            raise URIError("Bad host")
    if not portText:
        if text.endswith(":"):
            raise URIError("Bad port")
        return host, None
    # isdigit() accepts non-ASCII digits ("²" even makes int() raise), and a
    # long run of digits costs int() quadratic time: check both first.
    if not portText.isdigit() or not portText.isascii() or len(portText) > 5:
        raise URIError("Bad port")
    port = int(portText)
    if not 0 < port < 65536:
        raise URIError("Bad port")
    return host, port


class SipURI:
    """
    A C{sip:} or C{sips:} URI.

    Equality follows the parts that identify a resource for this server:
    scheme, user (with password), lower-cased host and port; parameters and
    headers are kept and serialised but take part neither in equality nor
    in L{aor}.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(
        self,
        host: str,
        user: Optional[str] = None,
        port: Optional[int] = None,
        scheme: str = "sip",
        password: Optional[str] = None,
        params: Optional[Dict[str, Optional[str]]] = None,
        headers: str = "",
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers

    @classmethod
    def fromString(cls, text: str) -> SipURI:
        """
        Parse C{sip:user:password@host:port;params?headers}.

        The user part may hold C{;} and C{?} (RFC 3261 §25.1
        user-unreserved, RFC 4475 §3.1.1.2 and §3.1.1.9) but never an
        unescaped C{@}, so the first C{@} ends it.

        @raise URIError: when C{text} is not a well-formed SIP or SIPS URI.
        """
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise URIError("Not a SIP URI")
        if _illegal(text) is not None:
            raise URIError("Illegal character in URI")
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            if not user:
                raise URIError("Empty user part")
            password = pw if sep else None
        rest, _, headers = rest.partition("?")
        hostport, _, paramText = rest.partition(";")
        host, port = splitHostPort(hostport)
        return cls(host, user, port, scheme, password, _splitParams(paramText), headers)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(":%d" % (self.port,))
        out.append(_formatParams(self.params))
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    def __repr__(self) -> str:
        return "SipURI(%r)" % (str(self),)

    def _identity(self) -> Tuple[str, Optional[str], Optional[str], str, Optional[int]]:
        user = None if self.user is None else normaliseEscapes(self.user)
        return (self.scheme, user, self.password, self.host.lower(), self.port)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipURI):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def aor(self) -> str:
        """
        The address-of-record this URI names: C{sip:user@host}, the user's
        escapes normalised (L{normaliseEscapes}), the host lower-cased, no
        port, parameters or headers.  C{sips:} is folded into C{sip:} since
        both name the same resource.  Idempotent:
        C{normaliseAOR(normaliseAOR(x)) == normaliseAOR(x)}.
        """
        host = self.host.lower()
        if self.user is None:
            return "sip:" + host
        return "sip:" + normaliseEscapes(self.user) + "@" + host


class AbsoluteURI:
    """
    A URI of a scheme other than SIP, kept as text (C{tel:}, C{pres:}, ...).
    """

    __slots__ = ("scheme", "text")

    def __init__(self, text: str) -> None:
        scheme, colon, _ = text.partition(":")
        if not colon or not scheme or not scheme[0].isalpha() or not all(
            c.isalnum() or c in "+-." for c in scheme
        ):
            raise URIError("Bad URI scheme")
        if _illegal(text) is not None:
            raise URIError("Illegal character in URI")
        self.scheme = scheme.lower()
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteURI):
            return NotImplemented
        return self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def aor(self) -> str:
        """
        For C{pres:user@host} (RFC 3859) the equivalent SIP AOR, else the
        text itself.
        """
        if self.scheme == "pres":
            rest = self.text.partition(":")[2]
            user, at, host = rest.partition("@")
            if at and user:
                return "sip:" + normaliseEscapes(user) + "@" + host.split(";")[0].lower()
        return self.text


URI = Union[SipURI, AbsoluteURI]


def parseURI(text: str) -> URI:
    """
    Parse any URI: SIP and SIPS fully, other schemes opaquely.

    @raise URIError: when C{text} is not a URI.
    """
    prefix = text[:5].lower()
    if prefix[:4] == "sip:" or prefix == "sips:":
        return SipURI.fromString(text)
    return AbsoluteURI(text)


def normaliseAOR(text: str) -> str:
    """
    The canonical AOR (C{sip:user@host}) for a URI given as text.

    @raise URIError: when C{text} is not a URI.
    """
    return parseURI(text).aor()
