"""QEMU harness: boot the rescue image in `qemu-system-x86_64 -accel tcg` and drive it.

Typical use in a test (mark it `@pytest.mark.vm`)::

    from mkimage.qemu import VM, VMConfig, Disk, Forward, GUEST_SERVER_IP
    with VM(VMConfig(disks=[Disk(img), Disk(img2, bus="nvme")], memory_mib=2048,
                     forwards=[Forward(guest_port=443, host_port=server.port)])) as vm:
        code, out = vm.run("lvcreate -L 8M -n lv vg")   # (exit code, stdout+stderr)
        vm.check("cdp-agent --help")                     # raises VMCommandFailed if non-zero
        vm.put("/root/ca.pem", pem_bytes)                # small files, through the console
    # leaving the block powers the guest off (killed if it does not stop in time)

What it does:
- Boots out/vmlinuz + out/initrd.img (`mkimage build`; directory overridable with the env
  variable CDP_IMAGE_DIR) with `console=ttyS0 cdp.test=1`: the rescue init then starts a root
  shell without echo or prompt on the serial console. `VMConfig.boot` may instead be an
  `IsoBoot` (CD or USB stick), a `NetBoot` (QEMU's built-in TFTP, iPXE) or a `KernelBoot`
  with other options; `firmware="uefi"` uses OVMF (q35, the 4M pflash pair, private vars).
- Disks: raw (or qcow2) images on virtio-blk (/dev/vdX), NVMe (/dev/nvme0n1, ...), SATA
  (AHCI, /dev/sdX) or USB storage. The rescue init prints
  `CDP-RESCUE-READY disks=vda,nvme0n1 nics=eth0 ip=10.0.2.15/24 ui=test auto=0`
  once it is ready; `VM.ready` holds it parsed. An `IsoBoot` with other kernel options:
  `vm.start(); vm.grub_boot("console=ttyS0,115200n8 ...")` types them at GRUB's prompt.
- Network: QEMU user-mode networking with `restrict=on` (the guest reaches nothing outside),
  plus explicit forwards: `Forward(guest_port, host_port)` makes GUEST_SERVER_IP:guest_port
  inside the guest reach 127.0.0.1:host_port on this machine (a relay process per
  connection, mkimage/relay.py). Guest addresses: 10.0.2.15 (DHCP), gateway 10.0.2.2.
  A TLS client in the guest must either trust a certificate valid for GUEST_SERVER_IP or
  map the certificate's name to it in /etc/hosts (`vm.run("echo 10.0.2.100 name >> /etc/hosts")`).
- Commands: `run()` sends a shell script (base64, so any quoting works) over the serial
  console, with unique begin/end markers; the marker text is split in what is sent, so
  echoed input never matches. Output is stdout and stderr together, with \\n line ends.
  Commands run one at a time; stdin is /dev/null.
- Files: `put()` (base64 through the console: small files), or `VMConfig.share=DIR`: a
  read-only 9p share mounted at /mnt/host in the guest (fast, any size).
- Device-mapper (linear, snapshot, snapshot-origin, era, thin, thin-pool) and md modules are
  loaded at boot, udevd runs, and lvm.conf has `obtain_device_list_from_udev = 0`.
- Full-screen programs (the rescue TUI): `Serial(vm)` reads the console as text with the
  escape sequences removed and types keys on it (`keys`); `wait_for` waits for text on the
  screen, `quiet` for a key to have been handled.
- Logs: the whole serial console goes to a log file (`VM.log_path`, under
  CDP_VM_LOG_DIR or /tmp/cdp-vm-logs); it is kept, and its path printed to stderr (pytest
  shows it for failed tests), when the `with` block raises or a wait times out, and
  removed after a clean run. Every VMError message names it.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from cdpcore.errors import CdpError

REPO = Path(__file__).resolve().parent.parent
#: Inside the guest, this address reaches the host's loopback through `Forward`s.
GUEST_SERVER_IP = "10.0.2.100"
GUEST_IP = "10.0.2.15"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: Kernel options of the harness's default boot (test mode: root shell on ttyS0).
TEST_APPEND = "console=ttyS0,115200n8 cdp.test=1 quiet loglevel=3 panic=-1"
_READY = re.compile(rb"CDP-RESCUE-READY ([^\r\n]*)\r?\n")
_GRUB_MENU = re.compile(rb"GNU GRUB")
_GRUB_PROMPT = re.compile(rb"grub> ")
_GRUB_SAID = re.compile(rb"(.*?)grub> ", re.S)
#: CSI and other escape sequences, and the charset switches of a vt100.
_ESCAPES = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78]|\][^\x07]*\x07)")


class VMError(CdpError):
    """The VM did not boot, stopped, or a command timed out (the message names the log)."""


class VMCommandFailed(VMError):
    def __init__(self, command: str, code: int, output: str) -> None:
        self.command, self.code, self.output = command, code, output
        tail = "\n".join(output.splitlines()[-20:])
        super().__init__(f"guest command failed (exit {code}): {command}\n{tail}")


def image_dir() -> Path:
    return Path(os.environ.get("CDP_IMAGE_DIR", REPO / "out"))


@dataclass(frozen=True)
class Disk:
    path: Path
    bus: Literal["virtio", "nvme", "sata", "usb"] = "virtio"
    format: Literal["raw", "qcow2"] = "raw"
    serial: str | None = None  # NVMe needs one: a default is made up from the index
    readonly: bool = False


@dataclass(frozen=True)
class Forward:
    """GUEST_SERVER_IP:guest_port in the guest -> 127.0.0.1:host_port on this machine."""

    guest_port: int
    host_port: int


@dataclass(frozen=True)
class KernelBoot:
    kernel: Path | None = None  # default: image_dir()/vmlinuz
    initrd: Path | None = None  # default: image_dir()/initrd.img
    append: str = TEST_APPEND


@dataclass(frozen=True)
class IsoBoot:
    iso: Path | None = None  # default: image_dir()/rescue.iso
    as_usb: bool = False  # attach as a USB stick instead of a CD


@dataclass(frozen=True)
class NetBoot:
    tftp_dir: Path | None = None  # default: image_dir()/pxe
    bootfile: str = "boot.ipxe"


@dataclass(frozen=True)
class VMConfig:
    disks: Sequence[Disk] = ()
    memory_mib: int = 2048  # the root is unpacked into RAM (tmpfs, at most half of it)
    #: Two vCPUs where the host has two cores: QEMU's multi-threaded TCG runs each on its
    #: own host thread, and the guest's restore and agent points are CPU-bound.
    cpus: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    boot: KernelBoot | IsoBoot | NetBoot = field(default_factory=KernelBoot)
    firmware: Literal["bios", "uefi"] = "bios"
    network: bool = True
    nic: str = "virtio-net-pci"
    forwards: Sequence[Forward] = ()
    share: Path | None = None
    extra_append: str = ""  # added to KernelBoot.append (e.g. "ip=dhcp cdp.server=...")
    name: str = "vm"


@dataclass(frozen=True)
class Ready:
    """The parsed CDP-RESCUE-READY line, and the seconds from QEMU start to it."""

    fields: dict[str, str]
    seconds: float

    def list(self, key: str) -> list[str]:
        value = self.fields.get(key, "")
        return value.split(",") if value else []


def qemu_argv(cfg: VMConfig, tmp: Path) -> list[str]:
    """The QEMU command line for cfg (tmp holds per-VM files such as the UEFI variables)."""
    uefi = cfg.firmware == "uefi"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
            "-machine", "q35" if uefi else "pc", "-m", str(cfg.memory_mib), "-smp", str(cfg.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0"]
    if uefi:
        vars_copy = tmp / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    usb = any(d.bus == "usb" for d in cfg.disks) or (isinstance(cfg.boot, IsoBoot)
                                                     and cfg.boot.as_usb)
    if usb:
        argv += ["-device", "qemu-xhci,id=xhci"]
    if any(d.bus == "sata" for d in cfg.disks):
        argv += ["-device", "ahci,id=ahci"]
    sata = 0
    for i, disk in enumerate(cfg.disks):
        ro = ",readonly=on" if disk.readonly else ""
        argv += ["-drive", f"file={disk.path},if=none,id=d{i},format={disk.format},"
                           f"cache=unsafe{ro}"]
        serial = disk.serial or f"CDPDISK{i}"
        if disk.bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive=d{i},serial={serial}"]
        elif disk.bus == "nvme":
            argv += ["-device", f"nvme,drive=d{i},serial={serial}"]
        elif disk.bus == "sata":
            argv += ["-device", f"ide-hd,drive=d{i},bus=ahci.{sata},serial={serial}"]
            sata += 1
        else:
            argv += ["-device", f"usb-storage,drive=d{i},bus=xhci.0,serial={serial}"]
    boot = cfg.boot
    if isinstance(boot, KernelBoot):
        d = image_dir()
        append = " ".join(x for x in (boot.append, cfg.extra_append) if x)
        if cfg.network and "ip=" not in append:
            append += " ip=dhcp"
        argv += ["-kernel", str(boot.kernel or d / "vmlinuz"),
                 "-initrd", str(boot.initrd or d / "initrd.img"), "-append", append]
    elif isinstance(boot, IsoBoot):
        iso = boot.iso or image_dir() / "rescue.iso"
        if boot.as_usb:
            argv += ["-drive", f"file={iso},if=none,id=stick,format=raw,readonly=on",
                     "-device", "usb-storage,drive=stick,bus=xhci.0,bootindex=0"]
        else:
            argv += ["-drive", f"file={iso},if=none,id=cd,format=raw,media=cdrom,readonly=on",
                     "-device", "ide-cd,drive=cd,bootindex=0" if uefi else
                     "ide-cd,drive=cd,bus=ide.1,bootindex=0"]
    if cfg.network or isinstance(boot, NetBoot):
        netdev = "user,id=net0,restrict=on"
        for fwd in cfg.forwards:
            relay = f"{sys.executable} {Path(__file__).with_name('relay.py')} {fwd.host_port}"
            netdev += f",guestfwd=tcp:{GUEST_SERVER_IP}:{fwd.guest_port}-cmd:{relay}"
        nic = cfg.nic
        if isinstance(boot, NetBoot):
            netdev += f",tftp={boot.tftp_dir or image_dir() / 'pxe'},bootfile={boot.bootfile}"
            nic += ",bootindex=0"
        argv += ["-netdev", netdev, "-device", f"{nic},netdev=net0"]
    if cfg.share:
        argv += ["-virtfs", f"local,path={cfg.share},mount_tag=host,security_model=none,"
                            "readonly=on,id=host"]
    return argv


class VM:
    def __init__(self, cfg: VMConfig | None = None) -> None:
        self.cfg = cfg or VMConfig()
        log_dir = Path(os.environ.get("CDP_VM_LOG_DIR", tempfile.gettempdir() + "/cdp-vm-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = log_dir / f"{self.cfg.name}-{stamp}-{uuid.uuid4().hex[:6]}.log"
        self.ready: Ready | None = None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="cdp-vm-"))
        self._started = 0.0
        self._lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> VM:
        argv = qemu_argv(self.cfg, self._tmp)
        self._log = self.log_path.open("wb")
        self._log.write(("# " + " ".join(argv) + "\n").encode())
        self._started = time.monotonic()
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        threading.Thread(target=self._reader, daemon=True).start()
        return self

    def _reader(self) -> None:
        assert self._proc and self._proc.stdout
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            with self._cond:
                self._buf += chunk
                self._log.write(chunk)
                self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> VM:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.kill(keep_log=True)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.shutdown()
        else:
            self.kill(keep_log=True)

    @property
    def console(self) -> str:
        """Everything the serial console printed so far."""
        with self._cond:
            return self._buf.decode(errors="replace")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def shutdown(self, timeout: float = 60) -> None:
        """Power the guest off cleanly; kill QEMU if it does not stop in time."""
        if self.alive():
            self._send("sync; busybox poweroff -f\n")
            assert self._proc
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(keep_log=True)
                return
        self._close(keep_log=False)

    def kill(self, keep_log: bool = True) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close(keep_log)

    def _close(self, keep_log: bool) -> None:
        if self._proc and self._proc.stdin:
            self._proc.stdin.close()
        self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        if keep_log:
            print(f"VM console log kept: {self.log_path}", file=sys.stderr)
        else:
            self.log_path.unlink(missing_ok=True)

    # --- console -------------------------------------------------------------------------
    def _fail(self, message: str) -> VMError:
        return VMError(f"{message} (console log: {self.log_path})")

    def wait_for(self, pattern: re.Pattern[bytes], start: int = 0,
                 timeout: float = 120) -> re.Match[bytes]:
        """Wait until the console output from offset start matches pattern."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = pattern.search(self._buf, start)
                if match:
                    return match
                if not self.alive():
                    raise self._fail(f"QEMU exited while waiting for {pattern.pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"timed out after {timeout:.0f} s waiting for "
                                     f"{pattern.pattern!r}")
                self._cond.wait(min(left, 1.0))

    def elapsed(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self._started

    def wait_ready(self, timeout: float = 180) -> Ready:
        """Wait for the rescue init's CDP-RESCUE-READY line; returns it parsed."""
        match = self.wait_for(_READY, timeout=timeout)
        fields = dict(w.split("=", 1) for w in match.group(1).decode().split() if "=" in w)
        self.ready = Ready(fields, self.elapsed())
        return self.ready

    def _send(self, text: str) -> None:
        assert self._proc and self._proc.stdin
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def type(self, text: str, delay: float = 0.1) -> None:
        """Type on the serial console one key at a time, as a person would: GRUB on OVMF
        drops keys that arrive faster than it polls the serial port."""
        time.sleep(1)
        for key in text:
            self._send(key)
            time.sleep(delay)

    def grub_boot(self, append: str, timeout: float = 600) -> None:
        """Boot the ISO's kernel and initrd with these kernel options: at its GRUB menu,
        open GRUB's command line ('c') and type the commands, as an operator would."""
        self.wait_for(_GRUB_MENU, timeout=timeout)
        self._send("c")
        at = self.wait_for(_GRUB_PROMPT, timeout=120).end()
        for command in (f"linux /boot/vmlinuz {append}", "initrd /boot/initrd.img"):
            self.type(command + "\r")
            said = self.wait_for(_GRUB_SAID, at, timeout=timeout)
            if b"error:" in said.group(1):
                raise self._fail(f"GRUB: {command!r}: {said.group(1).decode(errors='replace')}")
            at = said.end()
        self.type("boot\r")  # typed too: sent at once, OVMF lost keys and GRUB ran "b"

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Run a shell command in the guest; returns (exit code, stdout+stderr)."""
        with self._lock:
            tag = uuid.uuid4().hex[:12]
            payload = base64.b64encode(command.encode()).decode()
            f = f"/tmp/.cdp-cmd-{tag}"
            lines = [f": > {f}.b64"]
            lines += [f"printf %s {payload[i:i + 512]} >> {f}.b64"
                      for i in range(0, len(payload), 512)]
            # The quotes split the markers in what is sent, so an echo of it never matches.
            lines.append(f"base64 -d {f}.b64 > {f}; echo __CDP_BEG''IN_{tag}; "
                         f"sh {f} < /dev/null 2>&1; echo __CDP_E''ND_{tag}_$?; rm -f {f} {f}.b64")
            with self._cond:
                start = len(self._buf)
            for line in lines:
                self._send(line + "\n")
            done = re.compile(rb"__CDP_BEGIN_" + tag.encode() + rb"\r?\n(.*?)__CDP_END_"
                              + tag.encode() + rb"_(\d+)\r?\n", re.S)
            try:
                match = self.wait_for(done, start, timeout)
            except VMError as exc:
                raise VMError(f"guest command {command!r}: {exc}") from None
            output = match.group(1).decode(errors="replace").replace("\r\n", "\n")
            return int(match.group(2)), output

    def check(self, command: str, timeout: float = 300) -> str:
        """Run a command; raise VMCommandFailed unless it exits 0. Returns its output."""
        code, output = self.run(command, timeout)
        if code != 0:
            raise VMCommandFailed(command, code, output)
        return output

    def put(self, guest_path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a small file in the guest (base64 through the console: keep it under a
        few MiB, or use VMConfig.share for bigger ones)."""
        tmp = f"{guest_path}.cdp-part"
        self.check(f": > '{tmp}'")
        encoded = base64.b64encode(data).decode()
        step = 48 * 1024
        for i in range(0, len(encoded), step):
            self.check(f"printf %s '{encoded[i:i + step]}' | base64 -d >> '{tmp}'")
        self.check(f"chmod {mode:o} '{tmp}' && mv '{tmp}' '{guest_path}'")


class Serial:
    """A full-screen program on the VM's serial console, read as text with the escape
    sequences removed (a repaint may put style changes inside a line) and driven by keys
    typed on the serial line."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def mark(self) -> int:
        """Where the console is now: wait_for(start=mark) ignores what was shown before."""
        with self.vm._cond:
            return len(self.vm._buf)

    def text(self, start: int = 0) -> str:
        with self.vm._cond:
            raw = bytes(self.vm._buf[start:])
        return _ESCAPES.sub(b"", raw).decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 300,
                 after: Callable[[str], bool] | None = None, start: int = 0) -> None:
        """Wait for text on the screen, or for `after` to accept all the text so far (from
        start)."""
        deadline = time.monotonic() + timeout
        while not (after(self.text(start)) if after else needle in self.text(start)):
            if not self.vm.alive() or time.monotonic() > deadline:
                raise self.vm._fail(f"{needle!r} did not appear on the serial console; it "
                                    f"ends with:\n{self.text()[-3000:]}\n")
            time.sleep(0.5)

    def quiet(self, start: int, seconds: float = 2, timeout: float = 60) -> None:
        """Wait until the screen changed after start and then stayed still for a while: a
        key whose effect shows no new text (a moved cursor or focus) has been handled. A
        blinking cursor (a focused text input) never lets it settle."""
        deadline = time.monotonic() + timeout
        size, since = start, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.mark()
            if now != size:
                size, since = now, time.monotonic()
            elif size > start and time.monotonic() - since >= seconds:
                return
        raise self.vm._fail(f"the console did not settle; it ends with:\n"
                            f"{self.text()[-3000:]}\n")

    def keys(self, data: str) -> None:
        """Send keys at once (a program that reads the tty raw gets them all)."""
        self.vm._send(data)
