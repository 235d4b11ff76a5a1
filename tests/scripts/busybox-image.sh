#!/usr/bin/env bash
# Builds a small OCI image archive from Debian's busybox-static, offline:
#   busybox-image.sh OUT.tar [IMAGE_NAME]
# The image holds /etc/kata-test-marker, a file only this image has.
set -euo pipefail
out=$1
name=${2:-docker.io/library/kata-busybox:latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,var}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
echo "kata-busybox image marker" > "$root/etc/kata-test-marker"
# More files for derived test images (netadmin-image.sh): copied over the root.
if [ -n "${BUSYBOX_IMAGE_EXTRA:-}" ]; then cp -a "$BUSYBOX_IMAGE_EXTRA/." "$root/"; fi
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
chmod 1777 "$root/tmp"

blobs=$work/image/blobs/sha256
mkdir -p "$blobs"
tar_det() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner "$@"; }
tar_det -C "$root" -cf "$work/layer.tar" .
blob() { # file -> prints digest hex, stores blob
  local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$blobs/$h"; echo "$h"
}
size() { stat -c %s "$1"; }
layer=$(blob "$work/layer.tar")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(blob "$work/config.json")
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$work/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$(size "$work/layer.tar")}]}
JSON
manifest=$(blob "$work/manifest.json")
cat > "$work/image/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$(size "$work/manifest.json"),"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"latest"},"platform":{"architecture":"amd64","os":"linux"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/image/oci-layout"
mkdir -p "$(dirname "$out")"
tar_det -C "$work/image" -cf "$out" .
