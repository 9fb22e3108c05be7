"""The benchmark workload (issue #9): a deterministic ext4 image filled with a realistic
mix of files, and deterministic changes to it.

The image is built without mounting anything: the files are written to a directory and
`mkfs.ext4 -d` copies them into a fresh filesystem (fixed UUID, hash seed and timestamps,
so the same size and seed give the same bytes). `mount -o loop` works on this machine
too, but a kernel-written filesystem depends on the kernel's allocator and timing, while
`mkfs.ext4 -d` is reproducible and needs no privileges on the image.

Mix, as fractions of the image size: compressible text (22%), incompressible data (18%),
exact duplicates of some of those files (6%), mostly-zero preallocated files (6%), a
database file of 4 KiB pages (8%) and a log file (4%); the rest is ext4 metadata and free
space. The change ("a busy database and a log file between two points") overwrites
thousands of scattered 4 KiB pages of file data (drawn from every file, as random writes
of databases and applications land) and one sequential run of tens of MiB inside the log
file, located through `debugfs` so the writes land in file data, not in free space.

    .venv/bin/python -m bench.workload --size 2G --out /var/tmp/cdp-bench
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cdpcore import runcmd
from cdpcore.errors import UsageError

MiB = 1024 * 1024
GiB = 1024 * MiB
PAGE = 4096
FS_UUID = "c0ffee00-cd90-4b00-8e00-000000000009"
FAKE_TIME = "1700000000"  # 2023-11-14: fixed timestamps make the image reproducible
DB_FILE = "srv/db/pages.db"
LOG_FILE = "var/log/app.log"
#: Reference change on a 2 GiB image, scaled linearly with the image size.
SCATTERED_PER_2GIB = 7168  # 4 KiB writes: 28 MiB
SEQUENTIAL_PER_2GIB = 32 * MiB


def keystream(seed: str, length: int) -> bytes:
    """Incompressible deterministic bytes: AES-CTR keystream under a key derived from
    `seed` (about 1.4 GB/s here, ten times Python's random.randbytes)."""
    key = hashlib.sha256(seed.encode()).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(length)) + enc.finalize()


def _text_lines(rng: random.Random, count: int = 4096) -> list[bytes]:
    words = ["".join(rng.choice("etaoinshrdlcumwfgypbvk") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    lines = []
    for i in range(count):
        n = rng.randint(4, 14)
        lvl = rng.choice(("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"))
        body = " ".join(rng.choice(words) for _ in range(n))
        lines.append(f"{lvl} worker-{i % 17} id={rng.getrandbits(40):010x} {body}\n".encode())
    return lines


class Generator:
    """Deterministic content: the same seed gives the same bytes on every machine."""

    def __init__(self, seed: int, stream: str = "") -> None:
        self.seed = seed
        self.rng = random.Random(f"{seed}/{stream}")
        self.lines = _text_lines(random.Random(seed + 1))

    def text(self, length: int) -> bytes:
        out = b"".join(self.rng.choices(self.lines, k=length // 50 + 16))
        while len(out) < length:
            out += out
        return out[:length]

    def random(self, length: int, tag: str) -> bytes:
        return keystream(f"{self.seed}/{tag}", length)

    def db_page(self, tag: str) -> bytes:
        """A database page: a header, half incompressible row data, half text-like."""
        head = hashlib.sha256(tag.encode()).digest()
        return (head + self.random(PAGE // 2 - len(head), tag) + self.text(PAGE // 2))[:PAGE]

    def mostly_zero(self, length: int, tag: str) -> bytes:
        """A preallocated file: zeros with a 4 KiB block of data every 256 KiB."""
        buf = bytearray(length)
        for i, off in enumerate(range(0, length - PAGE + 1, 256 * 1024)):
            buf[off:off + PAGE] = self.random(PAGE, f"{tag}/{i}")
        return bytes(buf)


def _sizes(rng: random.Random, total: int, low: int, high: int) -> list[int]:
    """File sizes, log-uniform in [low, high], summing to `total` (rounded to pages)."""
    sizes: list[int] = []
    left = total
    while left >= PAGE:
        size = int(low * (high / low) ** rng.random()) // PAGE * PAGE or PAGE
        size = min(size, left // PAGE * PAGE)
        sizes.append(size)
        left -= size
    return sizes


def populate(root: Path, size: int, seed: int) -> tuple[dict[str, int], list[str]]:
    """Write the file mix for an image of `size` bytes under `root`; returns the bytes
    written per kind and the files' paths."""
    gen = Generator(seed)
    scale = max(size, 16 * MiB)
    kinds: dict[str, int] = {}
    files: list[str] = []

    def put(rel: str, data: bytes, kind: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds[kind] = kinds.get(kind, 0) + len(data)
        files.append(rel)

    big = min(16 * MiB, scale // 16)
    texts = []
    for i, n in enumerate(_sizes(random.Random(seed), scale * 22 // 100, 8192, big // 4)):
        rel = f"home/user/docs/d{i // 50:02d}/notes-{i:04d}.txt"
        texts.append(rel)
        put(rel, gen.text(n), "text")
    blobs = []
    for i, n in enumerate(_sizes(random.Random(seed + 2), scale * 18 // 100, 256 * 1024, big)):
        rel = f"srv/media/m{i // 20:02d}/object-{i:04d}.bin"
        blobs.append(rel)
        put(rel, gen.random(n, rel), "incompressible")
    pool = texts + blobs
    dup_budget = scale * 6 // 100
    i = 0
    while dup_budget > 0:
        src = pool[gen.rng.randrange(len(pool))]
        data = (root / src).read_bytes()[:dup_budget]
        put(f"backup/copies/c{i:04d}-{Path(src).name}", data, "duplicate")
        dup_budget -= len(data)
        i += 1
    for i, n in enumerate(_sizes(random.Random(seed + 3), scale * 6 // 100, MiB, big * 2)):
        rel = f"var/lib/vm/prealloc-{i:03d}.img"
        put(rel, gen.mostly_zero(n, rel), "mostly_zero")
    db_pages = scale * 8 // 100 // PAGE
    put(DB_FILE, b"".join(gen.db_page(f"db/{p}") for p in range(db_pages)), "database")
    put(LOG_FILE, gen.text(scale * 4 // 100 // PAGE * PAGE), "log")
    stamp = int(FAKE_TIME)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
    return kinds, files


@dataclass
class Workload:
    """A built base image and what the generator put in it."""

    image: str
    size: int
    seed: int
    kinds: dict[str, int]
    files: list[str]
    sha256: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> dict[str, object]:
        """What a report needs: everything but the list of file names."""
        return {**self.to_json(), "files": len(self.files)}


def build_image(path: Path, size: int, seed: int = 9) -> Workload:
    """Build the base image at `path` (overwritten). Needs about 0.7 x size of scratch
    space next to it for the source directory, removed afterwards."""
    if size < 16 * MiB or size % PAGE:
        raise UsageError(f"workload size {size} must be a multiple of 4 KiB and >= 16 MiB")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".workload-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        kinds, files = populate(root, size, seed)
        os.utime(root, (int(FAKE_TIME), int(FAKE_TIME)))
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME}
        runcmd.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "benchdisk", "-U", FS_UUID,
                    "-E", f"hash_seed={FS_UUID},root_owner=0:0,lazy_itable_init=0",
                    "-d", str(root), str(path)], env=env)
        _fix_ctimes(path, root, Path(tmp) / "ctime.cmd")
    return Workload(str(path), size, seed, kinds, files, sha256_file(path))


def _fix_ctimes(image: Path, root: Path, script: Path) -> None:
    """mkfs.ext4 -d copies each inode's ctime (which cannot be set) and, for directories
    it read, the atime from the source; overwrite both with the fixed time so the image
    is reproducible."""
    paths = ["/"] + ["/" + str(p.relative_to(root)) for p in sorted(root.rglob("*"))]
    script.write_text("".join(f"sif {p} {field} {FAKE_TIME}\n" for p in paths
                              for field in ("ctime", "atime")))
    runcmd.run(["debugfs", "-w", "-f", str(script), str(image)],
               env={**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME})


def copy_sparse(src: Path | str, dst: Path | str) -> None:
    runcmd.run(["cp", "--sparse=always", str(src), str(dst)])


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def data_runs(image: Path | str, files: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Where each file's data lives in the image: (image offset, length) runs in file
    order, allocated blocks only (holes have none), read with one debugfs call (no mount)."""
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("".join(f"blocks /{rel}\n" for rel in files))
        script.flush()
        out = runcmd.run_text(["debugfs", "-f", script.name, str(image)])
    runs: dict[str, list[tuple[int, int]]] = {}
    current: list[tuple[int, int]] | None = None
    for line in out.splitlines():
        if line.startswith("debugfs: blocks /"):
            current = runs.setdefault(line.removeprefix("debugfs: blocks /"), [])
        elif current is not None:
            for b in map(int, line.split()):
                if current and current[-1][0] + current[-1][1] == b * PAGE:
                    current[-1] = (current[-1][0], current[-1][1] + PAGE)
                else:
                    current.append((b * PAGE, PAGE))
    missing = [rel for rel in files if not runs.get(rel)]
    if len(missing) == len(files):
        raise UsageError(f"{image}: none of the workload's files has data (not its image?)")
    return runs


def _pages(runs: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Run starts and the cumulative page count before each run, for locating page n."""
    starts, before, total = [], [], 0
    for start, length in runs:
        starts.append(start)
        before.append(total)
        total += length // PAGE
    return starts, [*before, total]


def _locate(starts: list[int], before: list[int], page: int) -> int:
    i = bisect.bisect_right(before, page) - 1
    return starts[i] + (page - before[i]) * PAGE


@dataclass(frozen=True)
class Write:
    offset: int  # in the image
    data: bytes


def plan_change(image: Path | str, work: Workload, *, scattered: int | None = None,
                sequential: int | None = None, tag: str = "change") -> list[Write]:
    """The writes of one change: `scattered` distinct 4 KiB pages of file data, drawn
    uniformly from the allocated blocks of every file but the log (random writes of
    databases and applications), rewritten with new database-page-like content; then one
    `sequential` run of new text over the log file. Defaults scale the reference change (7168 pages =
    28 MiB, and 32 MiB of log, on 2 GiB) with the image size."""
    gen = Generator(work.seed, tag)
    if scattered is None:
        scattered = max(16, SCATTERED_PER_2GIB * work.size // (2 * GiB))
    if sequential is None:
        sequential = max(PAGE, SEQUENTIAL_PER_2GIB * work.size // (2 * GiB) // PAGE * PAGE)
    runs = data_runs(image, work.files)
    starts, before = _pages([r for rel in work.files if rel != LOG_FILE
                             for r in runs.get(rel, [])])
    picked = sorted(gen.rng.sample(range(before[-1]), min(scattered, before[-1])))
    writes = [Write(_locate(starts, before, p), gen.db_page(f"{tag}/{p}")) for p in picked]
    log_starts, log_before = _pages(runs[LOG_FILE])
    sequential = min(sequential, log_before[-1] * PAGE)
    first = gen.rng.randrange(0, log_before[-1] - sequential // PAGE + 1)
    text = gen.text(sequential)
    for i in range(sequential // PAGE):  # one write per page: the file may be fragmented
        writes.append(Write(_locate(log_starts, log_before, first + i),
                            text[i * PAGE:(i + 1) * PAGE]))
    return writes


def apply_change(image: Path | str, writes: list[Write]) -> None:
    fd = os.open(image, os.O_WRONLY)
    try:
        for w in writes:
            os.pwrite(fd, w.data, w.offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Diff:
    bytes: int  # bytes that differ
    blocks: int  # 4 KiB blocks that differ


def diff_images(a: Path | str, b: Path | str) -> Diff:
    """Compare two images of the same size exactly, byte for byte."""
    changed = blocks = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(4 * MiB), fb.read(4 * MiB)
            if len(x) != len(y):
                raise UsageError(f"{a} and {b} differ in size")
            if not x:
                return Diff(changed, blocks)
            if x == y:
                continue
            for off in range(0, len(x), PAGE):
                p, q = x[off:off + PAGE], y[off:off + PAGE]
                if p != q:
                    blocks += 1
                    xor = (int.from_bytes(p, "big") ^ int.from_bytes(q, "big"))
                    changed += len(p) - xor.to_bytes(len(p), "big").count(0)


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 64M, 2G)") from None


@click.command()
@click.option("--size", default="2G", show_default=True, help="Image size (e.g. 64M, 2G).")
@click.option("--seed", default=9, show_default=True, type=int)
@click.option("--out", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False), help="Directory for base.img and changed.img.")
def main(size: str, seed: int, out: str) -> None:
    """Build the workload image and its changed twin; print what changed as JSON."""
    out_dir = Path(out)
    nbytes = parse_size(size)
    work = build_image(out_dir / "base.img", nbytes, seed)
    changed = out_dir / "changed.img"
    copy_sparse(work.image, changed)
    apply_change(changed, plan_change(changed, work))
    diff = diff_images(work.image, changed)
    click.echo(json.dumps({**work.summary(), "changed_bytes": diff.bytes,
                           "changed_blocks": diff.blocks}, indent=2))


if __name__ == "__main__":
    main()
