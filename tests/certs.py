"""
Self-signed certificates for the TLS tests (SIP over TLS, the cluster's and
the billing node's Perspective Broker links).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Sequence, Tuple


def selfSigned(
    directory: Path,
    dnsNames: Sequence[str] = (),
    ipAddresses: Sequence[str] = ("127.0.0.1",),
) -> Tuple[Path, Path, Path]:
    """
    Write a fresh EC key (mode 0600) and a self-signed certificate for
    C{dnsNames} and C{ipAddresses} into C{directory}, and a trust
    directory holding that certificate (what a C{tls:...:trustRoots=DIR}
    client endpoint takes).

    @return: the key's path, the certificate's path and the trust
        directory.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = [x509.DNSName(n) for n in dnsNames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ipAddresses]
    common = (list(dnsNames) + list(ipAddresses))[0]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    keyPath, certPath = directory / "key.pem", directory / "cert.pem"
    keyPath.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    keyPath.chmod(0o600)
    certPath.write_bytes(pem)
    trust = directory / "trust"
    trust.mkdir()
    (trust / "cert.pem").write_bytes(pem)
    return keyPath, certPath, trust
