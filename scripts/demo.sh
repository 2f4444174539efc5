#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build, and run `flashlora demo`
# (train an adapter on the embedded model, register it, serve a request naming it, report
# identity accuracy). Until the demo subcommand lands, this builds and shows what the binary
# can do today.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build
meson compile -C build
if ./build/cli/flashlora --help | grep -q '^  demo '; then
  exec ./build/cli/flashlora demo "$@"
fi
echo
echo "flashlora demo is not implemented yet: it arrives with the trainer and the service."
echo "What this build offers now:"
./build/cli/flashlora --help
./build/cli/flashlora devices
