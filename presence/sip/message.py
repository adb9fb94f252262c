"""
The SIP message model: requests, responses and their headers, with no
knowledge of sockets or Twisted.

Headers are kept as text in a dict from the lower-case long header name to
the list of its values, in arrival order; comma-separated list headers are
split into one value each when parsed.  Header names compare
case-insensitively and compact forms (RFC 3261 §7.3.3) are expanded, so
C{msg.header("v")}, C{msg.header("VIA")} and C{msg.header("via")} agree.
Headers of different names may be re-ordered on output, which RFC 3261 §7.3.1
allows; the order of values of one name is kept.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

from presence.sip.headers import CSeq, HeaderError, NameAddr, Via

COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
}

_SPECIAL_CASE = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "mime-version": "MIME-Version",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1); each
# element becomes one value.  Authorization and friends are not lists.
LIST_HEADERS = frozenset(
    [
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "path",
        "service-route",
    ]
)

# List headers written on one line, comma-joined, for brevity; Via, Route,
# Record-Route and Contact keep a line per value, as most stacks write them.
COMMA_JOINED = LIST_HEADERS - {"via", "route", "record-route", "contact", "path", "service-route"}

REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    430: "Flow Failed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    489: "Bad Event",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}

_canonicalCache: Dict[str, str] = {}


def headerKey(name: str) -> str:
    """
    The dict key for a header name: lower case, compact forms expanded.
    """
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def canonicalName(key: str) -> str:
    """
    The conventional spelling of a header key for output (C{Call-ID},
    C{WWW-Authenticate}, C{Content-Type}).
    """
    name = _canonicalCache.get(key)
    if name is None:
        name = _SPECIAL_CASE.get(key) or "-".join(p.capitalize() for p in key.split("-"))
        if len(_canonicalCache) < 4096:
            _canonicalCache[key] = name
    return name


class Message:
    """
    What requests and responses share: headers and a body.

    @ivar headers: lower-case long header name to the list of its values.
    @ivar body: the body as bytes.
    """

    __slots__ = ("headers", "body", "_topVia")

    def __init__(self, headers: Optional[Dict[str, List[str]]] = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else {}
        self.body = body
        self._topVia: Optional[Tuple[str, Via]] = None

    def header(self, name: str) -> Optional[str]:
        """
        The first value of header C{name}, or L{None}.
        """
        values = self.headers.get(headerKey(name))
        return values[0] if values else None

    def headerValues(self, name: str) -> List[str]:
        """
        All values of header C{name}, in order (a copy).
        """
        return list(self.headers.get(headerKey(name), ()))

    def hasHeader(self, name: str) -> bool:
        return headerKey(name) in self.headers

    def setHeader(self, name: str, value: str) -> None:
        """
        Replace every value of C{name} with C{value}.
        """
        self.headers[_checkedKey(name)] = [_checked(value)]

    def addHeader(self, name: str, value: str) -> None:
        """
        Append a value to header C{name}.
        """
        value = _checked(value)
        self.headers.setdefault(_checkedKey(name), []).append(value)

    def insertHeader(self, name: str, value: str) -> None:
        """
        Put a value first, as a proxy does with Via and Record-Route.
        """
        value = _checked(value)
        self.headers.setdefault(_checkedKey(name), []).insert(0, value)

    def removeHeader(self, name: str) -> None:
        self.headers.pop(headerKey(name), None)

    # Structured access.  Each call parses; callers keep what they need.

    @property
    def callId(self) -> Optional[str]:
        return self.header("call-id")

    def cseq(self) -> CSeq:
        """
        @raise HeaderError: when CSeq is absent or malformed.
        """
        return CSeq.fromString(self.header("cseq") or "")

    def vias(self) -> List[Via]:
        return [Via.fromString(v) for v in self.headers.get("via", ())]

    def topVia(self) -> Via:
        """
        The top Via, parsed once per message: the transport, the
        transaction layer and the response path all need it, and it is
        the header parsed most often.  The value is shared: treat it as
        read-only, or hand a changed one back with L{replaceTopVia}.

        @raise HeaderError: when there is no Via or it is malformed.
        """
        values = self.headers.get("via")
        if not values:
            raise HeaderError("Missing Via")
        text = values[0]
        cached = self._topVia
        if cached is not None and cached[0] is text:
            return cached[1]
        via = Via.fromString(text)
        self._topVia = (text, via)
        return via

    def replaceTopVia(self, via: Via) -> None:
        """
        Write C{via} over the top Via value (e.g. after adding
        C{received} and C{rport}), keeping it as the parsed top Via.
        """
        text = str(via)
        self.headers["via"][0] = text
        self._topVia = (text, via)

    def fromAddr(self) -> NameAddr:
        return NameAddr.fromString(self.header("from") or "")

    def toAddr(self) -> NameAddr:
        return NameAddr.fromString(self.header("to") or "")

    def startLine(self) -> str:
        raise NotImplementedError()

    def toBytes(self) -> bytes:
        """
        Serialise, with a Content-Length that matches the body.
        """
        lines = [self.startLine()]
        append = lines.append
        for key, values in self.headers.items():
            if key == "content-length":
                continue
            name = _canonicalCache.get(key) or canonicalName(key)
            if key in COMMA_JOINED and len(values) > 1:
                append(name + ": " + ", ".join(values))
                continue
            for value in values:
                append(name + ": " + value)
        body = self.body
        append("Content-Length: %d\r\n\r\n" % (len(body),))
        head = "\r\n".join(lines).encode("utf-8")
        return head + body if body else head

    def __bytes__(self) -> bytes:
        return self.toBytes()


def _checked(value: str) -> str:
    """
    Refuse header values that would inject a line into the message.
    """
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("CR, LF or NUL in a header value")
    return value


_tokenName = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z").match
_validKeys = set(COMPACT_FORMS.values()) | set(_SPECIAL_CASE) | LIST_HEADERS


def _checkedKey(name: str) -> str:
    """
    The key for header C{name}, refusing a name that is not a token: one
    holding C{:}, white space, CR or LF would inject a header on output.
    Keys already checked are remembered (boundedly) to keep this cheap.
    """
    key = headerKey(name)
    if key not in _validKeys:
        if _tokenName(key) is None:
            raise ValueError("Header name is not a token")
        if len(_validKeys) < 2048:
            _validKeys.add(key)
    return key


class Request(Message):
    """
    A SIP request.

    @ivar method: the method, case-sensitive as RFC 3261 §7.1 says.
    @ivar uri: the Request-URI as text.
    """

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Optional[Dict[str, List[str]]] = None,
        body: bytes = b"",
    ) -> None:
        Message.__init__(self, headers, body)
        self.method = method
        self.uri = uri

    def startLine(self) -> str:
        return self.method + " " + self.uri + " SIP/2.0"

    def __repr__(self) -> str:
        return "<Request %s %s>" % (self.method, self.uri)


class Response(Message):
    """
    A SIP response.
    """

    __slots__ = ("code", "reason")

    def __init__(
        self,
        code: int,
        reason: Optional[str] = None,
        headers: Optional[Dict[str, List[str]]] = None,
        body: bytes = b"",
    ) -> None:
        Message.__init__(self, headers, body)
        self.code = code
        self.reason = reason if reason is not None else REASONS.get(code, "Unknown")

    def startLine(self) -> str:
        return "SIP/2.0 %d %s" % (self.code, self.reason)

    def __repr__(self) -> str:
        return "<Response %d %s>" % (self.code, self.reason)

    @classmethod
    def forRequest(
        cls,
        request: Request,
        code: int,
        reason: Optional[str] = None,
        toTag: Optional[str] = None,
        headers: Iterable[Tuple[str, str]] = (),
    ) -> Response:
        """
        A response to C{request} per RFC 3261 §8.2.6: Via, From, To, Call-ID
        and CSeq copied; C{toTag} added to To when it has none.

        @param headers: further C{(name, value)} pairs to add.
        """
        src = request.headers
        own: Dict[str, List[str]] = {}
        for key in ("via", "from", "to", "call-id", "cseq"):
            values = src.get(key)
            if values:
                own[key] = list(values)
        if toTag is not None and code > 100 and "to" in own:
            to = own["to"][0]
            # Only header parameters count: a URI parameter or a display
            # name spelling ";tag=" inside the brackets is not a tag.
            params = to[to.rfind(">") + 1 :]
            if ";" not in params or ";tag=" not in params.replace(" ", "").replace("\t", "").lower():
                own["to"][0] = to + ";tag=" + toTag
        response = cls(code, reason, own)
        parsed = request._topVia
        if parsed is not None and "via" in own and own["via"][0] is parsed[0]:
            response._topVia = parsed
        if reason is not None:
            response.reason = _reasonPhrase(reason)
        for name, value in headers:
            response.addHeader(name, value)
        return response


def _reasonPhrase(reason: str) -> str:
    """
    A reason phrase made safe for the status line: printable, one line,
    bounded.
    """
    cleaned = "".join(c if c >= " " and c != "\x7f" else " " for c in reason)
    return cleaned[:120] or "Error"
