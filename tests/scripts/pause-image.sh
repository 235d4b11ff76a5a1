#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image offline: a static pause binary from
# tests/cri/pause.c (gcc -static) in an otherwise empty one-layer OCI archive.
#   pause-image.sh OUT.tar [IMAGE_NAME]
set -euo pipefail
out=$1
name=${2:-docker.io/library/kata-pause:latest}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs"
gcc -static -Os -s -o "$work/rootfs/pause" "$here/../cri/pause.c"
"$here/oci-archive.sh" "$work/rootfs" "$out" "$name" \
  '{"Entrypoint":["/pause"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}'
