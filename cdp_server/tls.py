"""A self-signed certificate for a first try (`cdp-server cert`): ECDSA P-256, valid for
the given name, localhost and 127.0.0.1. Clients pin it by its SHA-256 fingerprint or
trust the certificate file itself."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cdpcore.client import cert_fingerprint


def make_self_signed(out: Path, name: str = "localhost", days: int = 3650,
                     ) -> tuple[Path, Path, str]:
    """Writes cert.pem and key.pem (0600) into `out`; returns their paths and the
    certificate's fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [_san(name)]
    if name != "localhost":
        names.append(x509.DNSName("localhost"))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    if loopback not in names:
        names.append(loopback)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path, cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _san(name: str) -> x509.GeneralName:
    """An IP address goes in as one: TLS clients match an IP only against IP entries."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def fingerprint_of(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))
