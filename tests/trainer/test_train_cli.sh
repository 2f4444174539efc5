#!/usr/bin/env bash
# `flashlora train` end to end: kill -9 in the middle of a run and --resume reaches a byte-identical
# adapter; SIGTERM writes a checkpoint and exits 143, and resuming from it is identical too; JSON
# progress events; kohya/PEFT exports load back; a set with too few usable images is refused with
# one line.
#   test_train_cli.sh FLASHLORA SOURCE_DIR
set -u
bin=$1
src=$2
model="$src/tests/fixtures/flux_b.model.safetensors" # pixel image space: 12 channels = 3 * 2 * 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
check() { # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}

python3 "$src/tests/trainer/make_images.py" "$work/images" 6
common=(--images "$work/images" --trigger sks --model "$model" --resolution 16 --steps 40 --seed 3
        --rank 4 --lr 1e-3 --ema 0.9 --schedule cosine)

"$bin" train "${common[@]}" --out "$work/straight.safetensors" >/dev/null 2>"$work/straight.log"
check "uninterrupted run" $?

# kill -9 once the run has passed step 12 (checkpoints every 5 steps), then resume.
"$bin" train "${common[@]}" --out "$work/killed.safetensors" --checkpoint-every 5 --json >"$work/killed.jsonl" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do
  step=$(grep -o '"step": *[0-9]*' "$work/killed.jsonl" 2>/dev/null | tail -1 | grep -o '[0-9]*$')
  [ -n "$step" ] && [ "$step" -ge 12 ] && break
  sleep 0.01
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ ! -f "$work/killed.safetensors" ] && [ -f "$work/killed.safetensors.ckpt" ]
check "kill -9 leaves a checkpoint and no adapter" $?
"$bin" train "${common[@]}" --out "$work/killed.safetensors" --checkpoint-every 5 --resume >/dev/null 2>"$work/resume.log"
check "resume after kill -9" $?
grep -q "resumed from" "$work/resume.log"
check "the resume started from the checkpoint" $?
cmp -s "$work/straight.safetensors" "$work/killed.safetensors"
check "kill -9 + resume is byte-identical to the uninterrupted run" $?

# SIGTERM: checkpoint and exit 143; resume.
"$bin" train "${common[@]}" --out "$work/term.safetensors" --json >"$work/term.jsonl" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do
  grep -q '"event": *"progress"' "$work/term.jsonl" 2>/dev/null && break
  sleep 0.01
done
kill -TERM "$pid"
wait "$pid"
status=$?
[ "$status" -eq 143 ] && [ -f "$work/term.safetensors.ckpt" ] && grep -q '"event": *"checkpoint"' "$work/term.jsonl"
check "SIGTERM writes a checkpoint and exits 143 (got $status)" $?
"$bin" train "${common[@]}" --out "$work/term.safetensors" --resume --json >"$work/term2.jsonl" 2>/dev/null
check "resume after SIGTERM" $?
cmp -s "$work/straight.safetensors" "$work/term.safetensors"
check "SIGTERM + resume is byte-identical" $?
grep -q '"event": *"done"' "$work/term2.jsonl" && grep -q '"sha256"' "$work/term2.jsonl"
check "JSON done event with the adapter hash" $?
[ ! -f "$work/term.safetensors.ckpt" ]
check "the checkpoint is removed once the adapter is written" $?

# Exports in the other layouts load back.
"$bin" train "${common[@]}" --steps 3 --out "$work/e.safetensors" --export-kohya "$work/e.kohya.safetensors" \
  --export-peft "$work/e.peft.safetensors" >/dev/null 2>&1
check "exports" $?
"$bin" inspect "$work/e.kohya.safetensors" | grep -q "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"
check "kohya export keys" $?
"$bin" inspect "$work/e.peft.safetensors" | grep -q "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
check "PEFT export keys" $?

# Aspect buckets: wide images join the square ones in their own bucket.
cp -r "$work/images" "$work/mixed"
python3 - "$src/tests/trainer" "$work/mixed" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import make_images
w, h = 48, 24
rgb = []
for y in range(h):
    for x in range(w):
        rgb += [230, 30, 30] if (x - 20) ** 2 + (y - 12) ** 2 <= 40 else [30, 50, 200]
for i in range(3):
    make_images.write_png(f"{sys.argv[2]}/wide{i}.png", w, h, rgb)
PY
"$bin" train "${common[@]}" --images "$work/mixed" --steps 6 --batch 2 --buckets --out "$work/mixed.safetensors" \
  >/dev/null 2>&1 && "$bin" inspect "$work/mixed.safetensors" | grep -q '"buckets":2'
check "aspect buckets (square and wide images, two buckets)" $?

# Too few usable images: one line, exit 1, no adapter.
mkdir -p "$work/few"
cp "$work/images/subject0.png" "$work/images/subject1.png" "$work/few/"
printf 'not an image' >"$work/few/notes.png"
"$bin" train "${common[@]}" --images "$work/few" --out "$work/few.safetensors" >/dev/null 2>"$work/few.log"
status=$?
[ "$status" -eq 1 ] && [ ! -f "$work/few.safetensors" ] && grep -q "flashlora train:" "$work/few.log" &&
  [ "$(grep -c '^flashlora train:' "$work/few.log")" -eq 1 ]
check "a set with too few usable images is refused" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
