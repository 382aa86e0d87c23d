#!/usr/bin/env bash
# Installs what building, testing and benchmarking ChainIO need on Debian bookworm.
# Idempotent and quiet: it only installs what is missing and prints one line per install step.
set -euo pipefail

APT_PACKAGES=(
  build-essential pkg-config cmake ninja-build
  liburing-dev libbpf-dev libxdp-dev bpftool clang llvm libelf-dev zlib1g-dev
  libgtest-dev libgmock-dev nlohmann-json3-dev libxxhash-dev libclang-rt-14-dev
  fio iproute2 iperf3 strace
)
# torch==2.13.0 is the CPU build lying on disk; a bare "torch" would download a CUDA build.
PIP_PACKAGES=(torch==2.13.0 numpy pytest safetensors transformers tqdm matplotlib scikit-build-core pybind11
              runai-model-streamer==0.17.0 fastsafetensors==0.5.0)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" - "${PIP_PACKAGES[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if want and have.split("+")[0] != want:
        sys.exit(1)
PYEOF
then
  echo "setup: pip install ${PIP_PACKAGES[*]}"
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${PIP_PACKAGES[@]}"
fi
