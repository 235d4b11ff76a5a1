#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 host, skipping what is there.
# Debian packages with apt-get; helper daemons with `cargo install --locked` at pinned versions.
set -euo pipefail

VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
# `make fuzz` / `make fuzz-smoke` (built with the nightly toolchain).
CARGO_FUZZ_VERSION=0.13.2
PKGS=(qemu-system-x86 containerd runc busybox-static cpio kmod xz-utils zstd
      libseccomp-dev libcap-ng-dev pkg-config iproute2 python3
      containernetworking-plugins iptables docker-registry skopeo protobuf-compiler gcc libc6-dev
      # `make lint` checks the shell scripts.
      shellcheck
      # The guest kernel (guest/image/build-kernel.sh): Debian's source and its build tools.
      linux-source-6.1 make bc bison flex libelf-dev libssl-dev binutils)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have_version() { # binary version
  command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -q "$2"
}
if ! have_version /usr/local/bin/vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION"; then
  cargo install --locked --root /usr/local vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION"
fi
if ! have_version /usr/local/bin/virtiofsd "$VIRTIOFSD_VERSION"; then
  cargo install --locked --root /usr/local virtiofsd --version "$VIRTIOFSD_VERSION"
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
