"""Connecting to the CDP server from the console (blocking calls, run in worker threads):
the server certificate's fingerprint for trust on first use, login with the token,
opening a host's repository with the passphrase, and every failure said in plain words."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from cdpcore.api import HostInfo
from cdpcore.client import CdpClient, cert_fingerprint
from cdpcore.connection import check_connection
from cdpcore.errors import (
    AuthError,
    CdpError,
    ConnectionFailed,
    NotFoundError,
    UsageError,
    WrongKeyError,
)

from ..engine import Engine
from ..repo import Repository

PROBE_TIMEOUT = 10.0


class TlsMismatch(ConnectionFailed):
    """The server shows another certificate than the one pinned or trusted."""


@dataclass(frozen=True)
class ServerCert:
    url: str
    fingerprint: str | None  # None for plain http
    trusted: bool  # verified by the CA file or the system's CAs


def _endpoint(url: str) -> tuple[str, str, int]:
    url = url.strip()
    check_connection(url, None, None, schemes=("https", "http"))
    parts = urlsplit(url)  # a host and a valid port: checked above
    return parts.scheme, str(parts.hostname), parts.port or (443 if parts.scheme == "https" else 80)


def probe(url: str, ca: str | None) -> ServerCert:
    """Fetch the server certificate (without trusting it) and tell whether a CA vouches."""
    scheme, host, port = _endpoint(url)
    if scheme == "http":
        return ServerCert(url, None, False)
    blind = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    blind.check_hostname = False
    blind.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock, \
                blind.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise ConnectionFailed(f"{host}:{port} does not speak TLS: {exc.reason}") from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    if der is None:
        raise ConnectionFailed(f"{host}:{port} sent no certificate")
    return ServerCert(url, cert_fingerprint(der), _ca_trusts(host, port, ca))


def _ca_trusts(host: str, port: int, ca: str | None) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:  # the operator's file, not the server's answer
        raise UsageError(f"CA certificate {ca}: {getattr(exc, 'strerror', None) or exc}: "
                         "correct the CA file, or clear it to be shown the server's "
                         "fingerprint") from None
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock, \
                ctx.wrap_socket(sock, server_hostname=host):
            return True
    except (ssl.SSLError, OSError):
        return False


def check_pin(cert: ServerCert, pinned: str | None) -> None:
    want = pinned.lower().replace(":", "") if pinned else None
    if want and cert.fingerprint != want:
        raise TlsMismatch(f"the server's certificate has fingerprint {cert.fingerprint}, "
                          f"but {want} was expected")


@dataclass
class Login:
    client: CdpClient
    hosts: list[HostInfo]


def login(url: str, token: str, ca: str | None, fingerprint: str | None) -> Login:
    if not token.strip():
        raise UsageError("enter the restore token of the host")
    client = CdpClient(url, token.strip(), ca_path=ca, fingerprint=fingerprint, retries=1)
    return Login(client, client.hosts())


def open_engine(client: CdpClient, host: str, passphrase: str) -> Engine:
    if not passphrase:
        raise UsageError("enter the passphrase (or the recovery key CDP1-...)")
    return Engine(Repository.open(client, host, passphrase))


def explain(exc: BaseException) -> tuple[str, str]:
    """(headline, what to do) for an error, in plain words."""
    text = str(exc)
    if isinstance(exc, TlsMismatch) or (isinstance(exc, ConnectionFailed)
                                        and text.startswith("TLS check")):
        return ("TLS mismatch", f"{text}. The server is not the one you trust: check the URL "
                "and the fingerprint with the server's administrator.")
    if isinstance(exc, ConnectionFailed):
        return ("Server unreachable", f"{text}. Check the URL, the network settings (go back "
                "with Escape) and that the server runs.")
    if isinstance(exc, AuthError):
        return ("Bad token", "The server refused the token"
                f"{' (it lacks the right role)' if exc.status == 403 else ''}: type the "
                "host's restore token again.")
    if isinstance(exc, WrongKeyError):
        return ("Wrong passphrase", "The passphrase does not open this host's key: type it "
                "again, or use the printable recovery key (CDP1-...).")
    if isinstance(exc, NotFoundError):
        return ("Not found", text)
    if isinstance(exc, CdpError):
        return (type(exc).__name__.replace("Error", " error").strip(), text)
    return ("Unexpected error", f"{type(exc).__name__}: {text}")
