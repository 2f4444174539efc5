#!/usr/bin/env bash
# `flashlora eval` end to end on the tiny pixel-space fixture model and its LoRA, with the tiny
# built-in-layout encoder of the golden fixture: the JSON holds every score in range and one image
# record per prompt x seed, the report is a self-contained page (inline SVG chart, embedded PNGs),
# the same command gives the same JSON, --json gives progress events; and bad input — a prompt file
# of 100000 lines, a reference folder without a usable image, an encoder file of another layout, a
# missing --refs, an unknown encoder — is one line on stderr and exit status 1.
#   test_eval_cli.sh FLASHLORA SOURCE_DIR
set -u
bin=$1
src=$2
model="$src/tests/fixtures/flux_b.model.safetensors"
lora="$src/tests/fixtures/flux_b.lora.safetensors"
enc="builtin:$src/tests/fixtures/builtin_vit/tiny.safetensors"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
check() {
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
one_line() { # one_line FILE: exactly one non-empty line
  [ "$(grep -c . "$1")" -eq 1 ]
}
python3 "$src/tests/trainer/make_images.py" "$work/refs" 4 >/dev/null
mkdir -p "$work/distractors/blue" "$work/distractors/green" "$work/empty"
python3 - "$work/distractors" "$src/tests/trainer" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
import make_images
for name, colour in (("blue", (20, 40, 220)), ("green", (30, 200, 60))):
    for i in range(3):
        rgb = [c for _ in range(16 * 16) for c in colour]
        rgb[(i * 37) % len(rgb)] = 255
        make_images.write_png(f"{sys.argv[1]}/{name}/{i}.png", 16, 16, rgb)
PY
echo "not an image" > "$work/empty/notes.txt"
printf 'corrupt' > "$work/empty/broken.png"
printf 'a photo of [trigger]\n# a comment\n\n[trigger] on red\n' > "$work/prompts.txt"
common=(--model "$model" --encoder "$enc" --width 16 --height 16 --steps 3 --seeds 1,2 --bootstrap 50
        --prompts "$work/prompts.txt" --distractors "$work/distractors")

"$bin" eval "${common[@]}" --adapter "$lora" --refs "$work/refs" --trigger sks --out "$work/out" >"$work/out.txt" 2>"$work/out.log"
check "eval runs" $?
python3 - "$work/out/evaluation.json" <<'PY'
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["format"] == "flashlora.evaluation.v1"
assert j["encoder"]["kind"] == "builtin" and len(j["encoder"]["sha256"]) == 64
assert j["prompts"] == ["a photo of [trigger]", "[trigger] on red"] and j["seeds"] == [1, 2]
assert [d["name"] for d in j["distractors"]] == ["blue", "green"]
(a,) = j["adapters"]
assert a["n_gen"] == 4 and a["n_base"] == 4 and a["n_refs"] == 4 and a["n_distractors"] == 2
ia = a["identity_accuracy"]
for v in (ia["retrieval"], ia["verification"], ia["auc"], a["base"]["retrieval"], a["copy_rate"], a["base"]["pass_rate"]):
    assert 0 <= v <= 1, v
for k in ("retrieval_ci", "verification_ci", "auc_ci"):
    lo, hi = ia[k]
    assert 0 <= lo <= hi <= 1
assert -1 <= a["similarity"] <= 1 and a["diversity"] >= 0
assert sum(a["confusion"].values()) == 4 and set(a["confusion"]) == {"flux_b.lora.safetensors", "blue", "green"}
assert len(a["images"]) == 4 and len(a["base_images"]) == 4
assert [(i["prompt"], i["seed"]) for i in a["images"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
assert a["clip_t"] is None and a["face"]["applicable"] is False
assert j["summary"]["adapters"] == 1
PY
check "the JSON has every score, in range, per prompt x seed" $?
grep -q "identity accuracy (retrieval, 3 subjects)" "$work/out.txt"
check "a summary line per adapter" $?
grep -q "<svg" "$work/out/report.html" && grep -q "data:image/png;base64," "$work/out/report.html" &&
  ! grep -q "<script" "$work/out/report.html" && ! grep -q 'src="http' "$work/out/report.html"
check "the report is self-contained: inline SVG, embedded PNGs, no script" $?
[ "$(grep -o 'data:image/png' "$work/out/report.html" | wc -l)" -eq $((4 + 4 + 4)) ]
check "the report shows every generation, its base image and the references" $?

"$bin" eval "${common[@]}" --adapter "$lora" --refs "$work/refs" --trigger sks --out "$work/out2" --json >"$work/j.txt" 2>/dev/null
check "eval --json runs" $?
cmp -s "$work/out/evaluation.json" "$work/out2/evaluation.json"
check "the same command gives the same JSON" $?
python3 - "$work/j.txt" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
stages = {e["stage"] for e in events if e["event"] == "progress"}
assert stages == {"generate", "embed", "score"}, stages
assert events[-1]["event"] == "done" and "retrieval" in events[-1]["summary"]
assert any(e["event"] == "adapter" for e in events)
PY
check "--json: progress events for every stage, then the result" $?

# CLIP-T with an encoder that has a text side (the tiny full CLIPModel of the golden fixtures)
"$bin" eval "${common[@]}" --encoder "clip:$src/tests/fixtures/vision/clip_tiny" --adapter "$lora" --refs "$work/refs" \
  --trigger sks --out "$work/clip" >/dev/null 2>"$work/clip.log"
check "eval with a CLIP encoder runs ($(head -c 150 "$work/clip.log"))" $?
python3 - "$work/clip/evaluation.json" "$work/clip/report.html" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
(a,) = j["adapters"]
assert j["encoder"]["kind"] == "clip"
assert isinstance(a["clip_t"], float) and -1 <= a["clip_t"] <= 1, a["clip_t"]
assert isinstance(a["base"]["clip_t"], float) and -1 <= a["base"]["clip_t"] <= 1
assert a["face"]["applicable"] is False
assert "CLIP-T" in open(sys.argv[2]).read()
PY
check "CLIP-T for adapter and base images, in [-1, 1], and in the report" $?

# face rates with the face pipeline (the tiny .dat files of the golden fixtures under their real names)
mkdir -p "$work/face"
ln -s "$src/tests/fixtures/face/mmod_tiny.dat" "$work/face/mmod_human_face_detector.dat"
ln -s "$src/tests/fixtures/face/sp_tiny.dat" "$work/face/shape_predictor_5_face_landmarks.dat"
ln -s "$src/tests/fixtures/face/resnet_tiny.dat" "$work/face/dlib_face_recognition_resnet_model_v1.dat"
"$bin" eval "${common[@]}" --encoder "face:$work/face" --adapter "$lora" --refs "$work/refs" --trigger sks \
  --out "$work/faces" >/dev/null 2>"$work/face.log"
check "eval with the face encoder runs ($(head -c 150 "$work/face.log"))" $?
python3 - "$work/faces/evaluation.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
(a,) = j["adapters"]
f = a["face"]
assert f["applicable"] is True and abs(f["match_distance"] - 0.6) < 1e-6 and a["clip_t"] is None
assert 0 <= f["reference_faces"] <= 4
for d in (f, f["base"]):
    assert 0 <= d["detection_rate"] <= 1
    assert d["match_rate"] is None if f["reference_faces"] == 0 else 0 <= d["match_rate"] <= d["detection_rate"]
PY
check "face detection and face-ID match rates for adapter and base" $?

# bad input: one line, exit 1
python3 -c "print('\n'.join('%d' % (i % 10) for i in range(100000)))" > "$work/many.txt"
"$bin" eval "${common[@]}" --prompts "$work/many.txt" --adapter "$lora" --refs "$work/refs" --out "$work/bad" >/dev/null 2>"$work/e1"
[ $? -eq 1 ] && one_line "$work/e1" && grep -q "has 100000 prompts: at most 256 are accepted" "$work/e1"
check "a prompt file of 100000 lines: one line, exit 1" $?
python3 -c "print('\n'.join('a photo of prompt number %d with [trigger]' % i for i in range(100000)))" > "$work/huge.txt"
"$bin" eval "${common[@]}" --prompts "$work/huge.txt" --adapter "$lora" --refs "$work/refs" --out "$work/bad" >/dev/null 2>"$work/e1"
[ $? -eq 1 ] && one_line "$work/e1" && grep -q "is larger than 1048576 bytes (at most 256 prompts)" "$work/e1"
check "a 4 MB prompt file: one line, exit 1, nothing read past the limit" $?
"$bin" eval "${common[@]}" --adapter "$lora" --refs "$work/empty" --out "$work/bad" >/dev/null 2>"$work/e2"
[ $? -eq 1 ] && one_line "$work/e2" && grep -q "no usable reference image" "$work/e2"
check "a reference folder without a usable image: one line, exit 1 ($(head -c 150 "$work/e2"))" $?
"$bin" eval "${common[@]}" --encoder "builtin:$model" --adapter "$lora" --refs "$work/refs" --out "$work/bad" >/dev/null 2>"$work/e3"
[ $? -eq 1 ] && one_line "$work/e3" && grep -q "not a flashlora-builtin-vit file" "$work/e3"
check "an encoder file of another layout: one line, exit 1 ($(head -c 150 "$work/e3"))" $?
"$bin" eval --model "$model" --adapter "$lora" --out "$work/bad" >/dev/null 2>"$work/e4"
[ $? -eq 1 ] && one_line "$work/e4" && grep -q -- "--refs" "$work/e4"
check "an adapter without --refs: one line, exit 1" $?
"$bin" eval "${common[@]}" --encoder "dino:/nowhere" --adapter "$lora" --refs "$work/refs" --out "$work/bad" >/dev/null 2>"$work/e5"
[ $? -eq 1 ] && one_line "$work/e5"
check "an unknown encoder: one line, exit 1" $?
"$bin" eval "${common[@]}" --adapter "$work/refs/subject0.png" --refs "$work/refs" --out "$work/bad" >/dev/null 2>"$work/e6"
[ $? -eq 1 ] && one_line "$work/e6"
check "an adapter file that is not an adapter: one line, exit 1" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
