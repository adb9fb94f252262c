"""
A blocking, one-request SIP user agent for admin commands
(C{presence-admin mwi}): send one request to the server over UDP or TCP,
answer a digest challenge with an account's stored HA1, return the final
response.

Admin commands run outside the reactor, one at a time, from an operator's
shell; a blocking socket with RFC 3261 timers is all they need. Over UDP
the request is retransmitted as a non-INVITE client transaction does
(Timer E from T1 = 0.5 s doubling to T2 = 4 s) until a final response or
Timer F (64*T1 = 32 s).
"""

from __future__ import annotations

import secrets
import socket
import time
from collections import deque
from typing import Callable, Deque, Optional, Tuple

from presence.sip.digest import DigestError, DigestParseError, chooseChallenge, makeAuthorization
from presence.sip.message import Request, Response
from presence.sip.parser import FramingError, ParseError, StreamFramer, parseMessage

T1 = 0.5
T2 = 4.0
TIMER_F = 64 * T1


class SipUserError(Exception):
    """
    The request got no final response, or a challenge we cannot answer.
    """


def _token() -> str:
    return secrets.token_hex(8)


def _newBranch() -> str:
    return "z9hG4bK" + _token()


class SipUser:
    """
    One socket to the server, for one request and its challenge.

    @ivar transport: C{"UDP"} or C{"TCP"}.
    """

    def __init__(self, transport: str, host: str, port: int, timeout: float = TIMER_F) -> None:
        self.transport = transport.upper()
        self.server = (host, port)
        self.timeout = timeout
        kind = socket.SOCK_DGRAM if self.transport == "UDP" else socket.SOCK_STREAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, kind)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.server)
        except OSError:
            self.sock.close()
            raise
        self._framer = StreamFramer()
        self._framed: Deque[object] = deque()
        self.local = self.sock.getsockname()[:2]

    def close(self) -> None:
        self.sock.close()

    def newRequest(self, method: str, uri: str, fromURI: str, body: bytes = b"", **headers: str) -> Request:
        """
        A request from C{fromURI} to C{uri}; further headers by keyword,
        underscores standing for dashes.
        """
        request = Request(method, uri)
        host, port = self.local
        hostport = ("[%s]" % host if ":" in host else host) + ":" + str(port)
        request.addHeader("Via", "SIP/2.0/%s %s;branch=%s;rport" % (self.transport, hostport, _newBranch()))
        request.addHeader("Max-Forwards", "70")
        request.addHeader("From", "<%s>;tag=%s" % (fromURI, _token()))
        request.addHeader("To", "<%s>" % (uri,))
        request.addHeader("Call-ID", _token() + "@" + host)
        request.addHeader("CSeq", "1 " + method)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-"), value)
        request.body = body
        return request

    def send(self, request: Request, ha1For: Optional[Callable[[str, str], Optional[str]]] = None,
             username: str = "") -> Response:
        """
        Send C{request} and return its final response; answer one 401 or
        407 with credentials when C{ha1For(algorithm, realm)} gives an HA1.

        @raise SipUserError: no final response in time, or a challenge
            with no algorithm we hold an HA1 for.
        """
        response = self._transaction(request)
        if response.code not in (401, 407) or ha1For is None:
            return response
        name = "www-authenticate" if response.code == 401 else "proxy-authenticate"
        try:
            challenge = chooseChallenge(response.headerValues(name))
        except (DigestError, DigestParseError) as e:
            raise SipUserError("cannot answer the server's challenge: %s" % (e,))
        ha1 = ha1For(challenge.algorithm, challenge.realm)
        if ha1 is None:
            raise SipUserError("no stored credentials for digest %s in realm %s" % (challenge.algorithm, challenge.realm))
        retry = parseMessage(request.toBytes())
        assert isinstance(retry, Request)
        cseq = retry.cseq()
        retry.setHeader("CSeq", "%d %s" % (cseq.number + 1, retry.method))
        via = retry.header("via") or ""
        retry.setHeader("Via", via.split(";branch=")[0] + ";branch=" + _newBranch() + ";rport")
        retry.setHeader(
            "Authorization" if response.code == 401 else "Proxy-Authorization",
            makeAuthorization(challenge, retry.method, retry.uri, username, ha1=ha1),
        )
        return self._transaction(retry)

    def _transaction(self, request: Request) -> Response:
        data = request.toBytes()
        deadline = time.monotonic() + self.timeout
        interval = T1
        self.sock.sendall(data)
        nextSend = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise SipUserError("no answer from %s:%d over %s" % (self.server + (self.transport,)))
            wait = deadline - now
            if self.transport == "UDP":
                wait = min(wait, max(0.0, nextSend - now))
            response = self._receive(wait)
            if response is None:
                if self.transport == "UDP" and time.monotonic() >= nextSend:
                    self.sock.sendall(data)
                    interval = min(interval * 2, T2)
                    nextSend = time.monotonic() + interval
                continue
            if response.code < 200 or response.header("cseq") != request.header("cseq"):
                continue
            return response

    def _receive(self, timeout: float) -> Optional[Response]:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            if self.transport == "UDP":
                message = parseMessage(self.sock.recv(65535))
            else:
                message = self._nextFramed()
        except socket.timeout:
            return None
        except (ParseError, FramingError):
            return None
        return message if isinstance(message, Response) else None

    def _nextFramed(self) -> object:
        while not self._framed:
            data = self.sock.recv(65536)
            if not data:
                raise SipUserError("the server closed the connection")
            self._framed.extend(item for item in self._framer.dataReceived(data) if isinstance(item, bytes))
        return parseMessage(self._framed.popleft())  # type: ignore[arg-type]


def serverAddress(text: str) -> Tuple[str, str, int]:
    """
    C{udp:HOST:PORT} or C{tcp:HOST:PORT} (IPv6 hosts in brackets) as
    C{(transport, host, port)}.

    @raise ValueError: for anything else.
    """
    transport, sep, rest = text.partition(":")
    host, sep2, port = rest.rpartition(":")
    if not sep or not sep2 or transport.lower() not in ("udp", "tcp") or not port.isdigit():
        raise ValueError("expected udp:HOST:PORT or tcp:HOST:PORT, not %r" % (text,))
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not 0 < int(port) < 65536:
        raise ValueError("expected udp:HOST:PORT or tcp:HOST:PORT, not %r" % (text,))
    return transport.upper(), host, int(port)
