"""
SIP over TLS: a real server with a certificate from files, spoken to with
Python's ssl module; responses come back over the same connection.
"""

from __future__ import annotations

import datetime
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from presence.sip.parser import StreamFramer, parseMessage
from tests.serverprocess import ServerProcess
from tests.sipclient import newRequest


def _selfSigned(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "presence.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("presence.example.test")]), False)
        .sign(key, hashes.SHA256())
    )
    keyPath = directory / "key.pem"
    certPath = directory / "cert.pem"
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyPath.chmod(0o600)
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


def test_optionsOverTLS(tmp_path):
    keyPath, certPath = _selfSigned(tmp_path)
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
