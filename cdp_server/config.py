"""Server settings: defaults, then a configuration file (TOML, or INI with a [server]
section), then command-line flags: flags win."""

from __future__ import annotations

import configparser
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cdpcore.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_GRACE = 24 * 3600.0
#: The levels `serve --log-level` takes; the configuration file's `log_level` likewise.
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServerConfig:
    data: str = ""
    listen: str = DEFAULT_LISTEN
    cert: str = ""
    key: str = ""
    grace: float = DEFAULT_GRACE  # seconds GC spares recently uploaded or seen objects
    log_level: str = "info"

    def address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host or int(port) > 65535:
            raise UsageError(f"listen address {self.listen!r} must be HOST:PORT (port 0 "
                             "to 65535)")
        return host.strip("[]"), int(port)

    def merged(self, **flags: Any) -> ServerConfig:
        """A copy with every flag that was given (not None) applied."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})


def load(path: Path | None) -> ServerConfig:
    if path is None:
        return ServerConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read configuration file {path}: {exc.strerror}") from None
    doc: dict[str, Any]
    try:
        if path.suffix == ".toml":
            parsed = tomllib.loads(text)
            doc = parsed.get("server", parsed)
            if doc is not parsed and len(parsed) > 1:  # keys beside [server] would be lost
                outside = sorted(set(parsed) - {"server"})
                raise UsageError(f"configuration file {path}: settings outside [server]: "
                                 f"{', '.join(outside)}")
        else:
            parser = configparser.ConfigParser()
            parser.read_string(text)
            if not parser.has_section("server"):
                raise UsageError(f"configuration file {path} has no [server] section")
            doc = dict(parser["server"])
    except (tomllib.TOMLDecodeError, configparser.Error) as exc:
        raise UsageError(f"configuration file {path} is malformed: {exc}") from None
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise UsageError(f"configuration file {path}: unknown settings {', '.join(unknown)}")
    # TOML has types (an INI file's values are all strings): `grace = true` was read as
    # 1 s, `data = ["/a"]` as the path "['/a']".
    raw = doc.pop("grace", DEFAULT_GRACE)
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError
        grace = float(raw)
    except ValueError:
        raise UsageError(f"configuration file {path}: grace must be a number of seconds, "
                         f"not {raw!r}") from None
    for key, value in doc.items():
        if not isinstance(value, str):
            raise UsageError(f"configuration file {path}: {key} must be a string, not "
                             f"{value!r}")
    if not grace >= 0:  # NaN too: it compares false
        raise UsageError(f"configuration file {path}: grace must be 0 or more seconds, not "
                         f"{grace}: a negative grace leaves uploads in flight unprotected")
    level = str(doc.get("log_level", "info"))
    if level.lower() not in LOG_LEVELS:
        raise UsageError(f"configuration file {path}: log_level must be one of "
                         f"{', '.join(LOG_LEVELS)}, not {level!r}")
    return ServerConfig(grace=grace, **doc)
