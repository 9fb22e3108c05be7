"""Kernel module curation: wanted directories plus their dependencies, nothing else."""

from __future__ import annotations

from mkimage.modules import select_modules

DEP = """\
kernel/drivers/md/dm-era.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/persistent-data/dm-persistent-data.ko: kernel/drivers/md/dm-bufio.ko kernel/lib/libcrc32c.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
kernel/lib/libcrc32c.ko:
kernel/drivers/gpu/drm/drm.ko: kernel/drivers/video/fb.ko
kernel/drivers/video/fb.ko:
kernel/drivers/scsi/qla2xxx/qla2xxx.ko: kernel/drivers/scsi/scsi_transport_fc.ko
kernel/drivers/scsi/scsi_transport_fc.ko:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz
kernel/drivers/net/net_failover.ko.xz:
kernel/drivers/net/virtio_netx.ko:
updates/dkms/extra.ko:
"""


def test_dependencies_come_along() -> None:
    keep = select_modules(DEP, ["drivers/md"], [])
    assert keep == {
        "kernel/drivers/md/dm-era.ko", "kernel/drivers/md/persistent-data/dm-persistent-data.ko",
        "kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-mod.ko",
        "kernel/lib/libcrc32c.ko", "updates/dkms/extra.ko",
    }


def test_single_files_excludes_and_compressed_names() -> None:
    keep = select_modules(DEP, ["drivers/scsi", "drivers/net/virtio_net.ko"],
                          ["drivers/scsi/qla2xxx"])
    assert keep == {
        "kernel/drivers/scsi/scsi_transport_fc.ko", "kernel/drivers/net/virtio_net.ko.xz",
        "kernel/drivers/net/net_failover.ko.xz", "updates/dkms/extra.ko",
    }
