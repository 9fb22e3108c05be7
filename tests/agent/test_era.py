"""The functional core of dm-era tracking: era_invalidate's XML to volume blocks, and
`cdp-agent era` reading dmsetup's answers. (The device path itself runs only in the QEMU
VM tests, which need device-mapper.)"""

from __future__ import annotations

import pytest

from cdpcore.errors import UsageError
from hotcopy import backup, era
from hotcopy.capture import VolumeSpec
from hotcopy.changes import block_runs
from hotcopy.era import parse_blocks, to_byte_ranges
from hotcopy.errors import SnapshotError
from hotcopy.state import HostState

XML = """<blocks>
  <range begin="0" end="3"/>
  <block block="7"/>
  <range begin="100" end="102"/>
</blocks>
"""


def test_parse_blocks_reads_ranges_and_single_blocks() -> None:
    assert parse_blocks(XML) == [(0, 3), (7, 8), (100, 102)]


def test_unreadable_output_is_a_snapshot_error() -> None:
    with pytest.raises(SnapshotError, match="era_invalidate printed unreadable output"):
        parse_blocks("<blocks><range begin=")


def test_era_blocks_map_to_volume_block_runs_through_the_volume_offset() -> None:
    era_block = 64 * 1024  # 128 sectors
    # Volume at 1 MiB (era block 16) of 2 MiB, in 16 KiB blocks: era block 16 is volume
    # blocks 0-3; era blocks 100-101 lie beyond the volume's end (era block 48).
    ranges = to_byte_ranges([(0, 3), (16, 17), (20, 22), (100, 102)], era_block)
    assert block_runs(ranges, 1 << 20, 2 << 20, 16 * 1024) == [(0, 4), (16, 8)]
    # A volume ending mid-block keeps its short last block.
    assert block_runs(to_byte_ranges([(0, 1)], era_block), 0, 20 * 1024, 16 * 1024) == [
        (0, 2)]


def _fake_dmsetup(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """dmsetup of a machine with one era device, cdpera-data over 253:1."""
    ran: list[list[str]] = []
    answers = {
        ("ls", "--target", "era"): "cdpera-data\t(253:3)\n",
        ("table", "cdpera-data"): "0 262144 era 253:2 253:1 128\n",
        ("status", "cdpera-data"): "0 262144 era 8 37/2048 5 -\n",
    }
    monkeypatch.setattr(era.os.path, "exists", lambda path: path == "/dev/mapper/control")
    monkeypatch.setattr(era.runcmd, "run_text",
                        lambda argv, **_: answers[tuple(argv[1:])])
    monkeypatch.setattr(era.runcmd, "run", lambda argv, **_: ran.append(list(argv)))
    return ran


def test_era_status_reads_the_table_and_the_status_line(monkeypatch: pytest.MonkeyPatch,
                                                        ) -> None:
    _fake_dmsetup(monkeypatch)
    [dev] = era.list_eras()
    assert era.status(dev) == {
        "name": "cdpera-data", "device": "/dev/mapper/cdpera-data", "origin": "253:1",
        "metadata": "253:2", "block_bytes": 65536, "current_era": 5,
        "metadata_blocks_used": 37, "metadata_blocks_total": 2048}


@pytest.mark.parametrize("name", ["data", "cdpera-data"])
def test_era_detach_by_name_with_or_without_the_prefix(monkeypatch: pytest.MonkeyPatch,
                                                       name: str) -> None:
    ran = _fake_dmsetup(monkeypatch)
    assert era.detach(name).name == "cdpera-data"
    assert ran == [["dmsetup", "remove", "cdpera-data"]]
    with pytest.raises(UsageError, match="other: no dm-era device"):
        era.detach("other")


def test_volumes_on_one_era_device_share_one_checkpoint(monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    """A partitioned disk under one era device is several volumes (boot area, partitions).
    A checkpoint per volume opened an era per volume, so at the next point every volume
    but the first saw an era it did not expect and was read in full. (dm-era stands in:
    the kernel here has no device-mapper; the VM tests run the real one.)"""
    dev = era.EraDevice("cdpera-disk", "253:1", "253:2", 128)
    current = [7]
    checkpoints: list[str] = []

    def checkpoint(d: era.EraDevice) -> int:
        checkpoints.append(d.name)
        current[0] += 1
        return current[0] - 1

    def written_since(d: era.EraDevice, since: int) -> list[tuple[int, int]]:
        current[0] += 1  # a metadata snapshot opens an era too
        return [(0, 1)]

    monkeypatch.setattr(era, "find_era", lambda path: dev)
    monkeypatch.setattr(era, "checkpoint", checkpoint)
    monkeypatch.setattr(era, "current_era", lambda d: current[0])
    monkeypatch.setattr(era, "written_since", written_since)
    specs = [VolumeSpec(f"disk:{part}", "/dev/vdb", offset, 1 << 20)
             for part, offset in (("boot", 0), ("p1", 1 << 20), ("p2", 2 << 20))]
    first = backup._checkpoint_eras(specs)
    assert checkpoints == ["cdpera-disk"]
    previous = HostState(era=backup._era_state(first))
    eras = backup._checkpoint_eras(specs)
    assert [backup._era_ranges(spec, eras[spec.name], previous) for spec in specs] == [
        [(0, 65536)]] * 3  # each volume's changes, none taken for a reset
