"""The agent's configuration file (TOML, default /etc/cdp-agent/agent.toml, mode 0600
because it holds the token and the repository key). Command-line flags override it."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from cdpcore import durable
from cdpcore import format as fmt
from cdpcore.connection import check_connection
from cdpcore.errors import FormatError, UsageError
from cdpcore.index import Geometry
from cdpcore.manifest import check_name

from . import priority

DEFAULT_CONFIG = "/etc/cdp-agent/agent.toml"
DEFAULT_STATE_DIR = "/var/lib/cdp-agent"
MIN_INTERVAL = 60
#: Seconds a filesystem may stay frozen for a point: long enough to read a /boot partition
#: in full on a slow disk, short enough that its writers see a stall, not an outage.
DEFAULT_MAX_FREEZE = 120
#: Seconds a request to the server may still take after SIGTERM before it is cut and the
#: point abandoned: long enough for a server finishing a large point's commit, well inside
#: the unit's TimeoutStopSec=120, after which systemd SIGKILLs with the snapshots held.
DEFAULT_STOP_GRACE = 60
#: Most sealing workers `workers` may ask for. Each holds about 80 MiB during a full read
#: (its 16 MiB read buffer, the 8 MiB batch it seals and the one it uploads, Python):
#: sixteen are 1.3 GiB, over three times the unit's MemoryMax, and each keeps an upload
#: of its own open on the server, whose 40 request threads serve every agent. More are
#: no faster (the work is bound by the CPUs: 4 or 5 workers on 2 cores were no faster
#: than 3). `workers = 100000` forked until the process table or the memory ran out,
#: with the point's snapshots held: a traceback, and an agent hung at exit joining the
#: workers it had forked.
MAX_WORKERS = 16
#: Smallest bandwidth cap, bytes/s (64 KiB/s, 512 kbit/s). Less is a rate in kbit/s or
#: MB/s written as bytes (`bandwidth = 10`), and leaves the agent nothing it could do:
#: a worker's 8 MiB batch would wait over two minutes for its turn, at 1 byte/s 97 days.
MIN_BANDWIDTH = 64 * 1024


@dataclass
class AgentConfig:
    server: str
    token: str
    host: str
    recovery_key: str  # the master key in printable form (cdpcore.keys.recovery_key)
    ca: str = ""  # CA certificate of the server (PEM); empty: the system's CAs
    fingerprint: str = ""  # SHA-256 of the server certificate, if pinned
    state_dir: str = DEFAULT_STATE_DIR
    sources: list[str] = field(default_factory=list)
    tracking: str = "scan"
    interval: int = 300  # seconds between points in `run`
    block_size: int = fmt.DEFAULT_BLOCK_SIZE
    workers: int = 0
    bandwidth: int = 0  # bytes/s, 0: no cap
    full_scan_every: int = 288  # one verifying full scan a day at 5-minute points
    skip_free: bool = False  # record ext2/3/4 and XFS free space as zeros, not read
    nice: int = 10  # CPU priority of the agent and its workers (0-19)
    io_class: str = "idle"  # I/O class: idle, best-effort (lowest level) or none
    max_freeze: int = DEFAULT_MAX_FREEZE  # seconds a filesystem may stay frozen; 0: no limit
    compression_level: int = fmt.ZSTD_LEVEL  # zstd level of new blobs; 0: none
    stop_grace: int = DEFAULT_STOP_GRACE  # seconds a request may take after SIGTERM

    def check(self) -> AgentConfig:
        priority.check(self.nice, self.io_class)
        if self.interval < MIN_INTERVAL:
            raise UsageError(f"interval must be at least {MIN_INTERVAL} s, not {self.interval}")
        for key, floor in (("full_scan_every", "0 (never) or more points"),
                           ("stop_grace", "0 (cut requests at once) or more seconds"),
                           ("bandwidth", "0 (no cap) or more bytes per second"),
                           ("workers", "0 (one per CPU plus one, at most 3) or more")):
            if getattr(self, key) < 0:
                raise UsageError(f"{key} must be {floor}, not {getattr(self, key)}")
        if 0 < self.bandwidth < MIN_BANDWIDTH:
            raise UsageError(f"bandwidth must be 0 (no cap) or at least {MIN_BANDWIDTH} bytes "
                             f"per second (it is in bytes, not bits), not {self.bandwidth}")
        if self.workers > MAX_WORKERS:
            raise UsageError(f"workers must be at most {MAX_WORKERS} (each holds about 80 MiB "
                             f"while a disk is read), not {self.workers}")
        try:
            Geometry(size=0, block_size=self.block_size)  # the format's own check
        except FormatError as exc:
            raise UsageError(f"block_size: {exc}") from None
        if self.max_freeze < 0:
            raise UsageError(f"max_freeze must be 0 (no limit) or more seconds, not "
                             f"{self.max_freeze}")
        if self.compression_level and not (
                fmt.MIN_ZSTD_LEVEL <= self.compression_level <= fmt.MAX_ZSTD_LEVEL):
            raise UsageError(f"compression_level must be 0 (none) or a zstd level from "
                             f"{fmt.MIN_ZSTD_LEVEL} (fastest) to {fmt.MAX_ZSTD_LEVEL} "
                             f"(smallest), not {self.compression_level}")
        if self.tracking not in ("scan", "era"):
            raise UsageError(f"unknown tracking mode {self.tracking!r}: use scan or era")
        for key, paths in (("state_dir", [self.state_dir]), ("sources", self.sources)):
            for path in paths:
                if not os.path.isabs(path):
                    raise UsageError(f"{key}: {path!r} is not an absolute path (the service "
                                     "does not run in the directory it was written from)")
        if not self.server.startswith("https://"):
            raise UsageError(f"server URL must start with https:// ({self.server!r})")
        self._check_connection()
        return self

    def _check_connection(self) -> None:
        """What requests would only refuse at the first request, with a traceback (a URL
        without a host or with a bad port, a CA file that is not there) or as a failed TLS
        check (exit 9: a CA directory, a fingerprint of the wrong form), and a host name
        the server cannot have."""
        check_connection(self.server, self.ca, self.fingerprint)
        try:
            check_name("host", self.host)
        except FormatError as exc:
            raise UsageError(str(exc)) from None
        if "/" in self.host:
            raise UsageError(f"invalid host name {self.host!r}: '/' cannot appear in a URL "
                             "path")


def load(path: str | os.PathLike[str]) -> AgentConfig:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"no configuration at {path}: run `cdp-agent init` first") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read configuration {path}: not UTF-8 text ({exc})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read configuration {path}: {exc}") from None
    known = {f.name for f in fields(AgentConfig)}
    unknown = set(doc) - known
    if unknown:
        raise UsageError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    missing = {f.name for f in fields(AgentConfig)
               if f.default is MISSING and f.default_factory is MISSING} - set(doc)
    if missing:
        raise UsageError(f"{path}: missing settings {', '.join(sorted(missing))}")
    _check_types(doc, path)
    try:
        return AgentConfig(**doc).check()
    except (TypeError, UsageError) as exc:
        raise UsageError(f"{path}: {exc}") from None


_TYPE_NAMES = {str: "a string", int: "a whole number", bool: "true or false"}


def _check_types(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Each setting of the type its field has: `sources = "/dev/sda"` (a string where a
    list belongs) would otherwise be read as a list of one-character paths."""
    for key, want in get_type_hints(AgentConfig).items():
        if key not in doc:
            continue
        value = doc[key]
        if get_origin(want) is list:
            (item,) = get_args(want)
            ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
            what = f"a list of {_TYPE_NAMES[item].removeprefix('a ')}s, e.g. [\"/dev/sda\"]"
        else:
            # TOML's true/false are Python bools, which are ints too
            ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
            what = _TYPE_NAMES[want]
        if not ok:
            raise UsageError(f"{path}: {key} must be {what}, not {value!r}")


def _toml_value(value: Any) -> str:
    # JSON strings, numbers and arrays of strings are valid TOML.
    return json.dumps(value)


def save(config: AgentConfig, path: str | os.PathLike[str]) -> None:
    """Write atomically with mode 0600: the file holds the token and the key."""
    target = Path(path)
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in asdict(config).items())
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        durable.replace_file(target, text.encode(), mode=0o600)
    except OSError as exc:
        raise UsageError(f"cannot write configuration {path}: {exc}") from None
