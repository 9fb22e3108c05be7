"""What goes into the rescue image: Debian packages, the curated kernel modules, the Python
dependencies. Everything here feeds the base layer's cache key (mkimage.base), so a change
here rebuilds the base; a change to the project's code only rebuilds the small project layer."""

from __future__ import annotations

SUITE = "bookworm"
ARCH = "amd64"

#: Debian packages of the rescue root (variant "essential" adds dpkg, dash, coreutils, ...).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64", "kmod", "busybox", "udev",
    "lvm2", "thin-provisioning-tools", "mdadm",
    "util-linux", "mount", "fdisk", "gdisk", "parted",
    "e2fsprogs", "xfsprogs", "dosfstools",
    "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common", "efibootmgr",
    "iproute2", "openssh-client", "ca-certificates", "procps", "less",
    "python3", "python3-parted",
)

#: dpkg never unpacks these: a rescue system needs no documentation or translations.
DPKG_EXCLUDES: tuple[str, ...] = (
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
    "/usr/share/lintian/*", "/usr/share/linda/*", "/usr/share/bug/*",
)

#: Removed from the root after installation (caches, package lists, the kernel image itself,
#: which is shipped beside the initrd, not inside it).
STRIP_PATHS: tuple[str, ...] = (
    "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old",
    "var/log", "boot", "usr/share/i18n", "usr/share/zoneinfo/right",
    "usr/share/zoneinfo/posix", "usr/share/common-licenses",
)

#: Kernel module directories (relative to /lib/modules/VERSION/kernel) kept in the image;
#: their dependencies (modules.dep) come along. Storage, NICs, device-mapper, md, filesystems.
MODULE_DIRS: tuple[str, ...] = (
    "drivers/nvme", "drivers/ata", "drivers/scsi", "drivers/message/fusion",
    "drivers/block", "drivers/md", "drivers/virtio", "drivers/char/virtio_console.ko",
    "drivers/usb/storage", "drivers/usb/host", "drivers/hid/usbhid", "drivers/hid/hid-generic.ko",
    "drivers/net/ethernet/intel", "drivers/net/ethernet/broadcom",
    "drivers/net/ethernet/mellanox", "drivers/net/ethernet/realtek",
    "drivers/net/virtio_net.ko", "drivers/net/vmxnet3",
    "drivers/firmware/efi", "drivers/cdrom",
    "net/8021q", "net/9p", "net/packet",
    "fs/ext4", "fs/xfs", "fs/fat", "fs/btrfs", "fs/isofs", "fs/9p", "fs/nls", "fs/efivarfs",
    "fs/jbd2", "fs/mbcache.ko", "fs/squashfs",
    "crypto", "arch/x86/crypto", "lib",
)

#: Kernel module directories never kept even below a MODULE_DIRS entry (Fibre Channel and
#: FCoE stacks: large, and a rescue image restores onto local disks).
MODULE_EXCLUDES: tuple[str, ...] = (
    "drivers/scsi/qla2xxx", "drivers/scsi/lpfc", "drivers/scsi/bnx2fc", "drivers/scsi/qedf",
    "drivers/scsi/fcoe", "drivers/scsi/qla4xxx", "drivers/scsi/bfa", "drivers/scsi/csiostor",
)

#: Where Python dependencies installed from wheels live inside the image (on Debian's
#: sys.path ahead of /usr/lib/python3/dist-packages).
SITE_DIR = "usr/local/lib/python3.11/dist-packages"
#: The project's packages that go into the image (cdp_server is not needed there).
PROJECT_PACKAGES: tuple[str, ...] = ("cdpcore", "hotcopy", "rescue")
#: Console scripts of the image (names from pyproject's [project.scripts]).
PROJECT_SCRIPTS: tuple[str, ...] = ("rescue", "cdp-agent")
#: pyparted comes from Debian (python3-parted): it needs libparted, not a wheel.
PIP_SKIP: tuple[str, ...] = ("pyparted",)
