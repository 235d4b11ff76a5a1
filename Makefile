# One entry point for set-up, build, guest image, demo, tests and benchmarks.
# Everything runs as root on Debian 12; `make deps` installs what is missing.

PREFIX      ?= /usr/local
BUILD       ?= $(CURDIR)/build
GUEST_OUT   ?= $(BUILD)/guest
CARGO       ?= cargo
SHIM        := target/shim/containerd-shim-kata-v2

.PHONY: all deps build image demo test unit-test integration-test cri-test install lint shellcheck bench clean fuzz fuzz-smoke fuzz-build

all: build image

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --profile shim -p containerd-shim-kata-v2

# Kernel + initramfs with the project's guest agent as PID 1.
image: deps
	GUEST_OUT=$(GUEST_OUT) guest/image/build.sh

# Runs a container in a VM through a private containerd and prints its output.
demo: build image
	BUILD=$(BUILD) $(CARGO) run --release -q -p integration-tests --bin kata-demo

# Every shell script the build, the image, the tests and CI run.
SHELL_SCRIPTS := .ci/run scripts/install-deps.sh guest/image/build.sh guest/image/build-kernel.sh \
                 $(wildcard tests/scripts/*.sh)

lint: deps shellcheck
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# SC2012 (ls in a pipe) is left out: build-kernel.sh sorts its cache by age
# with `ls -t` over hex key names, and a directive inside that script would
# change its kernel cache key (the script is hashed into it).
shellcheck:
	@command -v shellcheck >/dev/null || { echo "shellcheck missing: make deps" >&2; exit 1; }
	shellcheck -x -e SC2012 $(SHELL_SCRIPTS)

# Unit tests, plus the crates' own VM tests (they boot the guest image
# when KATA_GUEST_IMAGE_DIR is set).
unit-test: deps image
	KATA_GUEST_IMAGE_DIR=$(GUEST_OUT) $(CARGO) test --workspace --exclude integration-tests

# VM-booting tests against real containerd and QEMU (root).
integration-test: build image
	BUILD=$(BUILD) $(CARGO) test --release -p integration-tests -- --test-threads=1

# Only the CRI suite (containerd's CRI plugin, runtime handler kata); part of integration-test.
cri-test: build image
	BUILD=$(BUILD) $(CARGO) test --release -p integration-tests --test cri --test cri_stream --test cri_portforward -- --test-threads=1

test: unit-test integration-test fuzz-smoke

# Fuzzing (cargo-fuzz, nightly; fuzz/ is its own workspace). Every target
# runs FUZZ_SECONDS, one after the other, one job each; the corpus grows in
# fuzz/corpus/<target> (not committed), seeded from fuzz/seeds/<target>;
# crashes land in fuzz/artifacts/<target>.
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_SMOKE_RUNS ?= 20000
FUZZ_CARGO ?= cargo +nightly fuzz
# The instrumented build is the expensive part (every crate again with ASan
# and coverage): kept across clones, like the guest kernel's cache.
export CARGO_TARGET_DIR_FUZZ ?= /var/cache/kata-shim/fuzz-target

fuzz-build: deps
	cd fuzz && CARGO_TARGET_DIR=$(CARGO_TARGET_DIR_FUZZ) $(FUZZ_CARGO) build

fuzz: fuzz-build
	cd fuzz && for t in $$($(FUZZ_CARGO) list); do \
	  mkdir -p corpus/$$t seeds/$$t && \
	  CARGO_TARGET_DIR=$(CARGO_TARGET_DIR_FUZZ) $(FUZZ_CARGO) run $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

# A bounded run of every target for `make test`: seeds plus a few seconds.
fuzz-smoke: fuzz-build
	cd fuzz && for t in $$($(FUZZ_CARGO) list); do \
	  mkdir -p corpus/$$t seeds/$$t && \
	  CARGO_TARGET_DIR=$(CARGO_TARGET_DIR_FUZZ) $(FUZZ_CARGO) run $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SMOKE_SECONDS) -runs=$(FUZZ_SMOKE_RUNS) || exit 1; \
	done

# This runtime against runc and the VM floor, same machine, same run:
# writes $(BUILD)/bench/{report.md,report.json,scaling.svg}, prints the ratios.
bench: build image
	BUILD=$(BUILD) $(CARGO) run --release -q -p integration-tests --bin kata-bench -- --out $(BUILD)/bench

install: build image
	install -D -m 0755 $(SHIM) $(PREFIX)/bin/containerd-shim-kata-v2
	install -D -m 0644 $(GUEST_OUT)/vmlinux $(PREFIX)/share/kata-shim/vmlinux
	install -D -m 0644 $(GUEST_OUT)/initrd.img $(PREFIX)/share/kata-shim/initrd.img
	install -d /etc/kata-containers
	[ -e /etc/kata-containers/configuration.toml ] || \
	  sed -e 's|@ASSETS@|$(PREFIX)/share/kata-shim|g' -e 's|@BINDIR@|$(PREFIX)/bin|g' \
	    shim/configuration.toml.in > /etc/kata-containers/configuration.toml

clean:
	rm -rf $(BUILD)
