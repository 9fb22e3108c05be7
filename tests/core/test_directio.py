"""Direct I/O (cdpcore.directio) on real files: what lands on disk and what is read back
must equal the buffered path byte for byte, aligned or not, with or without O_DIRECT."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdpcore import directio
from cdpcore.directio import ALIGN, AlignedBuffer, DirectFile

BUFFER = 64 * 1024


@pytest.fixture
def buffer() -> Iterator[AlignedBuffer]:
    buf = AlignedBuffer(BUFFER)
    yield buf
    buf.close()


def _open(path: Path, buffer: AlignedBuffer) -> DirectFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return DirectFile(str(path), fd, os.O_RDWR, buffer)


def _close(file: DirectFile) -> None:
    file.close()
    os.close(file.fd)


def test_this_file_system_takes_direct_io(tmp_path: Path, buffer: AlignedBuffer) -> None:
    # The tests below would pass through the buffered path alone if it did not.
    file = _open(tmp_path / "f", buffer)
    try:
        assert file.direct
    finally:
        _close(file)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.sampled_from([0, 512, ALIGN, 3 * ALIGN, 5000]),
       sizes=st.lists(st.integers(0, 3 * BUFFER // 2), min_size=1, max_size=5),
       read_at=st.integers(0, 300_000), read_len=st.integers(0, BUFFER - 2 * ALIGN))
def test_writes_and_reads_equal_the_buffered_path(tmp_path: Path, buffer: AlignedBuffer,
                                                  offset: int, sizes: list[int],
                                                  read_at: int, read_len: int) -> None:
    path = tmp_path / "f"
    path.unlink(missing_ok=True)
    pieces = [os.urandom(n) for n in sizes]
    file = _open(path, buffer)
    try:
        assert file.write(offset, pieces) == sum(sizes)
        data = b"".join(pieces)
        expected = bytes(offset) + data if data else b""  # writing nothing extends nothing
        assert path.read_bytes() == expected
        assert bytes(file.read(read_at, read_len)) == expected[read_at:read_at + read_len]
    finally:
        _close(file)


def test_a_file_system_without_o_direct_gets_buffered_io(tmp_path: Path, buffer: AlignedBuffer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked: every file system here takes O_DIRECT; some (FUSE, older tmpfs) refuse it
    # with EINVAL at open.
    real_open = os.open

    def refusing(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(directio.os, "open", refusing)
    path = tmp_path / "f"
    file = _open(path, buffer)
    try:
        assert not file.direct
        data = os.urandom(3 * BUFFER + 100)
        assert file.write(ALIGN, [data]) == len(data)
        assert path.read_bytes() == bytes(ALIGN) + data
        assert bytes(file.read(ALIGN + 7, 1000)) == data[7:1007]
    finally:
        _close(file)


def test_a_refused_direct_write_falls_back_and_loses_nothing(
        tmp_path: Path, buffer: AlignedBuffer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked: a device refusing an alignment it does not accept (EINVAL on the transfer).
    path = tmp_path / "f"
    file = _open(path, buffer)
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd != file.fd:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    try:
        data = os.urandom(2 * BUFFER + ALIGN)
        assert file.write(0, [data[:BUFFER], data[BUFFER:]]) == len(data)
        assert refused == [0] and not file.direct
        assert path.read_bytes() == data
    finally:
        _close(file)


def test_a_read_past_the_end_comes_back_short(tmp_path: Path, buffer: AlignedBuffer) -> None:
    path = tmp_path / "f"
    data = os.urandom(10_000)
    path.write_bytes(data)
    file = _open(path, buffer)
    try:
        assert bytes(file.read(8192, 4096)) == data[8192:]
        assert bytes(file.read(20_000, 100)) == b""
    finally:
        _close(file)


def test_a_read_larger_than_the_buffer_is_refused(tmp_path: Path, buffer: AlignedBuffer) -> None:
    file = _open(tmp_path / "f", buffer)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            file.read(0, BUFFER)
    finally:
        _close(file)
