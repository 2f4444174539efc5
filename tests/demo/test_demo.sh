#!/usr/bin/env bash
# `flashlora demo` on a small budget, on the embedded model: it trains, registers the adapter
# with a service it starts, generates with and without the adapter, writes the side-by-side
# PNG, prints the identity figures and the next commands, and leaves no process behind; a second
# run on the same state directory replaces the registered adapter; the user's own images work;
# bad arguments are one line and a non-zero exit. Skipped (77) without redis-server.
#   test_demo.sh FLASHLORA SOURCE_DIR
set -u
bin=$(realpath "$1")
src=$2
command -v redis-server >/dev/null || { echo "redis-server not installed: skipped"; exit 77; }
work=$(mktemp -d)
trap 'pkill -TERM -f "$work/state" 2>/dev/null; rm -rf "$work"' EXIT
passed=0
failed=0
check() { # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
png_size() { python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(24); assert b[:8]==b"\x89PNG\r\n\x1a\n"; print("%dx%d" % struct.unpack(">II", b[16:24]))' "$1"; }
leftovers() { pgrep -f "$work/state" >/dev/null; }
export FLASHLORA_THREADS=2
cd "$work"
small=(--steps 8 --sample-steps 2 --state "$work/state")

"$bin" demo "${small[@]}" >out1.txt 2>err1.txt
status=$?
check "demo runs to the end (exit $status)" $status
size=""
[ -f flashlora-demo-mascot.png ] && size=$(png_size flashlora-demo-mascot.png) && [ -n "$size" ]
check "the side-by-side PNG is in the current directory ($size)" $?
grep -Eq '^identity accuracy \(retrieval among 3 subjects, built-in encoder\): base [01]\.[0-9]+, adapter [01]\.[0-9]+; mean cosine to the [0-9]+ references: base -?[0-9.]+, adapter -?[0-9.]+$' out1.txt
check "one identity line for both grids, measured with the built-in encoder" $?
grep -q "adapter training [0-9.]* s" out1.txt && grep -q "4-image grid [0-9.]* s" out1.txt
check "training and grid timings are printed" $?
grep -q "curl " out1.txt && grep -q "demo-mascot" out1.txt && grep -q "^  KEY=fl_" out1.txt
check "the next commands name the adapter and a key" $?
grep -q "no --model given: using the embedded model" err1.txt
check "the embedded model is named in one line" $?
sleep 0.5
! leftovers
check "no service or redis-server left running" $?

"$bin" demo --steps 2 --sample-steps 1 --state "$work/state" --out again.png >out2.txt 2>err2.txt
check "a second run on the same state directory" $?
grep -q "registered demo-mascot" err2.txt && [ -f again.png ]
check "it registers the new adapter in place of the old one" $?
! leftovers
check "nothing left running after the second run" $?

"$bin" demo --images "$src/datasets/demo/logo" --trigger qlogo --prompt "a [trigger] on white" --steps 2 \
  --sample-steps 1 --state "$work/state" --out own.png >out3.txt 2>err3.txt
check "--images with the user's own folder" $?
grep -q "demo-images" out3.txt && grep -q "a qlogo on white" err3.txt
check "the user's trigger and prompt are used" $?

"$bin" demo --subject nothing >/dev/null 2>e1.txt
[ $? -eq 1 ] && [ "$(grep -cv 'embedded model' e1.txt)" -le 2 ] && grep -q "no bundled subject" e1.txt
check "an unknown subject is one line" $?
"$bin" demo --images "$work/none" --state "$work/state3" >/dev/null 2>e2.txt
[ $? -eq 1 ] && ! leftovers
check "a missing image folder fails before anything starts" $?
"$bin" demo --steps 0 >/dev/null 2>e3.txt
[ $? -eq 2 ]
check "--steps 0 is refused" $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
