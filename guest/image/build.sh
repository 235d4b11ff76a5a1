#!/usr/bin/env bash
# Builds the guest image: a kernel and an initramfs whose /init is the
# project's static guest agent.
#
# GUEST_KERNEL picks the kernel:
#   project (default)  built from Debian's kernel source with guest/image/kernel/guest.config,
#                      every driver built in (build-kernel.sh; cached outside the repo)
#   debian             Debian's binary linux-image-amd64 (vmlinux extracted from its vmlinuz),
#                      with the virtio/vsock/fs modules in the initramfs
#
# Outputs in $GUEST_OUT: vmlinuz, vmlinux, kernel-release, initrd.img.
# Reproducible: same kernel + same agent binary = same initrd bytes.
# Skips work whose outputs are newer than their inputs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GUEST_OUT=${GUEST_OUT:-$ROOT/build/guest}
CACHE=${GUEST_CACHE:-$ROOT/build/cache/guest}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_GUEST:-$ROOT/target/guest}
TARGET=x86_64-unknown-linux-gnu
GUEST_KERNEL=${GUEST_KERNEL:-project}
AGENT=$CARGO_TARGET_DIR/$TARGET/guest/kata-agent
# Modules the agent needs; their dependencies are added by resolving modules.dep.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
         fuse virtiofs overlay)
# microvm's virtio-mmio transport (before the vsock chain: load order follows this list).
MODULES=("${MODULES[@]:0:5}" virtio_mmio "${MODULES[@]:5}")
# Entropy (virtio-rng), the 9p shared fs (no host daemon), the pod's NIC
# (virtio-net) and free page reporting (virtio-balloon); loaded in the background.
MODULES+=(virtio-rng 9pnet_virtio 9p virtio_net virtio_balloon)
# pvpanic: QEMU's ISA `pvpanic` device is the ACPI device QEMU0001 (an I/O
# port), driven by pvpanic-mmio; a kernel panic then reaches the host as the
# QMP event GUEST_PANICKED instead of a silent reboot.
MODULES+=(pvpanic-mmio)
# Directories the agent mounts on or writes to.
DIRS=(dev proc sys run tmp etc lib/modules)
# Fixed timestamp for every initrd entry (reproducibility).
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

log() { echo "guest-image: $*" >&2; }
mkdir -p "$GUEST_OUT" "$CACHE"

# 1. The static agent (cargo itself decides whether anything changed).
# Non-PIE: at fixed addresses the container helper (the agent re-executed)
# reuses the code QEMU's TCG already translated for the agent (translations
# are keyed by virtual address), and skips self-relocation; under TCG that
# took the helper's start from 61 to 11 ms.
log "building static kata-agent"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --quiet --profile guest -p kata-agent --target "$TARGET")
file -b "$AGENT" 2>/dev/null | grep -q "static" || {
  # `file` may be missing; ldd says "not a dynamic executable" for static ones.
  ldd "$AGENT" 2>&1 | grep -qE "not a dynamic|statically linked" || { log "agent is not static"; exit 1; }
}

# 2. The kernel.
case $GUEST_KERNEL in
(project)
  GUEST_OUT=$GUEST_OUT "$ROOT/guest/image/build-kernel.sh"
  release=$(cat "$GUEST_OUT/kernel-release")
  MODULES=()
  kernel_stamp=$GUEST_OUT/vmlinux
  ;;
(debian)
  # The kernel package: the one linux-image-amd64 depends on.
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$kpkg" ] || { log "cannot resolve the kernel package"; exit 1; }
  release=${kpkg#linux-image-}
  deb=$(find "$CACHE" -maxdepth 1 -name "${kpkg}_*.deb" 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "downloading $kpkg"
    (cd "$CACHE" && { apt-get download "$kpkg" 2>/dev/null || { apt-get update -qq && apt-get download "$kpkg"; }; })
    deb=$(find "$CACHE" -maxdepth 1 -name "${kpkg}_*.deb" | head -n1)
  fi
  tree=$CACHE/tree-$release
  if [ ! -e "$tree/.done" ] || [ "$deb" -nt "$tree/.done" ]; then
    log "extracting $(basename "$deb")"
    rm -rf "$tree" && mkdir -p "$tree"
    dpkg-deb -x "$deb" "$tree"
    depmod -b "$tree" "$release"
    touch "$tree/.done"
  fi

  # vmlinuz, vmlinux (ELF from the XZ payload: boots via PVH, ~2x faster under TCG).
  # (Re)install when GUEST_OUT holds another kernel (e.g. the project's).
  [ "$(cat "$GUEST_OUT/.kernel" 2>/dev/null)" = "debian $release" ] || rm -f "$GUEST_OUT/vmlinuz"
  if [ ! -e "$GUEST_OUT/vmlinuz" ] || [ "$tree/.done" -nt "$GUEST_OUT/vmlinuz" ]; then
    install -m 0644 "$tree/boot/vmlinuz-$release" "$GUEST_OUT/vmlinuz"
  fi
  if [ ! -e "$GUEST_OUT/vmlinux" ] || [ "$GUEST_OUT/vmlinuz" -nt "$GUEST_OUT/vmlinux" ] ||
     [ "$ROOT/guest/image/trim-elf.py" -nt "$GUEST_OUT/vmlinux" ] ||
     [ "$ROOT/guest/image/pack-elf.py" -nt "$GUEST_OUT/vmlinux" ]; then
    log "extracting vmlinux"
    off=$(LC_ALL=C grep -obUaP '\xFD\x37\x7A\x58\x5A\x00' "$GUEST_OUT/vmlinuz" | head -n1 | cut -d: -f1)
    [ -n "$off" ] || { log "no XZ payload in vmlinuz"; exit 1; }
    tail -c +"$((off + 1))" "$GUEST_OUT/vmlinuz" | xz -dc 2>/dev/null >"$GUEST_OUT/vmlinux.tmp" || true
    [ "$(head -c4 "$GUEST_OUT/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = "7f454c46" ] ||
      { log "extracted payload is not an ELF"; rm -f "$GUEST_OUT/vmlinux.tmp"; exit 1; }
    # Trailing zeros of each segment become zero-fill: QEMU keeps less per VM.
    python3 "$ROOT/guest/image/trim-elf.py" "$GUEST_OUT/vmlinux.tmp" >&2
    # Segments packed without the 2 MiB file padding: QEMU maps less of the file.
    python3 "$ROOT/guest/image/pack-elf.py" "$GUEST_OUT/vmlinux.tmp" "$GUEST_OUT/vmlinux"
    rm -f "$GUEST_OUT/vmlinux.tmp"
  fi
  echo "$release" >"$GUEST_OUT/kernel-release"
  rm -f "$GUEST_OUT/kernel.config"
  kernel_stamp=$tree/.done
  ;;
(*) log "GUEST_KERNEL=$GUEST_KERNEL: expected project or debian"; exit 1 ;;
esac
echo "$GUEST_KERNEL $release" >"$GUEST_OUT/.kernel"

# 3. The initramfs (modules only for Debian's kernel: the project's has everything built in).
initrd=$GUEST_OUT/initrd.img
if [ -e "$initrd" ] && [ "$initrd" -nt "$AGENT" ] && [ "$initrd" -nt "$kernel_stamp" ] &&
   [ "$initrd" -nt "$0" ] && [ "$(cat "$GUEST_OUT/.initrd-kernel" 2>/dev/null)" = "$GUEST_KERNEL $release" ]; then
  log "initrd.img up to date ($(stat -c %s "$initrd") bytes)"
  exit 0
fi

# Resolve the module set in dependency order (dependencies first) from modules.dep.
declare -A seen=()
order=()
resolve() { # name
  local name=$1 path deps d
  path=$(modinfo -b "$tree" -k "$release" -F filename "$name" 2>/dev/null | head -n1) ||
    { log "module $name not found"; exit 1; }
  [ -n "$path" ] || { log "module $name not found"; exit 1; }
  case $path in (builtin*) return ;; esac
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  deps=$(modinfo -b "$tree" -k "$release" -F depends "$name" | tr ',' ' ')
  for d in $deps; do resolve "$d"; done
  order+=("$path")
}
for m in "${MODULES[@]}"; do resolve "$m"; done

stage=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
for d in "${DIRS[@]}"; do mkdir -p "$stage/$d"; done
install -m 0755 "$AGENT" "$stage/init"
# The debug console's shell (`[agent.kata] debug_console_enabled`): a static
# busybox with every applet linked in /bin.
BUSYBOX=${GUEST_BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { log "$BUSYBOX is missing (apt-get install busybox-static)"; exit 1; }
mkdir -p "$stage/bin"
install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done
: >"$stage/lib/modules/load-order"
for p in "${order[@]}"; do
  base=$(basename "$p")
  case $base in
    (*.ko.xz) xz -dc "$p" >"$stage/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    (*.ko.zst) zstd -qdc "$p" >"$stage/lib/modules/${base%.zst}"; base=${base%.zst} ;;
    (*) cp "$p" "$stage/lib/modules/$base" ;;
  esac
  echo "/lib/modules/$base" >>"$stage/lib/modules/load-order"
done
echo "$release" >"$stage/etc/kernel-release"
chmod -R u=rwX,go=rX "$stage"
find "$stage" -exec touch -h -d "@$EPOCH" {} +

# Uncompressed by default: measured under TCG (2 vCPUs), gzip -9 (4.6 -> 1.7 MB)
# made no difference to launch-to-agent-ready (~2.4 s either way); set
# GUEST_INITRD_GZIP=1 to compress anyway.
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
  cpio --quiet -o -H newc --reproducible -R 0:0) >"$initrd.tmp"
if [ "${GUEST_INITRD_GZIP:-0}" = 1 ]; then
  gzip -n -9 <"$initrd.tmp" >"$initrd.tmp.gz" && mv "$initrd.tmp.gz" "$initrd.tmp"
fi
mv "$initrd.tmp" "$initrd"
echo "$GUEST_KERNEL $release" >"$GUEST_OUT/.initrd-kernel"
log "modules: $(sed 's|.*/||' "$stage/lib/modules/load-order" | tr '\n' ' ')"
log "initrd.img: $(stat -c %s "$initrd") bytes"
