#!/usr/bin/env bash
# Identity evaluation on the bundled demo subjects, as issue acceptance and the README state it:
# for each of the three subjects (datasets/demo/: mascot, logo, product) an adapter is trained on
# the embedded model exactly as `flashlora demo` trains it (300 steps, rank 16, lr 1e-3, no flips),
# then `flashlora eval` generates with each adapter and with the base model on the same prompts and
# seeds and scores identity with the built-in encoder among 10 subjects: the adapter's own, the two
# other demo subjects and the seven distractor subjects (rendered from openclipart-png by
# `flashlora data subjects --distractors`; the package is installed when missing).
#
#   benchmarks/eval_demo_subjects.sh [WORKDIR] [--steps N] [--seeds LIST]
#
# Prints one line per adapter (retrieval identity accuracy against the base model's, verification,
# AUC) and leaves WORKDIR/<subject>/evaluation.json and report.html. About 6 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work=${1:-eval-demo-subjects}
shift || true
steps=300
seeds=1,2,3,4
while [ $# -gt 0 ]; do
  case "$1" in
  --steps) steps=$2; shift 2 ;;
  --seeds) seeds=$2; shift 2 ;;
  *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$root/build/cli/flashlora"
[ -x "$bin" ] || (cd "$root" && { [ -f build/build.ninja ] || meson setup build; } && meson compile -C build)
if ! dpkg-query -W -f='${Status}' openclipart-png 2>/dev/null | grep -q "install ok installed"; then
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y --no-install-recommends openclipart-png
fi
mkdir -p "$work"
[ -d "$work/distractors/cactus" ] || "$bin" data subjects --distractors --out "$work/distractors"
demo="$root/datasets/demo"
for subject in mascot logo product; do
  case $subject in
  mascot) trigger=oinkly ;;
  logo) trigger=rinzo ;;
  product) trigger=zestra ;;
  esac
  adapter="$work/$subject.safetensors"
  [ -f "$adapter" ] || "$bin" train --images "$demo/$subject" --trigger "$trigger" --out "$adapter" \
    --steps "$steps" --rank 16 --lr 1e-3 --no-flip >"$work/$subject.train.log" 2>&1
  others=()
  for o in mascot logo product; do [ "$o" = "$subject" ] || others+=(--distractor "$demo/$o"); done
  "$bin" eval --adapter "$adapter" --refs "$demo/$subject" --distractors "$work/distractors" "${others[@]}" \
    --seeds "$seeds" --out "$work/$subject" 2>"$work/$subject.eval.log" | grep "identity accuracy" ||
    { tail -3 "$work/$subject.eval.log"; exit 1; }
done
