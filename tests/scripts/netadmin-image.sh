#!/usr/bin/env bash
# The busybox test image plus iptables (nft and legacy backends) from the
# host's Debian package, with the libraries and xtables extensions it loads:
#   netadmin-image.sh OUT.tar [IMAGE_NAME]
# For tests of what a NET_ADMIN container does with the guest kernel
# (bridges with busybox's brctl, firewall rules with iptables).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
name=${2:-docker.io/library/kata-netadmin:latest}
extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
[ -x /usr/sbin/xtables-nft-multi ] || { echo "netadmin-image: install Debian's iptables" >&2; exit 1; }
mkdir -p "$extra/usr/sbin" "$extra/usr/lib/x86_64-linux-gnu/xtables"
for bin in xtables-nft-multi xtables-legacy-multi; do
  cp /usr/sbin/$bin "$extra/usr/sbin/"
  # Every library the binaries load, at the same path.
  ldd /usr/sbin/$bin | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$extra$(dirname "$lib")"
    cp -L "$lib" "$extra$lib"
  done
done
cp /usr/lib/x86_64-linux-gnu/xtables/*.so "$extra/usr/lib/x86_64-linux-gnu/xtables/"
for n in iptables iptables-save iptables-restore ip6tables; do
  ln -s xtables-nft-multi "$extra/usr/sbin/$n"
done
ln -s xtables-legacy-multi "$extra/usr/sbin/iptables-legacy"
BUSYBOX_IMAGE_EXTRA=$extra "$here/busybox-image.sh" "$out" "$name"
