"""The drill's workload and its proof: files with known checksums written on the protected
server between recovery points, and the checks run on the restored one.

Round k writes a new random file on the data LV (through the dm-era device) and one on the
root LV, appends to a ledger on both, and deletes the data file of round k-2, so every
point has a different file set and a restore of the wrong point cannot pass."""

from __future__ import annotations

from mkimage.qemu import VM

#: Checked trees: one on the data LV, one on the root LV.
TREES = ("/data/drill", "/root/drill")


def round_script(k: int) -> str:
    size_kib = 256 + 64 * k
    return f"""set -e
mkdir -p {' '.join(TREES)}
head -c {size_kib}K /dev/urandom > /data/drill/round{k}.bin
head -c 64K /dev/urandom > /root/drill/round{k}.bin
echo "round {k} $(date -u +%s)" >> /data/drill/ledger.txt
cp /data/drill/ledger.txt /root/drill/ledger.txt
rm -f /data/drill/round{k - 2}.bin
sync
"""


def checksums(vm: VM) -> dict[str, str]:
    """{path: sha256} of every file under TREES (an empty tree gives {})."""
    out = vm.check(f"find {' '.join(TREES)} -type f 2>/dev/null | sort | xargs -r sha256sum")
    sums: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, path = line.partition("  ")
        sums[path] = digest
    return sums
