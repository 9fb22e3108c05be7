"""Checks of a server connection's settings (URL, CA file, pinned fingerprint), shared by
the agent's configuration and the rescue's options. Light: no HTTP library is imported,
so a configuration is checked without the client's import cost."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from .errors import UsageError


def check_connection(url: str, ca_path: str | None, fingerprint: str | None,
                     schemes: tuple[str, ...] = ("https",)) -> None:
    """Refuse by name, before any request, the connection settings that requests would
    refuse only at the first one, with a traceback (a URL without a host or with a bad
    port, a CA file that is not there), or that would fail as a TLS check (a CA
    directory, a fingerprint of the wrong form)."""
    parts = urlsplit(url)
    expected = " or ".join(f"{scheme}://HOST[:PORT]" for scheme in schemes)
    if parts.scheme not in schemes or not parts.hostname \
            or any(c.isspace() for c in parts.netloc):
        raise UsageError(f"server URL {url!r}: expected {expected}")
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise UsageError(f"server URL {url!r}: expected {expected} (port 1 to 65535)")
    if ca_path and not os.path.isfile(ca_path):
        raise UsageError(f"CA certificate file {ca_path} does not exist or is not a file")
    if fingerprint and not re.fullmatch(r"[0-9a-fA-F]{64}", fingerprint.replace(":", "")):
        raise UsageError(f"fingerprint {fingerprint!r}: expected the server certificate's "
                         "SHA-256, 64 hex digits (colons allowed), as `cdp-server cert` "
                         "prints it")
