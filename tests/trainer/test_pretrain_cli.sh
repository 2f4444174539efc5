#!/usr/bin/env bash
# `flashlora data pretrain` and `flashlora pretrain` end to end on committed inputs (the demo
# subjects' PNGs stand in for the clip-art package) and a tiny model: a run stopped by SIGTERM or
# by its step count and resumed reaches exactly the weights of an uninterrupted run; a shipped
# model continues its step count and log with --init; the report draws both figures; bad input
# is one line and a non-zero exit.
#   test_pretrain_cli.sh FLASHLORA SOURCE_DIR
set -u
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
check() { # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
# Tensor bytes and the metadata that must agree (the wall-clock training time may not).
same_weights() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    m = h.pop('__metadata__', {})
    m.pop('train_seconds', None)
    return h, m, b[8 + n:]
a, b = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if a == b else 1)
PY
}
export FLASHLORA_THREADS=2

"$bin" data pretrain --openclipart "$src/datasets/demo" --emoji "" --out "$work/data" --resolution 16 --margin 1 \
  --max-per-dir 6 --heldout-every 4 >/dev/null 2>"$work/data.log"
check "data pretrain on a folder tree" $?
lines=$(wc -l <"$work/data/manifest.jsonl")
[ "$lines" -ge 10 ] && grep -q '"caption":"mascot"' "$work/data/manifest.jsonl" && grep -q '"split":"heldout"' "$work/data/manifest.jsonl"
check "manifest: $lines captioned images with a held-out split" $?

cat >"$work/tiny.json" <<'JSON'
{"in_channels": 12, "out_channels": 12, "vec_in_dim": 16, "context_in_dim": 16, "hidden_size": 32,
 "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6],
 "theta": 10000, "qkv_bias": true, "guidance_embed": false}
JSON
common=(--data "$work/data" --config "$work/tiny.json" --batch 2 --warmup 3 --lr 1e-3 --eval-every 4
        --eval-examples 2 --checkpoint-every 0 --max-text-tokens 8)

"$bin" pretrain "${common[@]}" --out "$work/straight.safetensors" --steps 16 >/dev/null 2>"$work/straight.log"
check "uninterrupted run" $?
[ "$(grep -c '"loss"' "$work/straight.safetensors.log.jsonl")" -eq 16 ] &&
  [ "$(grep -c '"heldout_loss"' "$work/straight.safetensors.log.jsonl")" -eq 4 ]
check "the log has a line per step and per evaluation" $?
"$bin" inspect "$work/straight.safetensors" --json >"$work/inspect.json" 2>/dev/null
grep -q '"pretrain_steps": *"16"' "$work/inspect.json" && grep -q '"dtype": *"BF16"' "$work/inspect.json" &&
  grep -q '"image_space": *"pixels"' "$work/inspect.json"
check "the model file: BF16 weights, step count and image space in its metadata" $?

"$bin" pretrain "${common[@]}" --out "$work/split.safetensors" --steps 7 >/dev/null 2>&1
"$bin" pretrain "${common[@]}" --out "$work/split.safetensors" --steps 16 --resume >/dev/null 2>"$work/split.log"
check "extend a finished run with --resume" $?
grep -q "resumed at step 7" "$work/split.log"
check "the resume started at step 7" $?
same_weights "$work/straight.safetensors" "$work/split.safetensors"
check "stop at 7 + resume to 16 gives exactly the uninterrupted weights" $?
cmp -s <(grep '"loss"' "$work/straight.safetensors.log.jsonl" | sed 's/,"seconds".*//') \
       <(grep '"loss"' "$work/split.safetensors.log.jsonl" | sed 's/,"seconds".*//')
check "and the same loss log" $?

cp "$work/split.safetensors" "$work/split.before"
"$bin" pretrain "${common[@]}" --out "$work/split.safetensors" --steps 16 --resume >/dev/null 2>"$work/again.log"
[ $? -eq 0 ] && grep -q "nothing to do" "$work/again.log" && cmp -s "$work/split.before" "$work/split.safetensors"
check "the same command after the run finished does nothing" $?

# SIGTERM: a checkpoint, exit 143, then resume.
"$bin" pretrain "${common[@]}" --out "$work/term.safetensors" --steps 16 --eval-every 0 >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 1000); do
  [ "$(grep -c '"loss"' "$work/term.safetensors.log.jsonl" 2>/dev/null)" -ge 3 ] 2>/dev/null && break
  sleep 0.01
done
kill -TERM "$pid"
wait "$pid"
status=$?
[ "$status" -eq 143 ] && [ -f "$work/term.safetensors.ckpt" ]
check "SIGTERM writes a checkpoint and exits 143 (got $status)" $?
"$bin" pretrain "${common[@]}" --out "$work/term.safetensors" --steps 16 --eval-every 0 --resume >/dev/null 2>&1
check "resume after SIGTERM" $?
same_weights "$work/straight.safetensors" "$work/term.safetensors"
check "SIGTERM + resume gives exactly the uninterrupted weights" $?

# A changed configuration cannot resume a checkpoint.
"$bin" pretrain "${common[@]}" --out "$work/split.safetensors" --steps 20 --resume --lr 2e-3 >/dev/null 2>"$work/conf.log"
status=$?
[ "$status" -eq 1 ] && [ "$(wc -l <"$work/conf.log")" -le 3 ] && grep -q "another configuration" "$work/conf.log"
check "resume with another learning rate is refused" $?

# Continue a shipped model: step count and log go on from it.
cp "$work/straight.safetensors.log.jsonl" "$work/cont.log.jsonl"
"$bin" pretrain --data "$work/data" --init "$work/straight.safetensors" --out "$work/cont.safetensors" \
  --log "$work/cont.log.jsonl" --steps 24 --batch 2 --warmup 3 --lr 1e-3 --eval-every 4 --eval-examples 2 \
  --checkpoint-every 0 --max-text-tokens 8 >/dev/null 2>"$work/cont.log"
check "--init continues a shipped model" $?
first_new=$(grep '"loss"' "$work/cont.log.jsonl" | sed -n 17p | grep -o '"step":[0-9]*' | grep -o '[0-9]*$')
[ "$first_new" = "17" ] && [ "$(grep -c '"loss"' "$work/cont.log.jsonl")" -eq 24 ]
check "the continued log keeps steps 1-16 and goes on at 17 (got $first_new)" $?
"$bin" inspect "$work/cont.safetensors" --json 2>/dev/null | grep -q '"pretrain_steps": *"24"'
check "the continued model counts 24 steps" $?

"$bin" pretrain report --log "$work/cont.log.jsonl" --model "$work/cont.safetensors" --data "$work/data" \
  --out-dir "$work/report" --samples 4 >/dev/null 2>&1
check "report" $?
python3 - "$work/report/loss.png" "$work/report/samples.png" <<'PY'
import struct, sys
for p in sys.argv[1:]:
    b = open(p, 'rb').read(32)
    assert b[:8] == b'\x89PNG\r\n\x1a\n', p
    w, h = struct.unpack('>II', b[16:24])
    assert w >= 100 and h >= 50, (p, w, h)
PY
check "report: loss.png and samples.png are PNG figures" $?

# Bad input: one line, non-zero exit.
"$bin" pretrain --data "$work/nothing" --out "$work/x.safetensors" --steps 2 >/dev/null 2>"$work/e1.log"
[ $? -eq 1 ] && [ "$(wc -l <"$work/e1.log")" -eq 1 ]
check "a missing data folder is one line" $?
mkdir -p "$work/badset" && printf '{"file": "images/000000.png"}\n' >"$work/badset/manifest.jsonl"
"$bin" pretrain --data "$work/badset" --out "$work/x.safetensors" --steps 2 >/dev/null 2>"$work/e2.log"
[ $? -eq 1 ] && grep -q "line 1" "$work/e2.log"
check "a manifest line without a caption is named" $?
printf 'not a model' >"$work/junk.safetensors"
"$bin" pretrain --data "$work/data" --init "$work/junk.safetensors" --out "$work/x.safetensors" --steps 2 >/dev/null 2>"$work/e3.log"
[ $? -eq 1 ] && [ "$(wc -l <"$work/e3.log")" -le 2 ]
check "--init with a file that is not a model" $?
"$bin" data pretrain --openclipart "$work/nothing" --emoji "" --out "$work/d2" >/dev/null 2>"$work/e4.log"
[ $? -eq 1 ] && grep -q "openclipart-png" "$work/e4.log"
check "data pretrain without clip art names the packages" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
