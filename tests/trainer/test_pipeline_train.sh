#!/usr/bin/env bash
# `flashlora train --model DIR` on the tiny FLUX.1 pipeline (tests/fixtures/pipeline/dev, diffusers
# folders): the set is encoded once (autoencoder latents of every image and its flip, T5 + CLIP of
# every caption and of the empty one) into the cache; a second run with the same cache encodes
# nothing and says so; kill -9 in the middle and --resume reaches the byte-identical adapter, the
# resume reusing the cache; a FLUX.1 adapter loads back onto the model for generation.
#   test_pipeline_train.sh FLASHLORA SOURCE_DIR
set -u
bin=$1
src=$2
model="$src/tests/fixtures/pipeline/dev"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
check() { # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}

python3 "$src/tests/trainer/make_images.py" "$work/images" 6
common=(--images "$work/images" --trigger sks --model "$model" --resolution 32 --steps 12 --seed 3 --rank 4 --lr 1e-3)

"$bin" train "${common[@]}" --out "$work/straight.safetensors" 2>"$work/straight.log" >/dev/null
status=$?
check "train on the tiny FLUX.1 pipeline (exit $status)" $status
grep -q "encoded 12 latents and 3 captions" "$work/straight.log"
check "the first run encodes 6 images and their flips, 2 captions and the empty one" $?
[ "$(ls "$work/straight.safetensors.cache" | wc -l)" -eq 15 ]
check "one cache file per latent and per caption" $?

"$bin" train "${common[@]}" --out "$work/again.safetensors" --cache-dir "$work/straight.safetensors.cache" \
  2>"$work/again.log" >/dev/null
check "a second run with the same cache" $?
grep -q "reused 12 latents and 3 text encodings, encoded nothing" "$work/again.log"
check "the second run encodes nothing and says so" $?
cmp -s "$work/straight.safetensors" "$work/again.safetensors"
check "the cached encodings train the byte-identical adapter" $?

# kill -9 once past step 4 (checkpoints every 3 steps), then resume.
"$bin" train "${common[@]}" --out "$work/killed.safetensors" --cache-dir "$work/straight.safetensors.cache" \
  --checkpoint-every 3 --json >"$work/killed.jsonl" 2>/dev/null &
pid=$!
for _ in $(seq 1 3000); do
  step=$(grep -o '"step": *[0-9]*' "$work/killed.jsonl" 2>/dev/null | tail -1 | grep -o '[0-9]*$')
  [ -n "$step" ] && [ "$step" -ge 5 ] && break
  sleep 0.01
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ ! -f "$work/killed.safetensors" ] && [ -f "$work/killed.safetensors.ckpt" ]
check "kill -9 leaves a checkpoint and no adapter" $?
"$bin" train "${common[@]}" --out "$work/killed.safetensors" --cache-dir "$work/straight.safetensors.cache" \
  --checkpoint-every 3 --resume >/dev/null 2>"$work/resume.log"
check "resume after kill -9" $?
grep -q "resumed from" "$work/resume.log" && grep -q "encoded nothing" "$work/resume.log"
check "the resume starts from the checkpoint and encodes nothing" $?
cmp -s "$work/straight.safetensors" "$work/killed.safetensors"
check "kill -9 + resume is byte-identical to the uninterrupted run" $?

# The adapter applies to the model it was trained on.
"$bin" generate --model "$model" --prompt "a photo of sks" --width 32 --height 32 --steps 2 \
  --adapter "$work/straight.safetensors" --out "$work/with.png" >/dev/null 2>"$work/gen.log"
check "generate with the trained adapter" $?
grep -q "0 keys not applied" "$work/gen.log"
check "every key of the adapter applies" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
