#!/usr/bin/env bash
# Installs every Debian package flashlora needs to build, run and test.
# Idempotent: packages already present are skipped, so a second run costs one dpkg query.
# The CUDA toolkit is not a Debian package here; the build uses it when nvcc is found.
set -euo pipefail

packages=(
  # build
  build-essential meson ninja-build pkg-config python3
  # fuzzing (libFuzzer ships with clang's runtime)
  clang libclang-rt-14-dev
  # numerics
  libopenblas-openmp-dev libomp-dev
  # I/O, service and data
  libjansson-dev libhiredis-dev libmicrohttpd-dev libcurl4-openssl-dev libarchive-dev libstb-dev
  redis-server
  # the API contract test: a venv for schemathesis (from PyPI, cached in the build directory),
  # promtool (in Debian's prometheus package), unshare/ip for a network namespace of its own
  python3-venv prometheus util-linux iproute2
  # the web console's browser test: headless chromium driven through Selenium
  chromium chromium-driver python3-selenium
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
