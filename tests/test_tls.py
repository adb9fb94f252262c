"""
SIP over TLS: a real server with a certificate from files, spoken to with
Python's ssl module; responses come back over the same connection.
"""

from __future__ import annotations

import socket
import ssl

from presence.sip.parser import StreamFramer, parseMessage
from tests.certs import selfSigned
from tests.serverprocess import ServerProcess
from tests.sipclient import newRequest


def test_optionsOverTLS(tmp_path):
    keyPath, certPath, _ = selfSigned(tmp_path, ["presence.example.test"], ())
    server = ServerProcess(
        str(tmp_path),
        [
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "tls:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (keyPath, certPath),
        ],
    ).start()
    try:
        port = server.ports["TLS"]
        context = ssl.create_default_context(cafile=str(certPath))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="presence.example.test") as tls:
                framer = StreamFramer()
                for _ in range(2):
                    request = newRequest("OPTIONS", "sip:127.0.0.1", tls.getsockname()[1], "TLS")
                    tls.sendall(request.toBytes())
                    items = []
                    while not items:
                        data = tls.recv(65536)
                        assert data, "connection closed"
                        items = framer.dataReceived(data)
                    response = parseMessage(items[0], stream=True)
                    assert response.code == 200  # type: ignore[union-attr]
                    assert response.callId == request.callId
    finally:
        server.stopCleanly()
