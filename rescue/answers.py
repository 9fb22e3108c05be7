"""Settings of a restore from three sources, in order of precedence: the command line, an
answers file (JSON, or YAML when PyYAML is installed) for unattended runs, and CDP_*
environment variables. The answers file holds the keys in _KEYS (docs/RESCUE.md lists
them): the connection, the point, the mapping and resize, verification, confirmation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cdpcore.errors import UsageError

from .plan import VerifyMode
from .resize import RESIZE_POLICIES
from .stream import MAX_WORKERS

_KEYS = {"server", "token", "host", "ca", "fingerprint", "passphrase", "passphrase_file",
         "point", "map", "resize", "verify", "grow_fs", "reinstall_bootloader", "yes",
         "state_dir", "workers", "after"}
_STRINGS = {"server", "token", "host", "ca", "fingerprint", "passphrase", "passphrase_file",
            "state_dir", "point"}
_BOOLS = {"grow_fs", "reinstall_bootloader", "yes"}
#: Read relative to the answers file's directory, as other configuration files' paths are:
#: the file and the CA certificate it names travel together (a USB stick, a PXE share).
_PATHS = ("ca", "passphrase_file", "state_dir")
_SECRETS = {"token", "passphrase"}
#: What follows a successful unattended restore (`rescue auto`).
After = Literal["shell", "reboot", "poweroff"]
AFTER: tuple[After, ...] = get_args(After)
_CHOICES: dict[str, tuple[str, ...]] = {"resize": RESIZE_POLICIES, "verify": get_args(VerifyMode),
                                        "after": AFTER}
_ENV = {"server": "CDP_SERVER", "token": "CDP_TOKEN", "host": "CDP_HOST", "ca": "CDP_CA",
        "fingerprint": "CDP_FINGERPRINT", "passphrase": "CDP_PASSPHRASE",
        "passphrase_file": "CDP_PASSPHRASE_FILE"}


@dataclass
class Answers:
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, given: Any = None) -> Any:
        """The command-line value if given, else the answers file's, else the env's."""
        if given not in (None, (), []):
            return given
        if key in self.values:
            return self.values[key]
        env = _ENV.get(key)
        return os.environ.get(env) if env else None

    def maps(self, given: tuple[str, ...]) -> list[str]:
        raw = self.get("map", list(given))
        if raw is None:
            return []
        if isinstance(raw, str):  # one mapping, "vda=/dev/sdb"
            return [raw]
        if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
            return [f"{k}={v}" for k, v in raw.items()]
        if isinstance(raw, list | tuple) and all(isinstance(m, str) for m in raw):
            return list(raw)
        raise UsageError(f"answers: 'map' must be a list of SRC=TARGET strings or a mapping "
                         f"of source disk to target, not {raw!r}")


def load_answers(path: str | None) -> Answers:
    if not path:
        return Answers()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read answers file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"answers file {path} is not UTF-8 text: {exc}") from None
    doc: Any
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"{path} is YAML but PyYAML is not installed: use JSON") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"answers file {path} is not valid YAML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"answers file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"answers file {path} must hold a mapping of option names to values")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise UsageError(f"answers file {path} has unknown keys {', '.join(unknown)}; known: "
                         + ", ".join(sorted(_KEYS)))
    for key, value in doc.items():
        problem = _bad_value(key, value)
        if problem:
            # A secret's value is never shown: `rescue auto` prints this on every console
            # and into /run/cdp/auto.log.
            shown = f"a value of type {type(value).__name__}" if key in _SECRETS else repr(value)
            raise UsageError(f"answers file {path}: {key!r} must be {problem}, not {shown}")
    here = Path(path).absolute().parent
    for key in _PATHS:
        if isinstance(doc.get(key), str) and doc[key] and not os.path.isabs(doc[key]):
            doc[key] = str(here / doc[key])
    return Answers(doc)


def _bad_value(key: str, value: Any) -> str | None:
    """What `value` should have been for `key` (None: fine). A value of the wrong type is
    an error, never read some other way: "yes": "false" must not confirm a restore."""
    if value is None:
        return None
    if key in _BOOLS and not isinstance(value, bool):
        return "true or false (JSON booleans, unquoted)"
    if key in _STRINGS and not isinstance(value, str):
        return "a string"
    if key in _CHOICES and value not in _CHOICES[key]:
        return "one of " + ", ".join(_CHOICES[key])
    if key == "workers" and (isinstance(value, bool) or not isinstance(value, int)
                             or not 1 <= value <= MAX_WORKERS):
        return f"a whole number from 1 to {MAX_WORKERS}"
    return None


def read_passphrase(answers: Answers, passphrase_file: str | None, prompt: bool) -> str:
    file = answers.get("passphrase_file", passphrase_file)
    if file:
        try:
            # Bytes that are not UTF-8 become lone surrogates, which the key's check
            # names (WrongKeyError) instead of a UnicodeDecodeError traceback.
            return Path(file).read_bytes().decode("utf-8", "surrogateescape").rstrip("\n")
        except OSError as exc:
            raise UsageError(f"cannot read passphrase file {file}: {exc.strerror}") from None
    value = answers.get("passphrase")
    if value:
        return str(value)
    if prompt:
        import click

        return str(click.prompt("Key passphrase (or recovery key CDP1-...)", hide_input=True))
    raise UsageError("no passphrase: use --passphrase-file, CDP_PASSPHRASE or the answers "
                     "file's passphrase")
