#!/usr/bin/env bash
# Packs a root filesystem directory into a one-layer OCI image archive, offline
# and reproducibly (sorted entries, mtime 0, owner 0:0):
#   oci-archive.sh ROOTFS OUT.tar IMAGE_NAME CONFIG_JSON
# CONFIG_JSON is the image config's "config" object, e.g. '{"Entrypoint":["/pause"]}'.
set -euo pipefail
root=$1 out=$2 name=$3 cfg=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

blobs=$work/image/blobs/sha256
mkdir -p "$blobs"
tar_det() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner "$@"; }
tar_det -C "$root" -cf "$work/layer.tar" .
blob() { local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$blobs/$h"; echo "$h"; }
size() { stat -c %s "$1"; }
layer=$(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}\n' \
  "$cfg" "$layer" > "$work/config.json"
config=$(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}\n' \
  "$config" "$(size "$work/config.json")" "$layer" "$(size "$work/layer.tar")" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"},"platform":{"architecture":"amd64","os":"linux"}}]}\n' \
  "$manifest" "$(size "$work/manifest.json")" "$name" "${name##*:}" > "$work/image/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/image/oci-layout"
mkdir -p "$(dirname "$out")"
tar_det -C "$work/image" -cf "$out" .
