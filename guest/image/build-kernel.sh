#!/usr/bin/env bash
# Builds the project's guest kernel from Debian's kernel source package
# (linux-source-6.1): allnoconfig + guest/image/kernel/guest.config, every
# driver built in, no modules. Booted by PVH from the ELF `vmlinux`.
#
# Outputs in $GUEST_OUT: vmlinux (zero tails trimmed), vmlinuz (bzImage),
# kernel-release, kernel.config.
#
# The result is cached outside the repository, keyed by the source package's
# version, the fragment, this script, trim-elf.py, pack-elf.py and the compiler, in
# ${GUEST_KERNEL_CACHE:-/var/cache/kata-shim/guest-kernel}/<key>/: a clean
# clone on the same machine copies it instead of compiling (4-8 min on 2 cores).
# The newest KEEP_CACHED (4) entries are kept.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/guest/image
GUEST_OUT=${GUEST_OUT:-$ROOT/build/guest}
WORK=${GUEST_KERNEL_WORK:-$ROOT/build/cache/kernel}
KCACHE=${GUEST_KERNEL_CACHE:-/var/cache/kata-shim/guest-kernel}
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/$SRC_PKG.tar.xz
FRAGMENT=$HERE/kernel/guest.config
JOBS=${GUEST_KERNEL_JOBS:-$(nproc)}

log() { echo "guest-kernel: $*" >&2; }
mkdir -p "$GUEST_OUT" "$WORK"

if [ ! -e "$SRC_TAR" ]; then
  log "installing $SRC_PKG"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$SRC_PKG" bc bison flex libelf-dev libssl-dev >/dev/null
fi
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")

# Cache key: everything that decides the bytes of the kernel.
key=$( {
  echo "$SRC_PKG $src_version"
  for f in "$FRAGMENT" "$0" "$HERE/trim-elf.py" "$HERE/pack-elf.py"; do sha256sum <"$f"; done
  gcc --version | head -n1
  ld --version | head -n1
} | sha256sum | cut -c1-16)
cached=$KCACHE/$key
outputs=(vmlinux vmlinuz kernel-release kernel.config)

install_outputs() { # from-dir
  local f
  for f in "${outputs[@]}"; do
    # Copy only what changed: later steps compare modification times.
    cmp -s "$1/$f" "$GUEST_OUT/$f" 2>/dev/null || install -m 0644 "$1/$f" "$GUEST_OUT/$f"
  done
}

if [ -e "$cached/.done" ]; then
  log "cached $(cat "$cached/kernel-release") ($cached)"
  install_outputs "$cached"
  exit 0
fi

# Source tree, extracted once per source package version (incremental builds
# when only the fragment changes).
tree=$WORK/$SRC_PKG
if [ ! -e "$WORK/.src-$src_version" ]; then
  log "extracting $SRC_TAR ($src_version)"
  rm -rf "$tree" "$WORK"/.src-*
  tar -C "$WORK" -xf "$SRC_TAR"
  touch "$WORK/.src-$src_version"
fi

# Reproducible build: fixed timestamp, user, host, version counter.
export KBUILD_BUILD_TIMESTAMP="@${SOURCE_DATE_EPOCH:-1700000000}"
export KBUILD_BUILD_USER=kata-shim KBUILD_BUILD_HOST=kata-shim KBUILD_BUILD_VERSION=1
export ARCH=x86_64
kmake() { make -C "$tree" -s --no-print-directory "$@"; }

# allnoconfig with the fragment as the fixed answers (merge_config.sh -n),
# then every line of the fragment must have survived.
log "configuring (allnoconfig + $(basename "$FRAGMENT"))"
(cd "$tree" && scripts/kconfig/merge_config.sh -n "$FRAGMENT" >"$WORK/merge.log" 2>&1) ||
  { cat "$WORK/merge.log" >&2; log "merge_config.sh failed"; exit 1; }
kmake olddefconfig
bad=0
while IFS= read -r line; do
  case $line in
    (CONFIG_*=*)
      grep -qxF "$line" "$tree/.config" ||
        { log "fragment line lost: $line (got: $(grep -E "^${line%%=*}=|^# ${line%%=*} is not set" "$tree/.config" || echo absent))"; bad=1; } ;;
    ("# CONFIG_"*" is not set")
      sym=${line#"# "}; sym=${sym%% *}
      ! grep -q "^$sym=" "$tree/.config" ||
        { log "fragment line lost: $line (got: $(grep "^$sym=" "$tree/.config"))"; bad=1; } ;;
  esac
done <"$FRAGMENT"
[ "$bad" = 0 ] || { log "fix $FRAGMENT (a dependency is missing or the option is gone)"; exit 1; }

log "compiling with $JOBS jobs (from scratch: 4-8 min on 2 cores)"
t0=$(date +%s)
kmake -j"$JOBS" vmlinux bzImage >"$WORK/build.log" 2>&1 ||
  { tail -n 40 "$WORK/build.log" >&2; log "kernel build failed (log: $WORK/build.log)"; exit 1; }
log "compiled in $(( $(date +%s) - t0 )) s"

stage=$(mktemp -d "$WORK/out.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# Symbols are not loaded (System.map-like names stay in kallsyms); then zero
# tails of the segments become zero-fill, so QEMU keeps less (trim-elf.py),
# and the segments are packed without the 2 MiB file padding (pack-elf.py).
strip --strip-all -o "$stage/vmlinux.full" "$tree/vmlinux"
python3 "$HERE/trim-elf.py" "$stage/vmlinux.full" >&2
python3 "$HERE/pack-elf.py" "$stage/vmlinux.full" "$stage/vmlinux"
rm "$stage/vmlinux.full"
cp "$tree/arch/x86/boot/bzImage" "$stage/vmlinuz"
kmake kernelrelease >"$stage/kernel-release"
cp "$tree/.config" "$stage/kernel.config"
touch "$stage/.done"

# Publish to the machine-wide cache (atomic rename), then to GUEST_OUT.
if mkdir -p "$KCACHE" 2>/dev/null && [ -w "$KCACHE" ]; then
  tmp=$(mktemp -d "$KCACHE/.tmp.XXXXXX")
  cp -a "$stage/." "$tmp/"
  mv -T "$tmp" "$cached" 2>/dev/null || rm -rf "$tmp"   # another build won the race
  log "cached in $cached"
  # Older keys (another fragment, another source version) beyond the newest few go.
  ls -1dt "$KCACHE"/*/ 2>/dev/null | tail -n +"$(( ${KEEP_CACHED:-4} + 1 ))" | xargs -r rm -rf
fi
install_outputs "$stage"
log "$(cat "$stage/kernel-release"): vmlinux $(stat -c %s "$stage/vmlinux") bytes"
