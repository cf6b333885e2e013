# Aurae appliance. The two commands: `make run` and `make test` (see README.md).
SHELL := /bin/bash
BUILD := $(CURDIR)/build
# Build caches, kept across `make clean`: the kernels (kernel/build.sh, by content hash,
# shared by every checkout) and Cargo's target directory, one per checkout path. Not one
# for all checkouts: Cargo names a workspace's own crates by their path inside it and
# decides freshness by file times, so two checkouts building into one directory can take
# each other's generated code (a proto one of them changed) as fresh. A fresh machine
# builds everything; a new clone at a path used before reuses that path's directory.
export AURAE_CACHE ?= $(HOME)/.cache/aurae
export CARGO_TARGET_DIR ?= $(AURAE_CACHE)/targets/$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-12)
PORT  ?= 8443
APT_PACKAGES := qemu-system-x86 linux-source-6.1 flex bison bc libelf-dev libssl-dev \
                musl-tools cpio zstd busybox-static iproute2 binutils file crun \
                ca-certificates docker-registry skopeo umoci python3 tmux e2fsprogs \
                dnsmasq-base ipxe-qemu openssl ipxe ovmf systemd-boot-efi mtools dosfstools \
                fdisk shellcheck python3-pip sbsigntool python3-prometheus-client
KCONFIGLIB := kconfiglib==14.1.0

.PHONY: deps build kernel kernel-metal pki image uefi pxe run stop test test-host test-buildroot \
        test-appliance bench soak lint clean

# Installs what the build needs (Debian 12, as root). Quick when everything is present.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "deps: cargo (rustup) is required" >&2; exit 1; }

build: deps
	init/build-static.sh $(BUILD)/bin

kernel: deps
	kernel/build.sh $(BUILD)/kernel

# The metal flavor (UEFI, real NICs and disks, a screen): kernel/aurae.config + metal.config.
kernel-metal: deps
	kernel/build.sh $(BUILD)/kernel-metal metal

# The deployment's PKI: CA, node certificate, the admin client certificate and the policy
# (client/admin is admin). Kept across rebuilds; `make clean` removes it.
pki: build
	@[ -f $(BUILD)/pki/ca.key ] || $(BUILD)/bin/auraed pki init $(BUILD)/pki
	@[ -f $(BUILD)/pki/spawn-ca.key ] || $(BUILD)/bin/auraed pki spawn-ca $(BUILD)/pki
	@[ -f $(BUILD)/pki/policy.toml ] || $(BUILD)/bin/auraed pki grant $(BUILD)/pki spiffe://aurae.local/client/admin admin
	@printf 'address = "127.0.0.1:%s"\nca = "pki/ca.crt"\ncert = "pki/client.crt"\nkey = "pki/client.key"\nserver_name = "localhost"\n' $(PORT) > $(BUILD)/aer.toml

image: build kernel pki
	rootfs/pack.sh $(BUILD)
	@echo "image: kernel $$(stat -c %s $(BUILD)/kernel/bzImage) B + initramfs (base+pki) $$(cat $(BUILD)/initramfs/{base,pki}.cpio.zst | wc -c) B"

# UEFI media: a Unified Kernel Image, an ESP image and a raw USB stick image (build/uefi/).
# make uefi NODE=name gives them node NAME's own identity.
uefi: image kernel-metal
	rootfs/uefi.sh $(BUILD) $(BUILD)/uefi

# A network boot directory for a fleet: make pxe NODES="52:54:00:00:00:01=node-1 ..."
pxe: image kernel-metal
	rootfs/pxe.sh $(BUILD) $(BUILD)/pxe $(NODES)

# Boots the appliance in the background, waits until it serves, and shows how to use it.
run: image
	@mkdir -p $(BUILD)/run
	@if [ -f $(BUILD)/run/qemu.pid ] && kill -0 $$(cat $(BUILD)/run/qemu.pid) 2>/dev/null; then \
	  echo "run: already running (make stop first)"; exit 1; fi
	@PORT=$(PORT) setsid qemu/run > $(BUILD)/run/console.log 2>&1 < /dev/null & echo $$! > $(BUILD)/run/qemu.pid
	@echo "run: booting (console: $(BUILD)/run/console.log)"
	@for i in $$(seq 1 240); do \
	  $(BUILD)/bin/aer --config $(BUILD)/aer.toml --timeout 0.5 health >/dev/null 2>&1 && break; \
	  kill -0 $$(cat $(BUILD)/run/qemu.pid) 2>/dev/null || { echo "run: QEMU exited"; tail -30 $(BUILD)/run/console.log; exit 1; }; \
	  sleep 0.5; done
	@$(BUILD)/bin/aer --config $(BUILD)/aer.toml node info
	@echo; echo "The appliance is serving. Try:"; \
	echo "  export AURAE_CONFIG=$(BUILD)/aer.toml PATH=$(BUILD)/bin:\$$PATH"; \
	echo "  aer health"; echo "  aer node info --json"; \
	echo "  aer exec hello -f -- /bin/sh -c 'echo hello from cell \$$(hostname); ls /proc'"; \
	echo "  aer cell create web --memory-max 64M --pids-max 100 && aer exec srv --cell web -- /bin/sleep 1000"; \
	echo "  aer ps; aer cell status web"; \
	echo "  aer node shutdown     # or: make stop"

stop:
	@$(BUILD)/bin/aer --config $(BUILD)/aer.toml node shutdown || { [ -f $(BUILD)/run/qemu.pid ] && kill $$(cat $(BUILD)/run/qemu.pid); }
	@rm -f $(BUILD)/run/qemu.pid

# --all-features: the bench drivers' own unit tests (make soak's pass line and plot) run too.
test-host: deps
	cargo test --workspace --locked --exclude aurae-appliance-tests --all-features

# The buildroot/ tree, checked offline (no Buildroot source is reachable here): kconfiglib
# from PyPI parses it, and its post-image script must make make image's layers, byte for byte.
test-buildroot: image
	@[ -f $(BUILD)/pylib/kconfiglib.py ] || python3 -m pip install --quiet --disable-pip-version-check \
	  --root-user-action=ignore --target $(BUILD)/pylib $(KCONFIGLIB)
	PYTHONPATH=$(BUILD)/pylib python3 tests/buildroot/check.py $(BUILD)

# Boots the real image under QEMU (TCG) and drives the real API. Never skipped here.
# Two test binaries at a time (tests/appliance.sh says why); LANES=1 for one at a time.
LANES ?= 2
test-appliance: image uefi
	tests/appliance.sh $(BUILD) $(LANES)

# Every tier, each phase timed (tests/all.sh: the kernels build beside the first phases).
test:
	tests/all.sh $(BUILD)

bench: image uefi
	rootfs/pack-bench.sh $(BUILD)
	tests/bench.sh $(BUILD)

# An hour of mixed churn after a load part, on one boot: the node sampled every minute, a plot
# (build/soak/soak.svg) and a pass line (tests/soak.sh, docs/soak.md). Not part of make test.
soak: image
	rootfs/pack-bench.sh $(BUILD)
	tests/soak.sh $(BUILD)

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
	python3 tests/lint/structure.py

clean:
	rm -rf $(BUILD)
