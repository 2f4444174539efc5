#!/usr/bin/env bash
# Flux CPU benchmark: flashlora against current PyTorch on the same machine and thread count, in
# one run; prints every timing and the ratios (PyTorch ms / flashlora ms, > 1 means flashlora is
# faster), the headline against the faster of PyTorch eager and torch.compile, from the medians
# of the repetitions; a second line gives the same from the fastest repetitions, which on a
# machine shared with other work is the better estimate of what each side costs unhindered.
#
# The peer: PyTorch and diffusers from PyPI, installed by this script into build-bench-venv/
# (versions pinned below), running diffusers' FluxTransformer2DModel — the upstream Flux code, SDPA
# attention — on the weights, LoRA and inputs flashlora used (bench_flux_torch.py checks the
# outputs agree before it times). PyPI's Linux torch wheel is the CUDA build: with its CUDA
# libraries it is about 4 GB installed; it runs on the CPU all the same.
# Configs: bench, embedded, mid (bench_flux_cpu.c describes them); default all three.
# The old peer — Debian's python3-torch running the project's own reference model
# (bench_flux_cpu.py, forward + backward without the optimizer step) — runs too, on the bench
# config, when /usr/bin/python3 can import torch; its lines are labelled "old peer".
#   benchmarks/run_flux_cpu.sh [threads] [repetitions] [config...]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
reps=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(bench embedded mid)
torch_version=2.15.0 diffusers_version=0.42.1
venv=build-bench-venv
if ! "$venv/bin/python" -c "import torch, diffusers" 2>/dev/null; then
  echo "installing torch $torch_version and diffusers $diffusers_version from PyPI into $venv (the peer)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==$torch_version" "diffusers==$diffusers_version"
fi
# A CPU-only release build of its own, so the benchmark never waits on CUDA compilation.
[ -f build-bench/build.ninja ] || meson setup build-bench -Dcuda=disabled -Dtests=false >/dev/null
meson compile -C build-bench benchmarks/bench_flux_cpu >/dev/null
export FLASHLORA_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
dump=$(mktemp -d)
trap 'rm -rf "$dump"' EXIT
echo "threads $threads, repetitions $reps, load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$venv/bin/python" -c "import torch, diffusers; print('peer: torch', torch.__version__, 'diffusers', diffusers.__version__)"
for config in "${configs[@]}"; do
  ours=$(build-bench/benchmarks/bench_flux_cpu --config "$config" --dump "$dump/$config.safetensors" "$reps")
  theirs=$(TORCHINDUCTOR_CACHE_DIR="$dump/inductor" "$venv/bin/python" benchmarks/bench_flux_torch.py \
    "$dump/$config.safetensors" "$reps" 2>"$dump/$config.stderr") || { cat "$dump/$config.stderr" >&2; exit 1; }
  old=""
  if [ "$config" = bench ] && /usr/bin/python3 -c "import torch" 2>/dev/null; then
    old=$(/usr/bin/python3 benchmarks/bench_flux_cpu.py "$reps")
  fi
  echo "$ours"
  echo "$theirs"
  [ -z "$old" ] || echo "$old"
  python3 - "$ours" "$theirs" "$old" <<'PY'
import json, sys
def lines(text):
    return [json.loads(l) for l in text.splitlines() if l.startswith("{")]
ours = {j["what"]: j for j in lines(sys.argv[1])}
theirs = {(j["impl"], j["what"]): j for j in lines(sys.argv[2]) if "impl" in j}
old = {j["what"]: j for j in lines(sys.argv[3])}
config = next(iter(ours.values()))["config"]
for what in ("forward", "lora_step"):
    o = ours[what]["ms"]
    e, c = theirs[("pytorch-eager", what)]["ms"], theirs[("pytorch-compile", what)]["ms"]
    best = min(e, c)
    print(f"{config:8s} {what:9s} flashlora {o:9.2f} ms | eager {e:9.2f} ms ({e / o:5.2f}x) | compile {c:9.2f} ms"
          f" ({c / o:5.2f}x) | vs best: {best / o:5.2f}x")
    o, e = ours[what]["min_ms"], theirs[("pytorch-eager", what)]["min_ms"]
    c = theirs[("pytorch-compile", what)]["min_ms"]
    print(f"{'':8s} {'(min)':9s} flashlora {o:9.2f} ms | eager {e:9.2f} ms ({e / o:5.2f}x) | compile {c:9.2f} ms"
          f" ({c / o:5.2f}x) | vs best: {min(e, c) / o:5.2f}x")
    if what in old:
        t = old[what]["ms"]
        print(f"{config:8s} {what:9s} old peer (PyTorch {old[what]['version']}, reference model): {t:9.2f} ms"
              f" ({t / o:5.2f}x)")
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
