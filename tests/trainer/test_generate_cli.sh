#!/usr/bin/env bash
# `flashlora generate` end to end on the tiny pixel-space fixture model: PNGs with the requested
# size come out with and without the fixture LoRA; the same seed gives the same bytes, another seed
# and the adapter change the image; --num-images writes PATH_i.png; bad input is one line and exit 1.
#   test_generate_cli.sh FLASHLORA SOURCE_DIR
set -u
bin=$1
src=$2
model="$src/tests/fixtures/flux_b.model.safetensors" # pixel image space: 12 channels = 3 * 2 * 2
lora="$src/tests/fixtures/flux_b.lora.safetensors"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
check() { # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
# png_size FILE: prints "WIDTH HEIGHT" when FILE starts with the PNG signature and an IHDR chunk.
png_size() {
  python3 - "$1" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
    sys.exit(1)
length = struct.unpack(">I", data[8:12])[0]
crc = struct.unpack(">I", data[16 + length:20 + length])[0]
if length != 13 or zlib.crc32(data[12:16 + length]) & 0xFFFFFFFF != crc or b"IEND" not in data[-12:]:
    sys.exit(1)
w, h, depth, color = struct.unpack(">IIBB", data[16:26])
print(w, h, depth, color)
PY
}
common=(--model "$model" --prompt "sks mascot, a photo" --width 16 --height 16 --steps 4)

"$bin" generate "${common[@]}" --seed 1 --out "$work/a.png" >"$work/a.out" 2>"$work/a.log"
check "generate without an adapter" $?
[ "$(png_size "$work/a.png")" = "16 16 8 2" ]
check "a 16x16 8-bit RGB PNG" $?
grep -qx "$work/a.png" "$work/a.out"
check "the written path on stdout" $?

"$bin" generate "${common[@]}" --seed 1 --out "$work/b.png" >/dev/null 2>&1
cmp -s "$work/a.png" "$work/b.png"
check "same seed, same bytes" $?
# (a failed generate writes no file: the check needs the command to succeed and a valid PNG)
"$bin" generate "${common[@]}" --seed 2 --out "$work/c.png" >/dev/null 2>&1 &&
  [ "$(png_size "$work/c.png")" = "16 16 8 2" ] && ! cmp -s "$work/a.png" "$work/c.png"
check "another seed, another image" $?

"$bin" generate "${common[@]}" --seed 1 --adapter "$lora" --out "$work/l.png" >/dev/null 2>"$work/l.log"
check "generate with the fixture LoRA" $?
[ "$(png_size "$work/l.png")" = "16 16 8 2" ] && ! cmp -s "$work/a.png" "$work/l.png"
check "the adapter changes the image" $?
grep -q "modules adapted at scale 1" "$work/l.log"
check "the adapter's matched modules are reported" $?
"$bin" generate "${common[@]}" --seed 1 --adapter "$lora:0" --out "$work/l0.png" >/dev/null 2>&1
cmp -s "$work/a.png" "$work/l0.png"
check "scale 0 gives the base model's image" $?
"$bin" generate "${common[@]}" --seed 1 --adapter "$lora:0.5" --out "$work/l5.png" >/dev/null 2>&1 &&
  ! cmp -s "$work/l.png" "$work/l5.png" && ! cmp -s "$work/a.png" "$work/l5.png"
check "scale 0.5 is between" $?

# Keys that adapt no module are listed.
python3 - "$lora" "$work/extra.safetensors" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
body = data[8 + n:]
end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
header["not_a_module.lora_A.weight"] = {"dtype": "F32", "shape": [1, 2], "data_offsets": [end, end + 8]}
header["not_a_module.lora_B.weight"] = {"dtype": "F32", "shape": [2, 1], "data_offsets": [end + 8, end + 16]}
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + body[:end] + bytes(16))
PY
"$bin" generate "${common[@]}" --seed 1 --adapter "$work/extra.safetensors" --out "$work/x.png" >/dev/null 2>"$work/x.log"
check "an adapter with unknown keys still applies" $?
grep -q "not applied: not_a_module" "$work/x.log" && cmp -s "$work/l.png" "$work/x.png"
check "its unknown keys are listed on stderr" $?

"$bin" generate "${common[@]}" --seed 1 --num-images 2 --out "$work/n.png" >"$work/n.out" 2>/dev/null
check "--num-images 2" $?
cmp -s "$work/a.png" "$work/n_0.png" && [ "$(png_size "$work/n_1.png")" = "16 16 8 2" ] &&
  ! cmp -s "$work/n_0.png" "$work/n_1.png" && [ ! -e "$work/n.png" ] && [ "$(wc -l <"$work/n.out")" -eq 2 ]
check "PATH_0.png is seed 1, PATH_1.png seed 2" $?

# Bad input: one line on stderr, exit 1, no image.
one_line_failure() { # NAME ARGS...
  local name=$1
  shift
  "$bin" generate "$@" >/dev/null 2>"$work/err.log"
  local status=$?
  [ "$status" -eq 1 ] && [ "$(wc -l <"$work/err.log")" -eq 1 ] && grep -q '^flashlora generate: ' "$work/err.log"
  check "$name (exit $status: $(head -c 200 "$work/err.log"))" $?
}
one_line_failure "a missing adapter file" "${common[@]}" --adapter "$work/missing.safetensors" --out "$work/e1.png"
[ ! -e "$work/e1.png" ]
check "no image after a failure" $?
printf 'not safetensors' >"$work/junk.safetensors"
one_line_failure "an adapter that is not safetensors" "${common[@]}" --adapter "$work/junk.safetensors" --out "$work/e.png"
one_line_failure "a missing model" --model "$work/missing.safetensors" --prompt p --out "$work/e.png"
one_line_failure "a size not a multiple of the patch" "${common[@]}" --width 15 --out "$work/e.png"
one_line_failure "a bad number" "${common[@]}" --steps many --out "$work/e.png"
one_line_failure "an unknown flag" "${common[@]}" --colour red --out "$work/e.png"
one_line_failure "no --out" "${common[@]}"
one_line_failure "a bad scale" "${common[@]}" --adapter "$lora:1e9" --out "$work/e.png"
one_line_failure "an unwritable output" "${common[@]}" --out "$work/no/such/dir/e.png"

"$bin" generate --help | grep -q -- "--adapter FILE\[:SCALE\]"
check "--help" $?
"$bin" --help | grep -q "generate"
check "listed in the command table" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
