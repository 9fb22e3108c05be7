"""The drill's workload and its proof: files with known checksums written on the protected
server between recovery points, and the checks run on the restored one.

Round k writes a new random file on the data LV (through the dm-era device) and one on the
root LV, appends to a ledger on both, and deletes the data file of round k-2, so every
point has a different file set and a restore of the wrong point cannot pass.

While `cdp-agent run` takes points, the rounds run inside the guest (`between_points`),
each as soon as the agent logs a commit: the round is done within a second, long before
the next point's snapshots (its layout capture alone takes longer), and the test checks
that from the times recorded."""

from __future__ import annotations

from mkimage.qemu import VM

#: Checked trees: one on the data LV, one on the root LV.
TREES = ("/data/drill", "/root/drill")
_CHECKSUMS = f"find {' '.join(TREES)} -type f 2>/dev/null | sort | xargs -r sha256sum"
#: Where `between_points` records each round's checksums and end time (tmpfs: outside
#: every protected volume).
RECORDS = "/tmp/drill"


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


def between_points(rounds: range, agent_log: str) -> str:
    """A guest script that runs round rounds[n] once the agent has logged n + 1 commits
    and records, per round k, its checksums (RECORDS/roundK.sums) and its end time in
    the guest's clock, the clock of the points' `created` (RECORDS/roundK.end)."""
    lines = ["set -e", f"mkdir -p {RECORDS}"]
    for n, k in enumerate(rounds, 1):
        lines += [f"until [ \"$(grep -c ' committed: ' {agent_log} 2>/dev/null)\" -ge {n} ]; "
                  "do sleep 0.2; done",
                  f"sh <<'ROUND'\n{round_script(k)}ROUND",
                  f"{_CHECKSUMS} > {RECORDS}/round{k}.sums",
                  f"date +%s.%N > {RECORDS}/round{k}.end"]
    return "\n".join(lines) + "\n"


def parse_checksums(out: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, path = line.partition("  ")
        sums[path] = digest
    return sums


def checksums(vm: VM) -> dict[str, str]:
    """{path: sha256} of every file under TREES (an empty tree gives {})."""
    return parse_checksums(vm.check(_CHECKSUMS))
