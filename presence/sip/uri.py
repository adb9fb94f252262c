"""
SIP and SIPS URIs (RFC 3261 §19.1), parsed and serialised without Twisted.

A URI is parsed only when something needs its parts (routing, AOR
comparison); the message layer keeps URIs as text until then, which keeps
the hot parse path short.  Other schemes (C{tel:}, C{pres:}, C{urn:}) are
kept as an opaque L{AbsoluteURI} so that a request naming one can still be
answered precisely.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union
from urllib.parse import unquote


class URIError(ValueError):
    """
    Text that is not a URI this server understands.
    """


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
    else:
        host, _, portText = text.partition(":")
    if not host or any(c in host for c in " \t<>\"") or host == "[]":
        raise URIError("Bad host")
    if not portText:
        if text.endswith(":"):
            raise URIError("Bad port")
        return host, None
    if not portText.isdigit() or not 0 < int(portText) < 65536:
        raise URIError("Bad port")
    return host, int(portText)


class SipURI:
    """
    A C{sip:} or C{sips:} URI.

    Equality follows the parts that identify a resource for this server:
    scheme, user, lower-cased host and port; parameters and headers are kept
    and serialised but do not take part in L{aor}.
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

        @raise URIError: when C{text} is not a well-formed SIP or SIPS URI.
        """
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise URIError("Not a SIP URI")
        if any(c in text for c in " \t\r\n\x00<>\""):
            raise URIError("Illegal character in URI")
        rest, _, headers = rest.partition("?")
        user = password = None
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            if not user:
                raise URIError("Empty user part")
            password = pw if sep else None
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipURI):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def aor(self) -> str:
        """
        The address-of-record this URI names: C{sip:user@host}, the user
        percent-decoded, the host lower-cased, no port, parameters or headers.
        C{sips:} is folded into C{sip:} since both name the same resource.
        """
        host = self.host.lower()
        if self.user is None:
            return "sip:" + host
        return "sip:" + unquote(self.user) + "@" + host


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
        if any(c in text for c in " \t\r\n\x00<>\""):
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
            if at:
                return "sip:" + unquote(user) + "@" + host.split(";")[0].lower()
        return self.text


URI = Union[SipURI, AbsoluteURI]


def parseURI(text: str) -> URI:
    """
    Parse any URI: SIP and SIPS fully, other schemes opaquely.

    @raise URIError: when C{text} is not a URI.
    """
    if text[:4].lower() in ("sip:", "sips"):
        return SipURI.fromString(text)
    return AbsoluteURI(text)


def normaliseAOR(text: str) -> str:
    """
    The canonical AOR (C{sip:user@host}) for a URI given as text.

    @raise URIError: when C{text} is not a URI.
    """
    return parseURI(text).aor()
