#!/usr/bin/env bash
# Make (once) a minimal Debian root filesystem without Python, cached outside the repo:
#   ~/.cache/fgo/rootfs-<suite>   (suite: $1, default bookworm)
# Prints the rootfs path. Needs root (debootstrap, chroot); installs debootstrap from Debian's
# packages if it is missing.
set -euo pipefail
suite="${1:-bookworm}"
cache="${FGO_CACHE_DIR:-$HOME/.cache/fgo}"
rootfs="$cache/rootfs-$suite"
mirror="${FGO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ -f "$rootfs/.complete" ]]; then
  echo "$rootfs"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get install -y debootstrap >&2 || { apt-get update >&2 && apt-get install -y debootstrap >&2; }
fi
rm -rf "$rootfs.tmp"
mkdir -p "$cache"
# minbase: essential packages + apt only; no python.
debootstrap --variant=minbase "$suite" "$rootfs.tmp" "$mirror" >&2
rm -rf "$rootfs"
mv "$rootfs.tmp" "$rootfs"
touch "$rootfs/.complete"
echo "$rootfs"
