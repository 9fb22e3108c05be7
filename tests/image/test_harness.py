"""The QEMU harness (mkimage.qemu) against the real rescue image: commands and exit codes,
files in, LVM with snapshots and a dm-era target, and a forward to this machine's loopback
with restrict=on."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, VMCommandFailed, VMConfig

pytestmark = pytest.mark.vm


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the host: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host_http() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_harness_lvm_snapshot_era_and_forward(rescue_image: Path, tmp_path: Path,
                                              host_http: int) -> None:
    for name, size in (("a.img", 64), ("b.img", 32)):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).open("r+b").truncate(size << 20)
    disks = [Disk(tmp_path / "a.img"), Disk(tmp_path / "b.img", bus="nvme")]
    share = tmp_path / "share"
    share.mkdir()
    (share / "note.txt").write_text("shared over 9p\n")
    cfg = VMConfig(disks=disks, forwards=[Forward(8080, host_http)],
                   share=share, name="harness")
    with VM(cfg) as vm:
        assert vm.ready is not None
        assert sorted(vm.ready.list("disks")) == ["nvme0n1", "vda"]
        assert vm.ready.list("nics") == ["eth0"]
        assert vm.ready.fields["ui"] == "test"

        # Exit codes, stderr, quoting, no trailing newline added.
        assert vm.run("echo out; echo 'it''s \"quoted\"' >&2; exit 3") == (
            3, 'out\nits "quoted"\n')
        assert vm.run("printf abc") == (0, "abc")
        with pytest.raises(VMCommandFailed, match=r"exit 1\): false"):
            vm.check("false")

        # Files in: through the console and through the 9p share.
        data = bytes(range(256)) * 300
        vm.put("/root/blob.bin", data, mode=0o600)
        assert vm.check("sha256sum /root/blob.bin | cut -d' ' -f1; stat -c %a /root/blob.bin") \
            == hashlib.sha256(data).hexdigest() + "\n600\n"
        assert vm.check("cat /mnt/host/note.txt") == "shared over 9p\n"

        # LVM: a volume, a thick snapshot of it, and a dm-era target over another volume.
        vm.check("pvcreate -q /dev/vda && vgcreate -q vg /dev/vda && "
                 "lvcreate -q -y -L 16M -n data vg && lvcreate -q -y -L 8M -n meta vg && "
                 "mkfs.ext4 -q /dev/vg/data")
        vm.check("lvcreate -q -y -s -L 8M -n snap vg/data")
        assert "snap" in vm.check("lvs --noheadings -o lv_name,origin vg | grep data")
        assert vm.check("blkid -s TYPE -o value /dev/vg/snap") == "ext4\n"
        size = vm.check("blockdev --getsz /dev/nvme0n1").strip()
        vm.check(f"dmsetup create era0 --table '0 {size} era /dev/vg/meta /dev/nvme0n1 8192'")
        status = vm.check("dmsetup status era0")
        assert status.split()[2] == "era", status
        vm.check("dd if=/dev/zero of=/dev/mapper/era0 bs=4k count=1 oflag=direct 2>/dev/null"
                 " && dmsetup message era0 0 checkpoint && dmsetup remove era0")
        assert {"linear", "snapshot", "snapshot-origin", "era", "thin", "thin-pool"} <= {
            line.split()[0] for line in vm.check("dmsetup targets").splitlines()}

        # restrict=on: the forward reaches the host's loopback, nothing else is reachable.
        out = vm.check(f"python3 -c \"import urllib.request as u; print(u.urlopen("
                       f"'http://{GUEST_SERVER_IP}:8080/x', timeout=20).read().decode())\"")
        assert out == "hello from the host: /x\n"
        code, _ = vm.run("python3 -c \"import socket; socket.create_connection("
                         "('10.0.2.2', 22), timeout=5)\"")
        assert code != 0
