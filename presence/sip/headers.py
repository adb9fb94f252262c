"""
Structured SIP header values (RFC 3261 §20, §25): Via, name-addr headers
(From, To, Contact, Route, Record-Route), CSeq, and generic parameters.

Messages keep header values as text; these classes are built on demand by
the code that needs them, and turn back into text with C{str()}.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from presence.sip.uri import URIError, splitHostPort

MAGIC_COOKIE = "z9hG4bK"

# sent-protocol with the linear white space RFC 3261 §25.1 allows around
# each SLASH (RFC 4475 §3.1.1.1: "SIP  /   2.0 /UDP"); only tried when the
# compact form fails, so the common case costs nothing.
_sentProtocol = re.compile(
    r"[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/;]+)[ \t]+"
).match

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~ \t"
)


class HeaderError(ValueError):
    """
    A header value that does not follow its grammar.  The message is short
    and ASCII: it becomes the reason phrase of a 400 response.
    """


def splitQuoted(text: str, sep: str) -> List[str]:
    """
    Split C{text} on C{sep} outside double quotes and angle brackets.

    Used for comma-separated header lists and for C{;} parameters, whose
    quoted strings and bracketed URIs may contain either character.
    """
    if sep not in text:
        return [text]
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts = []
    start = 0
    inQuote = inAngle = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if inQuote:
            if c == "\\":
                i += 1
            elif c == '"':
                inQuote = False
        elif c == '"':
            inQuote = True
        elif c == "<":
            inAngle = True
        elif c == ">":
            inAngle = False
        elif c == sep and not inAngle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parseParams(text: str) -> Dict[str, Optional[str]]:
    """
    Parse C{;name=value;flag} into an ordered dict with lower-cased names.
    Quoted values keep their quotes so that serialising gives them back.
    """
    params: Dict[str, Optional[str]] = {}
    for part in splitQuoted(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name or " " in name or "\t" in name:
            raise HeaderError("Bad parameter")
        params[name] = value.strip() if eq else None
    return params


def formatParams(params: Dict[str, Optional[str]]) -> str:
    """
    The inverse of L{parseParams}.
    """
    return "".join(
        ";" + name if value is None else ";" + name + "=" + value
        for name, value in params.items()
    )


def unquote(value: Optional[str]) -> Optional[str]:
    """
    Strip the quotes and backslash escapes from a quoted-string value.
    """
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    inner = value[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    escaped = False
    for c in inner:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(c)
    return "".join(out)


class Via:
    """
    One Via header value: C{SIP/2.0/UDP host:port;branch=...;rport}.
    """

    __slots__ = ("transport", "host", "port", "params")

    def __init__(
        self,
        transport: str,
        host: str,
        port: Optional[int] = None,
        params: Optional[Dict[str, Optional[str]]] = None,
    ) -> None:
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = params if params is not None else {}

    @classmethod
    def fromString(cls, text: str) -> Via:
        """
        @raise HeaderError: for a malformed Via.
        """
        proto, _, rest = text.strip().partition(" ")
        parts = proto.split("/")
        if len(parts) != 3 or not rest or "\t" in proto:
            match = _sentProtocol(text)
            if match is None:
                raise HeaderError("Bad Via")
            parts = list(match.groups())
            rest = text[match.end() :]
        if parts[0].upper() != "SIP" or parts[1] != "2.0" or not parts[2]:
            raise HeaderError("Bad Via")
        sentBy, _, paramText = rest.strip().partition(";")
        sentBy = sentBy.strip()
        if " " in sentBy or "\t" in sentBy:
            # "host : port" (COLON = SWS ":" SWS)
            sentBy = "".join(sentBy.split())
        try:
            host, port = splitHostPort(sentBy)
        except URIError:
            raise HeaderError("Bad Via sent-by")
        return cls(parts[2], host, port, parseParams(paramText))

    def __str__(self) -> str:
        hostport = self.host if self.port is None else "%s:%d" % (self.host, self.port)
        return "SIP/2.0/" + self.transport + " " + hostport + formatParams(self.params)

    @property
    def branch(self) -> Optional[str]:
        """
        The branch parameter, or L{None}.
        """
        return self.params.get("branch")

    def sentBy(self) -> Tuple[str, int]:
        """
        The host and port of sent-by, with the transport's default port.
        """
        if self.port is not None:
            return self.host.lower(), self.port
        return self.host.lower(), 5061 if self.transport == "TLS" else 5060


class NameAddr:
    """
    A name-addr or addr-spec with header parameters: the value of From, To,
    Contact, Route and Record-Route.

    In the addr-spec form (no angle brackets) everything after the first C{;}
    is a header parameter, as RFC 3261 §20 requires; on output the URI is
    always bracketed, which is equivalent and unambiguous.
    """

    __slots__ = ("display", "uri", "params")

    def __init__(
        self,
        uri: str,
        display: Optional[str] = None,
        params: Optional[Dict[str, Optional[str]]] = None,
    ) -> None:
        self.uri = uri
        self.display = display
        self.params = params if params is not None else {}

    @classmethod
    def fromString(cls, text: str) -> NameAddr:
        """
        A quoted display name may hold C{<}, C{>}, C{;} and escaped quotes.
        An unquoted one that is not a sequence of tokens (C{Bell,
        Alexander}, RFC 4475 §3.1.2.15, or raw UTF-8) is quoted, so that it
        is never passed on in its invalid form.  An addr-spec holding C{?}
        or C{,} is refused: RFC 3261 §20 requires angle brackets then
        (RFC 4475 §3.1.2.13).

        @raise HeaderError: for a malformed value.
        """
        text = text.strip()
        if text[:1] == '"':
            end = text.find('"', 1) + 1
            if end <= 0 or text[end - 2] == "\\":
                # Not terminated, or an escaped quote to step over.
                end = _quotedEnd(text)
                if end < 0:
                    raise HeaderError("Unterminated quoted string")
            display: Optional[str] = text[:end]
            lt = text.find("<", end)
            if lt < 0 or text[end:lt].strip():
                raise HeaderError("Bad name-addr")
        else:
            lt = text.find("<")
            display = (text[:lt].strip() or None) if lt > 0 else None
            if display is not None and not _TOKEN_CHARS.issuperset(display):
                display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise HeaderError("Unterminated name-addr")
            uri = text[lt + 1 : gt].strip()
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise HeaderError("Bad name-addr")
        else:
            uri, _, rest = text.partition(";")
            uri = uri.strip()
            if "?" in uri or "," in uri:
                raise HeaderError("URI with ? or , needs angle brackets")
        if not uri or ":" not in uri or " " in uri or "\t" in uri:
            raise HeaderError("Bad URI in name-addr")
        return cls(uri, display, parseParams(rest))

    def __str__(self) -> str:
        prefix = self.display + " " if self.display else ""
        return prefix + "<" + self.uri + ">" + formatParams(self.params)

    @property
    def tag(self) -> Optional[str]:
        """
        The tag parameter, or L{None}.
        """
        return self.params.get("tag")


def _quotedEnd(text: str) -> int:
    """
    The index just past the quoted string that starts C{text}, honouring
    backslash escapes, or -1 when it is not terminated.
    """
    start = 1
    while True:
        quote = text.find('"', start)
        if quote < 0:
            return -1
        # The quote is escaped when an odd run of backslashes precedes it.
        before = quote - 1
        while text[before] == "\\":
            before -= 1
        if (quote - 1 - before) % 2 == 0:
            return quote + 1
        start = quote + 1


class CSeq:
    """
    The CSeq header: a sequence number and a method.
    """

    __slots__ = ("number", "method")

    MAX = 2**31 - 1

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    @classmethod
    def fromString(cls, text: str) -> CSeq:
        """
        @raise HeaderError: for anything but a number below 2**31 and a
            method token.
        """
        parts = text.split()
        # Length first: int() of thousands of digits is slow, and beyond
        # 4300 digits CPython raises ValueError rather than HeaderError.
        if (
            len(parts) != 2
            or len(parts[0]) > 10
            or not parts[0].isdigit()
            or not parts[0].isascii()
        ):
            raise HeaderError("Bad CSeq")
        number = int(parts[0])
        if number > cls.MAX:
            raise HeaderError("Bad CSeq")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return "%d %s" % (self.number, self.method)


def parseDelta(text: str, maximum: int = 2**32 - 1) -> int:
    """
    Parse a delta-seconds value (Expires, Min-Expires, Content-Length).

    @raise HeaderError: unless C{text} is ASCII digits within C{maximum}.
    """
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise HeaderError("Bad number")
    value = int(text)
    if value > maximum:
        raise HeaderError("Bad number")
    return value


def parseValueParams(text: str) -> Tuple[str, Dict[str, Optional[str]]]:
    """
    Split C{value;param=x} headers such as Event and Subscription-State into
    the lower-cased value and its parameters.
    """
    value, _, rest = text.partition(";")
    return value.strip().lower(), parseParams(rest)
