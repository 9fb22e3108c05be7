"""mkimage: builds the bootable rescue image (kernel + layered initramfs, hybrid ISO, PXE set)
and, in `mkimage.qemu`, the QEMU harness the VM tests boot it with. docs/IMAGE.md."""
