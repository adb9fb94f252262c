"""
Turning bytes into SIP messages (RFC 3261 §7, §18.3), for datagrams and for
streams, within configured limits.

Nothing here trusts its input.  Any byte string gives either a L{Request} or
L{Response}, or a L{ParseError} that says which status code answers it (when
the message carried enough to be answered at all) and why.  L{StreamFramer}
cuts a TCP or TLS byte stream into messages by Content-Length without ever
buffering more than the limits allow.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

from presence.sip.headers import CSeq, HeaderError, splitQuoted
from presence.sip.message import COMPACT_FORMS, LIST_HEADERS, Message, Request, Response

_TOKEN_EXTRA = frozenset("-.!%*_+`'~")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")


class Limits:
    """
    Size limits for incoming messages.  Defaults suit presence traffic: a
    SUBSCRIBE is under 1 KiB and a rich PIDF body a few KiB.

    @ivar maxMessageSize: the largest whole message (64 KiB, the UDP limit).
    @ivar maxHeaders: the most header lines in one message.
    @ivar maxLineLength: the longest header line.
    @ivar maxUriLength: the longest Request-URI (beyond it, 414).
    @ivar maxBodySize: the largest body (beyond it, 413).
    """

    __slots__ = ("maxMessageSize", "maxHeaders", "maxLineLength", "maxUriLength", "maxBodySize")

    def __init__(
        self,
        maxMessageSize: int = 65535,
        maxHeaders: int = 100,
        maxLineLength: int = 8192,
        maxUriLength: int = 1024,
        maxBodySize: int = 60000,
    ) -> None:
        self.maxMessageSize = maxMessageSize
        self.maxHeaders = maxHeaders
        self.maxLineLength = maxLineLength
        self.maxUriLength = maxUriLength
        self.maxBodySize = maxBodySize


DEFAULT_LIMITS = Limits()


class ParseError(Exception):
    """
    Input that is not an acceptable SIP message.

    @ivar code: the status code that answers it (400, 413, 414, 505, 513), or
        L{None} when no answer is possible (a broken response, or a request
        too broken to address a response to).
    @ivar reason: a short ASCII explanation, usable as the reason phrase.
    @ivar partial: whatever of the message could be read, used to address
        the error response; L{None} if nothing could.
    """

    def __init__(self, code: Optional[int], reason: str, partial: Optional[Message] = None) -> None:
        Exception.__init__(self, code, reason)
        self.code = code
        self.reason = reason
        self.partial = partial

    def errorResponse(self) -> Optional[Response]:
        """
        The response that answers the bad request, or L{None} when it cannot
        be answered: not a request, no code, or its Via, From, To, Call-ID or
        CSeq missing or unusable.

        Unusable means unsafe to copy: holding CR, LF, NUL or undecodable
        bytes.  A value that merely breaks its grammar is copied as it came,
        as RFC 3261 §8.2.6.2 asks, so that a request is still answered when
        its very fault is in one of these headers: an overlarge CSeq gets its
        400 (RFC 4475 §3.1.2.4), a C{SIP/7.0} request with a C{SIP/7.0/UDP}
        Via its 505 (§3.1.2.16).  The transport sends the answer back to the
        source of the request when its Via cannot be read.
        """
        request = self.partial
        if self.code is None or not isinstance(request, Request):
            return None
        for key in _REQUIRED:
            values = request.headers.get(key)
            if not values:
                return None
            for value in values:
                if "\ufffd" in value or "\x00" in value or "\r" in value or "\n" in value:
                    return None
        return Response.forRequest(request, self.code, self.reason)


def _isToken(text: str) -> bool:
    if text.isalnum() and text.isascii():
        return True
    return bool(text) and text.isascii() and all(c.isalnum() or c in _TOKEN_EXTRA for c in text)


_LWS = (" ", "\t")


def _unfold(lines: List[str]) -> List[str]:
    """
    Join continuation lines (starting with space or tab) to the line they
    continue, as RFC 3261 §7.3.1 line folding asks.  A continuation with no
    line before it is kept as it is (and refused as a header line).
    """
    out: List[str] = []
    for line in lines:
        if line and line[0] in " \t" and out:
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def parseMessage(data: bytes, limits: Limits = DEFAULT_LIMITS, stream: bool = False) -> Message:
    """
    Parse one whole SIP message.

    Header values are trimmed with C{str.strip()}, which also trims
    non-ASCII white space (U+00A0, U+3000...) at their ends.  That is
    deliberate: it is measurably faster than C{strip(" \\t")} on this hot
    path, and SIP allows such characters only inside quoted strings and free
    text, where trimming them changes nothing that matters.

    @param data: the datagram, or one message cut from a stream by
        L{StreamFramer}.
    @param stream: C{True} when C{data} came from a stream, where
        Content-Length has already framed the body exactly.
    @raise ParseError: for anything that is not an acceptable message.
    """
    error: Optional[Tuple[int, str]] = None
    if len(data) > limits.maxMessageSize:
        error = (513, "Message Too Large")
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")
    if not data:
        raise ParseError(None, "Empty message")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        headBytes = data.rstrip(b"\r\n")
        bodyStart = len(data)
    else:
        headBytes = data[:end]
        bodyStart = end + 4
    try:
        head = headBytes.decode("utf-8")
    except UnicodeDecodeError:
        head = headBytes.decode("utf-8", "replace")
        error = error or (400, "Invalid UTF-8")
    if "\x00" in head:
        error = error or (400, "NUL in message header")
    lines = head.split("\r\n")
    # Joining is much cheaper than counting CRs and LFs in the head.
    joined = "".join(lines)
    if "\n" in joined or "\r" in joined:
        error = error or (400, "Bare CR or LF")

    startLine = lines[0]
    message: Message
    if startLine.startswith("SIP/2.0 "):
        message = _statusLine(startLine)
    else:
        parts = startLine.split(" ")
        if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[1] and _isToken(parts[0]):
            message = Request(parts[0], parts[1])
            if len(parts[1]) > limits.maxUriLength:
                error = error or (414, "Request-URI Too Long")
        else:
            message, lineError = _oddStartLine(startLine, limits)
            error = error or lineError

    headers: Dict[str, List[str]] = message.headers
    keys = _keyCache
    startError = error
    unfolded = False
    while True:
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            key = keys.get(name)
            if key is None or not colon:
                # A line without a colon is malformed even when it spells a
                # header name seen before ("Contact" alone is not an empty
                # Contact).
                key = _headerKey(name) if colon else None
                if key is None:
                    if not unfolded and line[:1] in _LWS:
                        # A continuation line (RFC 3261 §7.3.1): never a
                        # cached name, so folding costs nothing until seen.
                        break
                    error = error or (400, "Malformed header line")
                    continue
            values = headers.get(key)
            if values is None:
                headers[key] = [value.strip()]
            else:
                values.append(value.strip())
        else:
            break
        headers.clear()
        error = startError
        lines = [lines[0]] + _unfold(lines[1:])
        unfolded = True
    if len(lines) - 1 > limits.maxHeaders:
        error = error or (513, "Too Many Headers")
    if len(head) > limits.maxLineLength and max(map(len, lines)) > limits.maxLineLength:
        error = error or (513, "Header Line Too Long")

    if "," in head:
        for key in LIST_HEADERS.intersection(headers):
            values = headers[key]
            for value in values:
                if "," in value:
                    headers[key] = [
                        part for v in values for part in map(str.strip, splitQuoted(v, ",")) if part
                    ]
                    break

    error = _checkHeaders(message, headers, error)

    lengths = headers.get("content-length")
    available = len(data) - bodyStart
    if lengths is None:
        if stream and available:
            error = error or (400, "Missing Content-Length")
        length = available
    else:
        length = _contentLength(lengths)
        if length is None:
            error = error or (400, "Bad Content-Length")
            length = 0
        elif length > available:
            error = error or (400, "Content-Length Mismatch")
            length = available
    if length > limits.maxBodySize:
        error = error or (413, "Request Entity Too Large")
    elif length:
        message.body = data[bodyStart : bodyStart + length]

    if error is not None:
        code, reason = error
        raise ParseError(code if isinstance(message, Request) else None, reason, message)
    return message


def _statusLine(startLine: str) -> Response:
    """
    The response a status line starts (C{SIP/2.0 200 OK}).

    @raise ParseError: (code L{None}: responses are never answered) for a
        status code that is not three digits from 100 to 699.
    """
    codeText = startLine[8:11]
    if not codeText.isdigit() or not codeText.isascii() or startLine[11:12] not in ("", " "):
        raise ParseError(None, "Bad status line")
    code = int(codeText)
    if not 100 <= code <= 699:
        raise ParseError(None, "Bad status code")
    return Response(code, startLine[12:])


def _oddStartLine(startLine: str, limits: Limits) -> Tuple[Message, Optional[Tuple[int, str]]]:
    """
    The start lines the fast path of L{parseMessage} does not take: a
    version in lower case (legal: RFC 3261 §7.1 makes it case-insensitive),
    another SIP version (505), and request lines malformed but still clear
    enough to be answered with a 400: extra spaces (RFC 4475 §3.1.2.8-10),
    a method that is not a token, an empty Request-URI.

    @return: the message, and the error that answers it or L{None}.
    @raise ParseError: (code L{None}) for a line that is neither.
    """
    if startLine[:8].upper() == "SIP/2.0 ":
        return _statusLine(startLine), None
    parts = startLine.split(" ")
    error: Optional[Tuple[int, str]] = None
    if len(parts) == 3 and parts[1] and _isToken(parts[0]):
        method, uri, version = parts
        if version[:4].upper() != "SIP/":
            # HTTP and the like: not SIP, so not answered.
            raise ParseError(None, "Bad start line")
    else:
        words = startLine.split()
        if len(words) < 2 or words[-1][:4].upper() != "SIP/" or words[0][:4].upper() == "SIP/":
            raise ParseError(None, "Bad start line")
        method, uri, version = words[0], " ".join(words[1:-1]), words[-1]
        error = (400, "Bad Request-Line")
    if not _isToken(method):
        error = error or (400, "Bad Request-Line")
    if version.upper() != "SIP/2.0":
        error = error or (505, "Version Not Supported")
    if len(uri) > limits.maxUriLength:
        error = error or (414, "Request-URI Too Long")
    return Request(method, uri), error


_keyCache: Dict[str, str] = {}


def _headerKey(name: str) -> Optional[str]:
    """
    The dict key for a header name as it appeared on the wire, or L{None}
    if it is not a valid name.  Keys of names seen before come from a small
    bounded cache, which saves the hot loop several string operations.
    """
    key = name.rstrip(" \t").lower()
    key = COMPACT_FORMS.get(key, key)
    if not _isToken(key):
        return None
    if len(_keyCache) < 2048:
        _keyCache[name] = key
    return key


def _contentLength(values: List[str]) -> Optional[int]:
    """
    The one Content-Length value, or L{None} if it is malformed or repeated
    with different values.
    """
    first = values[0]
    if not first.isdigit() or not first.isascii() or len(first) > 9:
        return None
    for other in values[1:]:
        if other != first:
            return None
    return int(first)


def _checkHeaders(
    message: Message, headers: Dict[str, List[str]], error: Optional[Tuple[int, str]]
) -> Optional[Tuple[int, str]]:
    """
    The checks every message must pass before a transaction layer sees it:
    mandatory headers present, CSeq well-formed and matching the method,
    Expires and Max-Forwards numeric.
    """
    if error is not None:
        return error
    for key in _REQUIRED:
        if key not in headers:
            return 400, "Missing " + _REQUIRED_NAMES[key] + " Header"
    if len(headers["call-id"]) != 1 or not headers["call-id"][0]:
        return 400, "Bad Call-ID"
    # Single-valued: a second From, To or CSeq (RFC 4475 §3.3.8) would let
    # two elements disagree on which one counts.
    if len(headers["from"]) != 1:
        return 400, "Bad From"
    if len(headers["to"]) != 1:
        return 400, "Bad To"
    if len(headers["cseq"]) != 1:
        return 400, "Bad CSeq"
    try:
        cseq = CSeq.fromString(headers["cseq"][0])
    except HeaderError:
        return 400, "Bad CSeq"
    if isinstance(message, Request) and cseq.method != message.method:
        return 400, "CSeq Method Mismatch"
    for key, label in (("expires", "Bad Expires"), ("max-forwards", "Bad Max-Forwards")):
        values = headers.get(key)
        if values is not None:
            value = values[0]
            if len(values) != 1 or not value.isdigit() or not value.isascii() or len(value) > 10:
                return 400, label
    return None


_REQUIRED_NAMES = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}


PING = object()
"""
Returned by L{StreamFramer.dataReceived} for a CRLF CRLF keep-alive ping
(RFC 5626 §4.4.1), which the transport answers with one CRLF.
"""


class FramingError(Exception):
    """
    A stream that cannot be framed any further: the connection must close.

    @ivar code: the status code to answer with before closing, if the head of
        the offending message is known (C{head}), else L{None}.
    @ivar messages: the messages and L{PING}s that the same
        L{StreamFramer.dataReceived} call completed before the error, in
        order; the transport should handle them before closing, as it would
        have had they arrived in an earlier segment.
    """

    def __init__(
        self,
        code: Optional[int],
        reason: str,
        head: bytes = b"",
        messages: Optional[List[Union[bytes, object]]] = None,
    ) -> None:
        Exception.__init__(self, code, reason)
        self.code = code
        self.reason = reason
        self.head = head
        self.messages: List[Union[bytes, object]] = messages if messages is not None else []

    def errorResponse(self, limits: Limits = DEFAULT_LIMITS) -> Optional[Response]:
        """
        The response to send before closing, when the message head was
        readable enough to address one.
        """
        if self.code is None or not self.head:
            return None
        try:
            message = parseMessage(self.head, limits)
        except ParseError as e:
            message = e.partial
        if message is None:
            return None
        return ParseError(self.code, self.reason, message).errorResponse()


class StreamFramer:
    """
    Cut a byte stream (TCP, TLS) into whole messages by Content-Length.

    Pipelined messages and messages split across segments both work; the
    buffer never holds more than one message's head beyond the limit, and a
    declared body larger than the limit stops framing at once instead of
    waiting for (and buffering) the body.

    Each byte is copied into the buffer and searched for the end of the head
    once, however the stream is segmented: a peer dribbling a large head a
    byte at a time costs linear, not quadratic, time.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        # Bytes of an incomplete message (or of a possible CRLF CRLF ping).
        self._pending = bytearray()
        # How far _pending has been searched for CRLF CRLF, when _need is None.
        self._scanned = 0
        # The length of the message at the start of _pending once its head
        # is complete.
        self._need: Optional[int] = None

    def dataReceived(self, data: bytes) -> List[Union[bytes, object]]:
        """
        Feed bytes; get back the whole messages (as bytes) and L{PING}s they
        completed, in order.

        @raise FramingError: when the stream is beyond repair; its
            C{messages} holds what this call completed before.
        """
        pending = self._pending
        if pending:
            pending += data
            need = self._need
            if need is not None:
                if len(pending) < need:
                    return []
            elif pending[0] not in _CRLF:
                if pending.find(b"\r\n\r\n", self._scanned) < 0:
                    if len(pending) > self.limits.maxMessageSize:
                        self._reset()
                        raise FramingError(None, "Message head too large")
                    self._scanned = max(0, len(pending) - 3)
                    return []
            buf = bytes(pending)
            self._pending = bytearray()
        else:
            buf = data
        out: List[Union[bytes, object]] = []
        try:
            pos = self._frame(buf, out)
        except FramingError as e:
            self._reset()
            e.messages = out
            raise
        if pos < len(buf):
            self._pending = bytearray(buf[pos:] if pos else buf)
        return out

    def _frame(self, buf: bytes, out: List[Union[bytes, object]]) -> int:
        """
        Append to C{out} what C{buf} completes, from its start (where a
        message or a ping begins); return where the unconsumed rest starts,
        leaving C{_need} and C{_scanned} set for it.
        """
        limits = self.limits
        pos = 0
        n = len(buf)
        need = self._need
        while pos < n:
            if need is not None:
                if n - pos < need:
                    break
                out.append(buf[pos : pos + need])
                pos += need
                need = None
                continue
            if buf[pos] in _CRLF:
                # Keep-alive ping, or stray CRLFs between messages.
                if buf.startswith(b"\r\n\r\n", pos):
                    out.append(PING)
                    pos += 4
                    continue
                if n - pos < 4 and buf[pos:] in (b"\r", b"\r\n", b"\r\n\r"):
                    break
                pos += 2 if buf.startswith(b"\r\n", pos) else 1
                continue
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > limits.maxMessageSize:
                    raise FramingError(None, "Message head too large")
                self._need = None
                self._scanned = max(0, n - pos - 3)
                return pos
            headEnd = end + 4 - pos
            head = buf[pos:end]
            if headEnd > limits.maxMessageSize:
                raise FramingError(513, "Message Too Large", head)
            length = _streamLength(head)
            if length is None:
                raise FramingError(400, "Bad or Missing Content-Length", head)
            if length > limits.maxBodySize:
                raise FramingError(413, "Request Entity Too Large", head)
            if headEnd + length > limits.maxMessageSize:
                raise FramingError(513, "Message Too Large", head)
            need = headEnd + length
        self._need = need
        self._scanned = 0
        return pos

    def _reset(self) -> None:
        self._pending = bytearray()
        self._need = None
        self._scanned = 0


_CRLF = (13, 10)

# What a Content-Length of more than nine digits frames: more than any limit.
_TOO_LONG = 1 << 62


def _streamLength(head: bytes) -> Optional[int]:
    """
    Find Content-Length (or its compact form C{l}) in a message head.  A
    head without one frames an empty body: RFC 3261 §18.3 makes it mandatory
    on streams, but refusing a body-less request for its absence helps nobody.

    A value of more than nine digits frames more than any limit allows (413
    at once); one that is not a number, or several that differ (RFC 4475
    §3.3.9), cannot frame anything (L{None}).  Continuation lines (starting
    with white space) are not header lines, as for L{parseMessage}.
    """
    found: Optional[bytes] = None
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.rstrip(b" \t").lower() in (b"content-length", b"l"):
            value = value.strip(b" \t")
            if found is None:
                found = value
            elif value != found:
                return None
    if found is None:
        return 0
    if not found.isdigit():
        return None
    if len(found) > 9:
        return _TOO_LONG
    return int(found)
