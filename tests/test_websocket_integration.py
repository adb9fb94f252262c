"""
SIP over WS and WSS against a real server process, spoken with a Python
WebSocket client (wsproto over a socket): the handshake, answers over the
same connection, the keep-alive, the refusal of a handshake that does
not offer the sip subprotocol, and the close frame of a stopping server.
"""

from __future__ import annotations

import socket
import ssl

from tests.certs import selfSigned
from tests.serverprocess import ServerProcess
from tests.sipclient import WSClient, newRequest


def test_optionsOverWSAndWSS(tmp_path):
    keyPath, certPath, _ = selfSigned(tmp_path, ["presence.example.test"], ())
    server = ServerProcess(
        str(tmp_path),
        [
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "ws:0:interface=127.0.0.1",
            "--listen", "wss:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath),
        ],
    ).start()
    try:
        assert server.ports["WS"] != server.ports["WSS"]
        context = ssl.create_default_context(cafile=str(certPath))
        for client in (
            WSClient(server.ports["WS"]),
            WSClient(server.ports["WSS"], context=context, serverName="presence.example.test"),
        ):
            try:
                assert client.subprotocol == "sip"
                for _ in range(2):
                    request = newRequest("OPTIONS", "sip:127.0.0.1", client.port, "WS")
                    client.send(request)
                    response = client.receive()
                    assert response.code == 200 and response.callId == request.callId
                client.sendText("\r\n\r\n")
                assert client.receiveText() == "\r\n"
            finally:
                client.close()
    finally:
        server.stopCleanly()


def test_handshakeWithoutSipRefusedByTheServer(tmp_path):
    server = ServerProcess(str(tmp_path), ["--listen", "udp:0:interface=127.0.0.1", "--listen", "ws:0:interface=127.0.0.1"]).start()
    try:
        with socket.create_connection(("127.0.0.1", server.ports["WS"]), timeout=10) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"subprotocol 'sip'" in data
        server.waitFor("Refused a WebSocket handshake")
    finally:
        server.stopCleanly()


def test_stoppingServerClosesWithGoingAway(tmp_path):
    from wsproto.events import CloseConnection

    server = ServerProcess(str(tmp_path), ["--listen", "udp:0:interface=127.0.0.1", "--listen", "ws:0:interface=127.0.0.1"]).start()
    client = WSClient(server.ports["WS"], timeout=20)
    try:
        request = newRequest("OPTIONS", "sip:127.0.0.1", client.port, "WS")
        client.send(request)
        assert client.receive().code == 200
        server.process.terminate()
        event = client._next()
        assert isinstance(event, CloseConnection) and event.code == 1001, event
    finally:
        client.close()
        server.stopCleanly()
