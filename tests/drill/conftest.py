"""One protected-disk build per session (cached across sessions under the image cache):
the rescue image may be rebuilt while the drill runs, and every test here must use the
disk built from the same image."""

from __future__ import annotations

import pytest

from .protected import ProtectedDisk, ensure_protected_disk


@pytest.fixture(scope="session")
def protected_disk() -> ProtectedDisk:
    return ensure_protected_disk()

