#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain (nvcc, ptxas, cicc/nvvm, headers incl. crt
# and cccl, cudart) from NVIDIA's PyPI wheels into a cache directory outside the repository,
# and lays it out as a CUDA_HOME (bin/, include/, lib/, nvvm/) so `nvcc` works from there.
# No GPU or driver is needed: this is only the compiler, enough for build.rs to build the
# kernel fatbin (`cargo build --features cuda`).
#
# Idempotent: when $ROOT/bin/nvcc already reports release 13.0 it does nothing.
# Needs python3 with pip (or python3 -m venv). The last line printed is the nvcc path.
#
# Env: GRADIENTS_CACHE (default $HOME/.cache/gradients); PYTHON (default python3).
set -euo pipefail

CACHE="${GRADIENTS_CACHE:-$HOME/.cache/gradients}"
ROOT="$CACHE/cuda-13.0"
PY="${PYTHON:-python3}"
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
)

answers_13_0() {
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "release 13\.0"
}

if answers_13_0 "$ROOT/bin/nvcc"; then
  echo "cuda toolchain already installed in $ROOT" >&2
  echo "$ROOT/bin/nvcc"
  exit 0
fi

if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "error: $PY -m pip is not available; install python3-pip" >&2
  exit 1
fi

start=$(date +%s)
mkdir -p "$ROOT"
# Install into a fresh staging dir, then swap it in, so an interrupted run leaves no half tree.
STAGE="$ROOT/pkgs.partial"
rm -rf "$STAGE"
echo "installing ${WHEELS[*]} into $ROOT" >&2
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$STAGE" "${WHEELS[@]}" >&2

# All five wheels unpack into one tree, nvidia/cu13/{bin,include,lib,nvvm}, which is already
# shaped like a CUDA_HOME (nvcc.profile finds cicc in ../nvvm/bin and headers in ../include).
TREE="$STAGE/nvidia/cu13"
for d in bin include lib nvvm; do
  if [ ! -d "$TREE/$d" ]; then
    echo "error: unexpected wheel layout: $TREE/$d is missing" >&2
    exit 1
  fi
done
for f in include/crt/host_config.h include/cuda_bf16.h include/cccl nvvm/bin/cicc bin/ptxas \
  bin/fatbinary; do
  if [ ! -e "$TREE/$f" ]; then
    echo "error: unexpected wheel layout: $TREE/$f is missing" >&2
    exit 1
  fi
done
chmod +x "$TREE"/bin/* "$TREE"/nvvm/bin/* 2>/dev/null || true

rm -rf "$ROOT/pkgs"
mv "$STAGE" "$ROOT/pkgs"
for d in bin include lib nvvm; do
  rm -rf "${ROOT:?}/$d"
  ln -s "pkgs/nvidia/cu13/$d" "$ROOT/$d"
done

if ! answers_13_0 "$ROOT/bin/nvcc"; then
  echo "error: $ROOT/bin/nvcc does not report release 13.0 after install" >&2
  "$ROOT/bin/nvcc" --version >&2 || true
  exit 1
fi
echo "cuda toolchain installed in $ROOT in $(($(date +%s) - start)) s" >&2
echo "$ROOT/bin/nvcc"
