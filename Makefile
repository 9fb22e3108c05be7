# Build, demo and test entry points. Everything a fresh Debian 12 machine needs
# is installed by these targets themselves (run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSDEPS_STAMP := $(VENV)/.sysdeps-stamp
DEPS_STAMP := $(VENV)/.deps-stamp
# Cache for the rescue image build (Debian packages, built rootfs); safe to delete.
IMAGE_CACHE ?= /var/cache/cdp-mkimage
OUT ?= out

# Debian packages: build deps of pyparted, tools the agent and rescue engine drive,
# what builds and boots the rescue image under QEMU, and btrfs-progs (a test mounts a
# multi-device btrfs).
SYSTEM_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libparted-dev \
	parted fdisk gdisk util-linux udev e2fsprogs dosfstools xfsprogs kmod cpio zstd \
	qemu-system-x86 qemu-utils ovmf ipxe-qemu mmdebstrap xorriso mtools \
	grub-pc-bin grub-efi-amd64-bin grub-common tmux openssl ca-certificates \
	restic borgbackup time thin-provisioning-tools lvm2 systemd \
	linux-perf faketime btrfs-progs

.PHONY: all demo test test-fast test-unit test-vm lint sysdeps deps iso pxe image drill drill-full bench torture clean

all: deps

$(SYSDEPS_STAMP):
	@mkdir -p $(VENV)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(SYSTEM_PACKAGES) 2>/dev/null | grep -v 'install ok installed' | cut -d' ' -f1; \
		           for p in $(SYSTEM_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
		missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
		if [ -n "$${missing// }" ]; then \
			echo "installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		fi; \
	else echo "not root or no apt-get: assuming system packages are present"; fi
	@touch $@

sysdeps: $(SYSDEPS_STAMP)

$(DEPS_STAMP): $(SYSDEPS_STAMP) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@

deps: $(DEPS_STAMP)

# The demo: sample disk image -> local CDP server -> several recovery points -> restore -> verify.
demo: deps
	$(VENV)/bin/cdp-demo

# The whole suite, QEMU tests included (builds the rescue image first, cached). Two
# workers: the QEMU tests in order on one, everything else on the other (tests/conftest.py).
test: deps image
	$(PY) -m pytest -q -n 2 --durations=15 tests

# Everything but the QEMU tests, on two workers.
test-fast: deps
	$(PY) -m pytest -q -n 2 -m "not vm" tests

# Under a minute: the shared core, the planning and format code and the agent's pipeline
# parts (few of them start a server; none a loop device or a VM).
UNIT_TESTS = tests/core tests/agent/test_changes.py tests/agent/test_era.py \
	tests/agent/test_lvm_layout.py tests/agent/test_pool_interrupt.py \
	tests/agent/test_scan_order.py tests/agent/test_seal_segment.py \
	tests/agent/test_transfer.py tests/image/test_bootopts.py tests/image/test_cachedir.py \
	tests/image/test_modules.py tests/rescue/test_datapath.py tests/rescue/test_plan.py \
	tests/rescue/test_stream.py tests/rescue/test_upgrade.py tests/tui/test_units.py
test-unit: deps
	$(PY) -m pytest -q -n 2 $(UNIT_TESTS)

test-vm: deps image
	$(PY) -m pytest -q -m vm tests

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy cdpcore hotcopy cdp_server rescue mkimage bench demo

# Kernel, initrd, hybrid ISO and PXE set (the boot tests and the drill use all of them);
# the Debian base is cached in $(IMAGE_CACHE), so a rebuild after a code change takes seconds.
image: deps
	$(VENV)/bin/mkimage build --cache $(IMAGE_CACHE) --out $(OUT) --iso --pxe

iso: deps
	$(VENV)/bin/mkimage build --cache $(IMAGE_CACHE) --out $(OUT) --iso

pxe: deps
	$(VENV)/bin/mkimage build --cache $(IMAGE_CACHE) --out $(OUT) --pxe

drill: deps image
	$(PY) -m pytest -q tests/drill

# The drill with every scenario, UEFI + NVMe and PXE network boot included (about 4 more minutes).
drill-full: deps image
	CDP_DRILL_FULL=1 $(PY) -m pytest -q tests/drill

bench: deps
	$(PY) -m bench

# Reliability suite: CDP_TORTURE_ITERATIONS=N scales every loop (default 1, the bounded
# CI run), CDP_TORTURE_SEED replays a run, CDP_TORTURE_REPORT=FILE collects the figures.
torture: deps
	CDP_TORTURE_ITERATIONS=$${CDP_TORTURE_ITERATIONS:-1} $(PY) -m pytest -q tests/reliability

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
