"""Unattended restore from the kernel command line (`rescue auto`, started by the rescue
init when `cdp.auto=1` is given): fetch the answers file `cdp.answers=` names (an http(s)
URL or a local path), restore as `rescue restore --answers FILE` would, and print one
result line for machines:

    CDP-RESTORE-DONE ok point=ID bytes=N seconds=S
    CDP-RESTORE-DONE failed exit=CODE reason=TEXT

then do what the answers file's "after" says (shell, the default; reboot; poweroff).
Without `cdp.auto=1` nothing is fetched or written. The decisions here are pure; the
command itself is in rescue.cli, next to `rescue restore`, whose code it runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cdpcore.errors import CdpError, ConnectionFailed, UsageError

from .answers import AFTER, After, Answers
from .bootopts import BootOptions
from .report import RestoreReport

RESULT = "CDP-RESTORE-DONE"
#: Where a fetched answers file is kept (the rescue system's RAM disk; it holds a token).
FETCHED = Path("/run/cdp/answers")


@dataclass(frozen=True)
class AutoRun:
    answers: str  # an http(s) URL or a local path
    is_url: bool


def shown(answers: str) -> str:
    """cdp.answers= as messages show it: a URL's user:password@ and ?query (where a token
    may be) as ***. Those messages reach every console and /run/cdp/auto.log."""
    parts = urlsplit(answers)
    if not parts.scheme:
        return answers  # a local path
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                       parts.fragment))


def _scrubbed(text: str, url: str) -> str:
    """`text` (a requests error, which quotes the URL's path and query) without the
    secrets `shown` hides."""
    parts = urlsplit(url)
    for secret in (parts.netloc.rpartition("@")[0], parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def decide(boot: BootOptions) -> AutoRun | None:
    """What the boot options ask for: None (no `cdp.auto=1`: do nothing at all), or where
    the answers come from. UsageError if `cdp.auto=1` cannot be acted on."""
    if not boot.auto:
        return None
    if not boot.answers:
        raise UsageError("cdp.auto=1 needs cdp.answers=URL|path: an answers file with the "
                         'target map and "yes": true')
    scheme = urlsplit(boot.answers).scheme
    if scheme and scheme not in ("http", "https"):
        raise UsageError(f"cdp.answers={shown(boot.answers)}: only http, https or a local "
                         "path")
    return AutoRun(boot.answers, is_url=bool(scheme))


def given_options(boot: BootOptions) -> dict[str, Any]:
    """The options `rescue restore` would get on its command line: cdp.server=, cdp.token=,
    cdp.host=, cdp.ca= and cdp.point= win over the answers file, as options do."""
    return {"server": boot.server, "token": boot.token, "host_name": boot.host, "ca": boot.ca,
            "fingerprint": None, "point": boot.point, "maps": (), "resize": None,
            "verify_mode": None, "grow_fs": None, "reinstall_bootloader": None,
            "passphrase_file": None}


def after_restore(a: Answers) -> After:
    """The answers file's "after": what follows a successful restore (default: shell)."""
    value = a.get("after") or "shell"
    if value not in AFTER:
        raise UsageError(f"answers: 'after' must be one of {', '.join(AFTER)}, not {value!r}")
    return value


#: HTTP answers worth asking again: a busy or starting web server, a proxy's timeout.
_TRANSIENT = (408, 429)


def fetch(run: AutoRun, ca: str | None, dest: Path | None = None, tries: int = 40,
          pause: float = 3.0) -> str:
    """The answers file's local path; a URL is downloaded to `dest` (keeping its .json or
    .yaml suffix), retried for about two minutes by default while the network may still
    be coming up: a switch port running spanning tree forwards nothing for 30-50 s after
    the link comes up, so a few seconds of retries failed unattended restores at boot."""
    if not run.is_url:
        return run.answers
    if ca and not Path(ca).is_file():
        # requests would raise a bare OSError: exit 1, not a usage error naming the option.
        raise UsageError(f"cdp.ca={ca}: the CA certificate file does not exist or is not "
                         "a file")
    import requests

    suffix = PurePosixPath(urlsplit(run.answers).path).suffix
    last = ""
    for attempt in range(tries):
        try:
            resp = requests.get(run.answers, timeout=30, verify=ca or True)
        except requests.RequestException as exc:
            last = _scrubbed(str(exc), run.answers)
        else:
            if resp.ok:
                path = (dest or FETCHED).with_suffix(suffix or ".json")
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(resp.content)
                return str(path)
            last = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code not in _TRANSIENT:
                break  # 404, 403: asking again will not help
        if attempt + 1 < tries:
            time.sleep(pause)
    raise ConnectionFailed(f"cannot fetch the answers file {shown(run.answers)}: {last}")


def done_line(report: RestoreReport) -> str:
    took = max(report.finished - report.started, 0.0)
    return (f"{RESULT} ok point={report.point_id} bytes={report.bytes_restored} "
            f"seconds={took:.1f}")


def failed_line(exc: BaseException) -> str:
    code = exc.exit_code if isinstance(exc, CdpError) else 1
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"{RESULT} failed exit={code} reason={reason}"
