#!/usr/bin/env bash
# Runs `flashlora inspect` on every file of the safetensors corpus. Files named valid_* must
# succeed; every other file must exit 1 with exactly one line on stderr, and no file may make a
# sanitizer (ASan/UBSan) report anything.
#   inspect_corpus.sh FLASHLORA CORPUS_DIR
set -u
bin=$1
dir=$2
passed=0
failed=0
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for f in "$dir"/*.safetensors; do
  name=$(basename "$f")
  "$bin" inspect "$f" >/dev/null 2>"$err"
  rc=$?
  lines=$(wc -l <"$err")
  ok=1
  if grep -qE "Sanitizer|runtime error" "$err"; then ok=0; fi
  case "$name" in
    valid_*) [ "$rc" -eq 0 ] || ok=0 ;;
    *) { [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ]; } || ok=0 ;;
  esac
  if [ "$ok" -eq 1 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $name: exit $rc, $lines stderr lines:"
    head -5 "$err"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
