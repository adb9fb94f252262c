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
        try:
            request.topVia()
            request.cseq()
        except HeaderError:
            return None
        return Response.forRequest(request, self.code, self.reason)


def _isToken(text: str) -> bool:
    if text.isalnum() and text.isascii():
        return True
    return bool(text) and text.isascii() and all(c.isalnum() or c in _TOKEN_EXTRA for c in text)


def _unfold(lines: List[str]) -> List[str]:
    """
    Join continuation lines (starting with space or tab) to the line they
    continue, as RFC 3261 §7.3.1 line folding asks.
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
    crlfs = len(lines) - 1
    if head.count("\n") != crlfs or head.count("\r") != crlfs:
        error = error or (400, "Bare CR or LF")
    if "\r\n " in head or "\r\n\t" in head:
        lines = _unfold(lines)

    startLine = lines[0]
    message: Message
    if startLine.startswith("SIP/2.0 "):
        codeText = startLine[8:11]
        if not codeText.isdigit() or not codeText.isascii() or startLine[11:12] not in ("", " "):
            raise ParseError(None, "Bad status line")
        message = Response(int(codeText), startLine[12:])
        if not 100 <= message.code <= 699:
            raise ParseError(None, "Bad status code")
    else:
        parts = startLine.split(" ")
        if len(parts) != 3 or not _isToken(parts[0]) or not parts[1]:
            if len(parts) == 3 and parts[0] and parts[2].startswith("SIP/"):
                message = Request(parts[0], parts[1])
                error = error or (400, "Bad Request-Line")
            else:
                raise ParseError(None, "Bad start line")
        else:
            message = Request(parts[0], parts[1])
        if parts[2] != "SIP/2.0":
            error = error or (505, "Version Not Supported")
        if len(parts[1]) > limits.maxUriLength:
            error = error or (414, "Request-URI Too Long")

    headers: Dict[str, List[str]] = message.headers
    keys = _keyCache
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = keys.get(name)
        if key is None:
            key = _headerKey(name) if colon else None
            if key is None:
                error = error or (400, "Malformed header line")
                continue
        values = headers.get(key)
        if values is None:
            headers[key] = [value.strip()]
        else:
            values.append(value.strip())
    if len(lines) - 1 > limits.maxHeaders:
        error = error or (513, "Too Many Headers")
    if len(head) > limits.maxLineLength and max(map(len, lines)) > limits.maxLineLength:
        error = error or (513, "Header Line Too Long")

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


_keyCache: Dict[str, str] = {}


def _headerKey(name: str) -> Optional[str]:
    """
    The dict key for a header name as it appeared on the wire, or L{None}
    if it is not a valid name.  Keys of names seen before come from a small
    bounded cache, which saves the hot loop several string operations.
    """
    key = name.rstrip().lower()
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
    """

    def __init__(self, code: Optional[int], reason: str, head: bytes = b"") -> None:
        Exception.__init__(self, code, reason)
        self.code = code
        self.reason = reason
        self.head = head

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
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = b""
        self._need: Optional[int] = None

    def dataReceived(self, data: bytes) -> List[Union[bytes, object]]:
        """
        Feed bytes; get back the whole messages (as bytes) and L{PING}s they
        completed, in order.

        @raise FramingError: when the stream is beyond repair.
        """
        buf = self._buffer + data if self._buffer else data
        out: List[Union[bytes, object]] = []
        limits = self.limits
        while buf:
            if self._need is not None:
                if len(buf) < self._need:
                    break
                out.append(buf[: self._need])
                buf = buf[self._need :]
                self._need = None
                continue
            if buf[:1] in (b"\r", b"\n"):
                if buf.startswith(b"\r\n\r\n"):
                    out.append(PING)
                    buf = buf[4:]
                    continue
                if buf in (b"\r", b"\r\n", b"\r\n\r"):
                    break
                buf = buf[2:] if buf.startswith(b"\r\n") else buf[1:]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > limits.maxMessageSize:
                    self._buffer = b""
                    raise FramingError(None, "Message head too large")
                break
            headEnd = end + 4
            if headEnd > limits.maxMessageSize:
                self._buffer = b""
                raise FramingError(513, "Message Too Large", buf[:end])
            length = _streamLength(buf[:end])
            if length is None:
                self._buffer = b""
                raise FramingError(400, "Bad or Missing Content-Length", buf[:end])
            if length > limits.maxBodySize or headEnd + length > limits.maxMessageSize:
                self._buffer = b""
                raise FramingError(413, "Request Entity Too Large", buf[:end])
            self._need = headEnd + length
        self._buffer = buf
        return out


def _streamLength(head: bytes) -> Optional[int]:
    """
    Find Content-Length (or its compact form C{l}) in a message head.  A
    head without one frames an empty body: RFC 3261 §18.3 makes it mandatory
    on streams, but refusing a body-less request for its absence helps nobody.
    """
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit() or len(value) > 18:
                return None
            return int(value)
    return 0
