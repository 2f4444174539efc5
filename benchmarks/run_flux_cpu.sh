#!/usr/bin/env bash
# Flux CPU benchmark: flashlora against the PyTorch reference on the same machine and thread
# count, in one run; prints both timings and the ratio (PyTorch ms / flashlora ms, > 1 means
# flashlora is faster). Builds build-bench/ (CPU only) and installs Debian's python3-torch if needed.
#   benchmarks/run_flux_cpu.sh [threads] [repetitions]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
reps=${2:-5}
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "installing python3-torch (the PyTorch peer)"
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
fi
# A CPU-only release build of its own, so the benchmark never waits on CUDA compilation.
[ -f build-bench/build.ninja ] || meson setup build-bench -Dcuda=disabled -Dtests=false >/dev/null
meson compile -C build-bench benchmarks/bench_flux_cpu >/dev/null
export FLASHLORA_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
ours=$(build-bench/benchmarks/bench_flux_cpu "$reps")
theirs=$(/usr/bin/python3 benchmarks/bench_flux_cpu.py "$reps")
echo "$ours"
echo "$theirs"
/usr/bin/python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours = {j["what"]: j for j in map(json.loads, sys.argv[1].splitlines())}
theirs = {j["what"]: j for j in map(json.loads, sys.argv[2].splitlines())}
for what in ("forward", "lora_step"):
    o, t = ours[what]["ms"], theirs[what]["ms"]
    print(f"{what:10s} flashlora {o:9.2f} ms   pytorch {t:9.2f} ms   ratio (pytorch/flashlora) {t / o:5.2f}x")
PY
