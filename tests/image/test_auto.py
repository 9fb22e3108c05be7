"""The unattended restore of the rescue ISO: booted on BIOS with `cdp.auto=1
cdp.answers=URL` on the kernel command line (typed at GRUB's prompt, the options of the
menu's UNATTENDED RESTORE entry plus the answers URL), it fetches the answers file over
HTTP, restores a point from a real cdp-server (both on this machine's loopback, reached
through the harness's forwards only), prints its CDP-RESTORE-DONE line and powers off as
the answers say. The disk is then checked byte for byte; a disk not in the map is
untouched."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import WrappedKey, new_master_key
from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, IsoBoot, VMConfig
from tests.rescue.pointmaker import make_point
from tests.tui.conftest import make_source

pytestmark = pytest.mark.vm
MIB = 1024 * 1024
PASS = "correct horse"
_DONE = re.compile(rb"CDP-RESTORE-DONE ([^\r\n]*)\r?\n")


def test_unattended_restore_from_the_kernel_command_line(
        rescue_image: Path, cdp_server: Any, http_dir: tuple[str, Path], tmp_path: Path) -> None:
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    master = new_master_key()
    agent.put_key("web1", WrappedKey.create(master, PASS, n=2**10).to_json())
    source = tmp_path / "vda.img"
    make_source(source)
    point = make_point(agent, "web1", BlobCodec(KeySet.from_master(master)), [str(source)])
    target, bystander = tmp_path / "target.img", tmp_path / "other.img"
    target.write_bytes(os.urandom(16 * MIB))  # stale content that must not survive
    bystander.write_bytes(os.urandom(16 * MIB))
    untouched = hashlib.sha256(bystander.read_bytes()).hexdigest()

    url, www = http_dir
    (www / "answers.json").write_text(json.dumps({
        "server": f"https://{GUEST_SERVER_IP}:8443", "fingerprint": cdp_server.fingerprint,
        "token": tokens[Role.restore], "host": "web1", "passphrase": PASS,
        "map": {"vda.img": "/dev/vda"}, "yes": True, "after": "poweroff"}))
    http_port = int(url.rsplit(":", 1)[1])
    cfg = VMConfig(disks=[Disk(target), Disk(bystander, bus="nvme")],
                   boot=IsoBoot(iso=rescue_image / "rescue.iso"),
                   forwards=[Forward(8443, cdp_server.port), Forward(8080, http_port)],
                   name="auto-restore")
    vm = VM(cfg).start()
    try:
        vm.grub_boot("console=ttyS0,115200n8 quiet loglevel=3 ip=dhcp cdp.auto=1 "
                     f"cdp.answers=http://{GUEST_SERVER_IP}:8080/answers.json")
        ready = vm.wait_ready(timeout=600)
        assert ready.fields["auto"] == "1" and ready.fields["ui"] == "shell"
        done = vm.wait_for(_DONE, timeout=900).group(1).decode()
        print(f"ready after {ready.seconds:.1f} s; CDP-RESTORE-DONE {done}")
        assert done.startswith("ok "), done
        fields = dict(w.split("=", 1) for w in done.split()[1:])
        assert fields["point"] == point.point_id
        assert int(fields["bytes"]) >= 15 * MIB  # boot area and both partitions
        deadline = time.monotonic() + 120
        while vm.alive():  # "after": "poweroff"
            assert time.monotonic() < deadline, "the rescue system did not power off"
            time.sleep(1)
    except BaseException:
        vm.kill(keep_log=True)
        raise
    vm.kill(keep_log=False)
    restored, original = target.read_bytes(), source.read_bytes()
    # Byte for byte, but for the CHS end address of the protective MBR's entry, which the
    # new partition table (libparted) writes in its own way.
    assert restored[:451] == original[:451] and restored[454:] == original[454:]
    assert hashlib.sha256(bystander.read_bytes()).hexdigest() == untouched
