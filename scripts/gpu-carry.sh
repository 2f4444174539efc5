#!/bin/sh
# gpu-carry.sh — prepares .device-debs/, the build dependencies a bare GPU machine lacks, for
# benchmarks/gpu_check.sh to unpack there (it has CUDA, a C compiler, Python with meson and
# ninja, but no Debian -dev packages and no package registry).
#
# What the CUDA configuration of benchmarks/gpu_check.sh needs beyond the machine: jansson (the
# one library the core requires; headers, static and shared library) and pkgconf (so meson finds
# it through its .pc file). The service libraries, OpenBLAS and stb are configured out there.
# The packages come from this machine's apt sources as .deb files (apt-get download, no root
# needed) and are checked to unpack (dpkg -x) and to stay far under the 64 MiB a device call may
# carry. Run from the repository root; rerunning replaces the folder.
#
#   scripts/gpu-carry.sh            # writes .device-debs/*.deb and .device-debs/MANIFEST
set -eu

cd "$(dirname "$0")/.."
dir=.device-debs
pkgs="libjansson-dev libjansson4 pkgconf-bin libpkgconf3"
limit_kb=$((8 * 1024)) # far under the 64 MiB carry limit: the working tree travels too

command -v apt-get >/dev/null || { echo "gpu-carry: apt-get is needed (a Debian-family machine)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "gpu-carry: dpkg-deb is needed" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir"
(cd "$dir" && apt-get download $pkgs) || {
    echo "gpu-carry: apt-get download failed; run 'apt-get update' first (as root) and retry" >&2
    exit 1
}

# Every package unpacks, and together they hold what the build looks for.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
for deb in "$dir"/*.deb; do dpkg-deb -x "$deb" "$check"; done
for f in usr/include/jansson.h usr/bin/pkgconf; do
    [ -e "$check/$f" ] || { echo "gpu-carry: $f is missing from the packages" >&2; exit 1; }
done
ls "$check"/usr/lib/*/libjansson.a "$check"/usr/lib/*/pkgconfig/jansson.pc >/dev/null

size_kb=$(du -sk "$dir" | cut -f1)
[ "$size_kb" -le "$limit_kb" ] || { echo "gpu-carry: $dir is $size_kb KiB, over $limit_kb" >&2; exit 1; }
{
    echo "# packages for benchmarks/gpu_check.sh, from $(. /etc/os-release && echo "$PRETTY_NAME")"
    for deb in "$dir"/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' ' -; done
} >"$dir/MANIFEST"
cat "$dir/MANIFEST"
echo "gpu-carry: $dir ready ($size_kb KiB); name it in the device call's carry list"
