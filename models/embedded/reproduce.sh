#!/usr/bin/env bash
# Rebuilds the embedded model from scratch with the project's own binary, as its model card
# (models/embedded/README.md) describes: the clip-art packages, the two pretraining sets, the two
# training stages, and the card's figures.
#
#   models/embedded/reproduce.sh WORKDIR [STAGE_A_STEPS [STEPS]]
#
# Long: on 2 CPU cores it takes hours (the card lists the measured time). It can be stopped at any
# point (Ctrl-C writes a checkpoint) and run again to continue where it stopped.
# Threads: FLASHLORA_THREADS (the shipped run used 2; an exact resume needs the same count).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work=${1:?usage: reproduce.sh WORKDIR [STAGE_A_STEPS [STEPS]]}
steps_a=${2:-5120}  # the shipped model's first stage (32x32)
steps=${3:-8034}  # the shipped model's step count
bin="$root/build/cli/flashlora"

# The data comes from two Debian packages, installed only for this (the demo and the tests do not
# need them): openclipart-png (public domain) and ruby-tanuki-emoji (Apache-2.0 Noto Emoji).
missing=()
for p in openclipart-png ruby-tanuki-emoji; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
[ -x "$bin" ] || (cd "$root" && { [ -f build/build.ninja ] || meson setup build; } && meson compile -C build)

mkdir -p "$work"
[ -f "$work/data32/manifest.jsonl" ] || "$bin" data pretrain --out "$work/data32" --resolution 32 --margin 2
[ -f "$work/data64/manifest.jsonl" ] || "$bin" data pretrain --out "$work/data64" --resolution 64 --margin 4
"$bin" pretrain --data "$work/data32" --out "$work/stage32.safetensors" --steps "$steps_a" --batch 16 \
  --eval-every 500 --sample-every 1000 --sample-dir "$work/samples32" --resume
[ -f "$work/flashlora-embedded.safetensors.log.jsonl" ] ||
  cp "$work/stage32.safetensors.log.jsonl" "$work/flashlora-embedded.safetensors.log.jsonl"
"$bin" pretrain --data "$work/data64" --init "$work/stage32.safetensors" \
  --out "$work/flashlora-embedded.safetensors" --steps "$steps" --batch 16 \
  --eval-every 500 --sample-every 1000 --sample-dir "$work/samples64" --resume
"$bin" pretrain report --log "$work/flashlora-embedded.safetensors.log.jsonl" \
  --model "$work/flashlora-embedded.safetensors" --data "$work/data64" --out-dir "$work/report"
echo "model: $work/flashlora-embedded.safetensors; figures: $work/report"
