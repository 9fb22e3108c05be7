"""The demo's sample disk: a GPT image with an EFI system partition (vfat) and an ext4
partition full of files, built from image files only (no loop devices, no mounts), and
changed between recovery points with debugfs, as a running server's disk would change."""

from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import parted

from cdpcore.runcmd import run

MIB = 1024 * 1024


@dataclass
class SampleDisk:
    path: Path
    data_fs: Path  # the ext4 filesystem, kept as its own file and copied into the disk
    esp_offset: int
    esp_size: int
    data_offset: int
    data_size: int

    def sync_data(self) -> None:
        """Copy the ext4 file into its partition (what the filesystem writes on a disk)."""
        with open(self.data_fs, "rb") as src, open(self.path, "r+b") as dst:
            dst.seek(self.data_offset)
            while chunk := src.read(4 * MIB):
                dst.write(chunk)

    def partition_bytes(self, number: int, image: Path | None = None) -> bytes:
        offset, size = ((self.esp_offset, self.esp_size) if number == 1
                        else (self.data_offset, self.data_size))
        with open(image or self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write_file(self, name: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(data)
            tmp.flush()
            run(["debugfs", "-w", "-R", f"rm /{name}", str(self.data_fs)], check=False)
            run(["debugfs", "-w", "-R", f"write {tmp.name} /{name}", str(self.data_fs)])
        self.sync_data()

    def read_file(self, name: str, image: Path | None = None) -> bytes:
        """A file's content from the ext4 partition of `image` (default: this disk)."""
        with tempfile.NamedTemporaryFile() as fs, tempfile.NamedTemporaryFile() as out:
            fs.write(self.partition_bytes(2, image))
            fs.flush()
            run(["debugfs", "-R", f"dump /{name} {out.name}", fs.name])
            return Path(out.name).read_bytes()


def _files(root: Path, rng: random.Random) -> None:
    """A mix like a small server's: logs (compressible), binaries (not), duplicates,
    a mostly-zero database file."""
    (root / "log").mkdir()
    for i in range(8):
        lines = [f"2026-11-24 10:{i:02d}:{s:02d} web1 nginx: GET /item/{rng.randrange(10**6)} "
                 f"200 {rng.randrange(10**4)}\n" for s in range(60) for _ in range(40)]
        (root / "log" / f"access.{i}.log").write_text("".join(lines))
    (root / "bin").mkdir()
    blob = rng.randbytes(6 * MIB)
    (root / "bin" / "app").write_bytes(blob)
    (root / "bin" / "app.bak").write_bytes(blob)  # a duplicate: stored once
    db = bytearray(16 * MIB)
    for _ in range(64):
        at = rng.randrange(len(db) - 4096)
        db[at:at + 4096] = rng.randbytes(4096)
    (root / "db.sqlite").write_bytes(bytes(db))


def make_sample_disk(workdir: Path, size: int = 256 * MIB, seed: int = 2026) -> SampleDisk:
    rng = random.Random(seed)
    path = workdir / "server-disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    device = parted.getDevice(str(path))
    disk = parted.freshDisk(device, "gpt")
    sector = device.sectorSize
    esp_start, esp_len = MIB // sector, 32 * MIB // sector
    data_start = esp_start + esp_len
    data_len = (size - MIB) // sector - data_start  # leave room for the backup GPT
    for start, length, name in ((esp_start, esp_len, "EFI"), (data_start, data_len, "data")):
        geometry = parted.Geometry(device=device, start=start, length=length)
        fs = parted.FileSystem(type="fat32" if name == "EFI" else "ext4", geometry=geometry)
        part = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, fs=fs,
                                geometry=geometry)
        disk.addPartition(part, constraint=parted.Constraint(exactGeom=geometry))
        part.set_name(name)
        if name == "EFI":
            part.setFlag(parted.PARTITION_BOOT)  # on GPT: the ESP type GUID
    disk.commit()
    sample = SampleDisk(path=path, data_fs=workdir / "data.ext4", esp_offset=esp_start * sector,
                        esp_size=esp_len * sector, data_offset=data_start * sector,
                        data_size=data_len * sector)
    esp = workdir / "esp.vfat"
    with open(esp, "wb") as f:
        f.truncate(sample.esp_size)
    run(["mkfs.vfat", "-F", "32", "-n", "EFI", str(esp)])
    with open(esp, "rb") as src, open(path, "r+b") as dst:
        dst.seek(sample.esp_offset)
        dst.write(src.read())
    tree = Path(tempfile.mkdtemp(dir=workdir, prefix="files-"))
    _files(tree, rng)
    run(["mkfs.ext4", "-q", "-F", "-L", "demo-data", "-d", str(tree), str(sample.data_fs),
         str(sample.data_size // 1024) + "k"])
    sample.sync_data()
    return sample


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

