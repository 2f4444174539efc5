#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build (release, in build/), and run
# `flashlora demo` in the current directory: train an adapter on a bundled subject with the
# embedded model, register it with a locally started service, generate the same images with and
# without it, and write them side by side as flashlora-demo-<subject>.png. Arguments go to the
# demo (e.g. --subject logo, --images DIR).
set -euo pipefail
here=$(pwd)
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/install-deps.sh"
cd "$root"
[ -f build/build.ninja ] || meson setup build
meson compile -C build
cd "$here"
exec "$root/build/cli/flashlora" demo "$@"
