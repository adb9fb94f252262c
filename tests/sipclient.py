"""
A small blocking SIP client for integration tests: it builds requests with
our own codec, sends them over UDP or TCP to a server in another process,
and parses what comes back with the same codec.
"""

from __future__ import annotations

import os
import socket
from typing import List, Optional, Tuple

from presence.sip.message import Message, Request, Response
from presence.sip.parser import StreamFramer, parseMessage


def newRequest(
    method: str,
    uri: str,
    localPort: int,
    transport: str = "UDP",
    body: bytes = b"",
    fromURI: str = "sip:tester@example.test",
    **headers: str,
) -> Request:
    """
    A minimal valid request from 127.0.0.1:C{localPort}; further headers by
    keyword, underscores standing for dashes.
    """
    token = os.urandom(6).hex()
    request = Request(method, uri)
    request.addHeader("Via", "SIP/2.0/%s 127.0.0.1:%d;branch=z9hG4bK%s;rport" % (transport, localPort, token))
    request.addHeader("Max-Forwards", "70")
    request.addHeader("From", "<%s>;tag=%s" % (fromURI, token[:8]))
    request.addHeader("To", "<%s>" % (uri,))
    request.addHeader("Call-ID", token + "@127.0.0.1")
    request.addHeader("CSeq", "1 %s" % (method,))
    request.addHeader(
        "Contact", "<sip:%s@127.0.0.1:%d;transport=%s>" % (fromURI[4:].split("@")[0], localPort, transport.lower())
    )
    for name, value in headers.items():
        request.setHeader(name.replace("_", "-"), value)
    request.body = body
    return request


def answer(request: Request, code: int = 200) -> Response:
    """
    The response a user agent gives to a request the server sent (NOTIFY).
    """
    return Response.forRequest(request, code)


class UDPClient:
    """
    A UDP socket on 127.0.0.1 talking to one server port.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]

    def sendBytes(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receiveMessage(self) -> Message:
        data, _ = self.sock.recvfrom(65535)
        return parseMessage(data)

    def receive(self) -> Response:
        message = self.receiveMessage()
        assert isinstance(message, Response), message
        return message

    def receiveNothing(self, timeout: float = 0.3) -> Optional[bytes]:
        """
        The next datagram if one arrives within C{timeout}, else L{None}.
        """
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65535)[0]
        except socket.timeout:
            return None
        finally:
            self.sock.settimeout(5.0)

    def request(self, method: str, uri: str, **headers: str) -> Response:
        self.sendBytes(newRequest(method, uri, self.port, "UDP", **headers).toBytes())
        return self.receive()

    def send(self, message: Message) -> None:
        self.sendBytes(message.toBytes())

    def close(self) -> None:
        self.sock.close()


class TCPClient:
    """
    One TCP connection to a server port.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.pending: List[object] = []

    def sendBytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receiveItem(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self.pending.extend(self.framer.dataReceived(data))
        return self.pending.pop(0)

    def receiveMessage(self) -> Message:
        item = self.receiveItem()
        assert isinstance(item, bytes), item
        return parseMessage(item, stream=True)

    def receive(self) -> Response:
        message = self.receiveMessage()
        assert isinstance(message, Response), message
        return message

    def receiveRaw(self) -> bytes:
        return self.sock.recv(65536)

    def request(self, method: str, uri: str, **headers: str) -> Response:
        self.sendBytes(newRequest(method, uri, self.port, "TCP", **headers).toBytes())
        return self.receive()

    def send(self, message: Message) -> None:
        self.sendBytes(message.toBytes())

    def close(self) -> None:
        self.sock.close()



class WSClient:
    """
    One SIP-over-WebSocket connection (RFC 7118), plain or inside TLS,
    spoken with wsproto in client mode.
    """

    def __init__(
        self,
        port: int,
        timeout: float = 5.0,
        context: Optional[object] = None,
        serverName: str = "127.0.0.1",
        host: str = "127.0.0.1",
    ) -> None:
        """
        @param host: the server's address (the client connects from
            127.0.0.1).
        """
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, Request as Upgrade

        sock = socket.create_connection((host, port), timeout=timeout, source_address=("127.0.0.1", 0))
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=serverName)  # type: ignore[attr-defined]
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: List[object] = []
        self.sock.sendall(self.ws.send(Upgrade(host="127.0.0.1", target="/", subprotocols=["sip"])))
        event = self._next()
        if not isinstance(event, AcceptConnection):
            raise ConnectionError("handshake refused: %r" % (event,))
        self.subprotocol = event.subprotocol

    def _next(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def sendText(self, text: str) -> None:
        from wsproto.events import TextMessage

        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def send(self, message: Message) -> None:
        self.sendText(message.toBytes().decode("utf-8"))

    def receiveText(self) -> str:
        from wsproto.events import BytesMessage, CloseConnection, TextMessage

        while True:
            event = self._next()
            if isinstance(event, TextMessage):
                return event.data
            if isinstance(event, BytesMessage):
                return bytes(event.data).decode("utf-8")
            if isinstance(event, CloseConnection):
                raise ConnectionError("closed by server: %r" % (event,))

    def receiveMessage(self) -> Message:
        return parseMessage(self.receiveText().encode("utf-8"))

    def receive(self) -> Response:
        message = self.receiveMessage()
        assert isinstance(message, Response), message
        return message

    def request(self, method: str, uri: str, **headers: str) -> Response:
        self.send(newRequest(method, uri, self.port, "WS", **headers))
        return self.receive()

    def close(self) -> None:
        self.sock.close()
