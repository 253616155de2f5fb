#!/usr/bin/env bash
# The GPU check, in two halves so the GPU machine needs no Rust toolchain:
#   scripts/gpu-check.sh build   on a CPU machine with cargo and nvcc (CUDA 13.0; NVCC or
#                                ~/.cache/gradients/cuda-13.0/bin/nvcc): builds the CUDA test
#                                binaries and the `gradients` tool with `--features cuda` into
#                                gpu-bin/ and gpu-bin.tar.xz (GPU_BIN to change it; copy either
#                                to the GPU machine).
#                                Also exports SmolLM2's tokenizer (from the GGUF, with the
#                                PYTHON that has transformers) and alpaca_en_demo into
#                                gpu-bin/assets/ (a few MiB: the 94 MiB GGUF cannot travel to a
#                                lent GPU machine, which takes 64 MiB and reaches nothing outside).
#   scripts/gpu-check.sh run     on the GPU machine, from the repository root: runs every CUDA
#                                test with GRADIENTS_REQUIRE_GPU=1 (a missing GPU fails); then a
#                                10-step LoRA run of examples/alpaca-smollm2.toml on cpu, twice
#                                on cuda in f32 and twice on cuda in bf16 (mixed precision), and
#                                prints one table: per-step losses cpu vs cuda f32 (within 1e-2
#                                relative) and vs cuda bf16 (within 3e-2), each pair of cuda runs
#                                bit-identical, tokens/s of each; then, when torch + peft import,
#                                scripts/compare/run.sh in GPU mode, bf16 on both sides
#                                (train/eval tokens/s, GPU memory, MFU vs PEFT). Between the two,
#                                the criterion op benches on the GPU (short runs; per-op times for
#                                f32 and bf16 storage, the tensor-core attention included).
#                                The model: the cached SmolLM2 GGUF when present, else a
#                                SmolLM2-shaped model with seeded random weights made on the spot
#                                (scripts/compare/random_smollm2.py: same shapes, so the same
#                                kernels, GEMMs and memory; losses are a random model's).
# What the tests cover: tests/cuda_backend.rs (every Backend op and a tiny Llama's training
# steps vs the CPU backend, two GPU runs bit-identical, every kernel in the fatbin without
# spills), cuda_attention.rs, cuda_gemm.rs, cuda_runtime.rs, kernels_emu.rs (ptxas report).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GPU_BIN:-gpu-bin}
TESTS="cuda_backend cuda_runtime cuda_attention cuda_gemm kernels_emu"
CACHE=${GRADIENTS_CACHE:-$HOME/.cache/gradients}/assets
ASSET=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
PYTHON=${PYTHON:-python3}

build() {
    export NVCC=${NVCC:-$HOME/.cache/gradients/cuda-13.0/bin/nvcc}
    mkdir -p "$BIN"
    for t in $TESTS; do
        exe=$(cargo test --workspace --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
            jq -r 'select(.executable != null and .target.name == "'"$t"'") | .executable' | tail -1)
        [ -n "$exe" ] || { echo "gpu-check: building test $t failed" >&2; exit 1; }
        cp "$exe" "$BIN/$t"
    done
    cargo build --workspace --features cuda --bin gradients -q
    cp "${CARGO_TARGET_DIR:-target}/debug/gradients" "$BIN/gradients"
    # The criterion op benches (release), for per-kernel GPU timings.
    exe=$(cargo bench --features cuda --bench ops --no-run --message-format=json 2>/dev/null |
        jq -r 'select(.executable != null and .target.name == "ops") | .executable' | tail -1)
    [ -n "$exe" ] || { echo "gpu-check: building bench ops failed" >&2; exit 1; }
    cp "$exe" "$BIN/ops"
    strip "$BIN"/* 2>/dev/null || true
    # The tokenizer and the data, for the GPU machine (the model itself cannot travel).
    local py=$PYTHON
    [ -x "$HOME/.cache/gradients/pyref/bin/python" ] && py=$HOME/.cache/gradients/pyref/bin/python
    bash scripts/fetch-assets.sh >/dev/null
    mkdir -p "$BIN/assets"
    cp "$CACHE/alpaca_en_demo.json" "$BIN/assets/"
    "$py" - "$ASSET" "$BIN/assets/tokenizer" <<'PY'
import os, sys
from transformers import AutoTokenizer
d, f = os.path.split(os.path.abspath(sys.argv[1]))
AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(sys.argv[2])
PY
    # Compressed for carrying to the GPU machine (~11 MB per stripped binary uncompressed).
    tar -cJf "$BIN.tar.xz" "$BIN"
    ls -la "$BIN" "$BIN.tar.xz"
}

# One training run: $1 device, $2 output dir, $3 precision (default f32); prints the
# summary's JSON line.
train() {
    local cfg="$2/run.toml"
    mkdir -p "$2"
    sed -e "s#^output_dir = .*#output_dir = \"$2/out\"#" \
        -e "s#^token_budget = .*#max_steps = 10#" \
        -e "s#^model = .*#model = \"$MODEL\"#" \
        -e "s#^dataset = .*#dataset = \"$DATA\"#" \
        -e "s#^save_every = .*#skip_eval = true#" examples/alpaca-smollm2.toml >"$cfg"
    "$BIN/gradients" train --config "$cfg" --fresh --device "$1" --precision "${3:-f32}" --json | tail -1
}

run() {
    if [ ! -d "$BIN" ] && [ -f "$BIN.tar.xz" ]; then tar -xJf "$BIN.tar.xz"; fi
    export GRADIENTS_REQUIRE_GPU=1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    local failed=0
    for t in $TESTS; do
        echo "== $t"
        if ! "$BIN/$t" --test-threads=1 2>&1 | tail -25; then failed=1; fi
    done
    local tmp
    tmp=$(mktemp -d)
    DATA=$CACHE/alpaca_en_demo.json
    [ -f "$DATA" ] || DATA=$PWD/$BIN/assets/alpaca_en_demo.json
    if [ -f "$ASSET" ]; then
        MODEL=$ASSET
    else
        echo "== $ASSET not here: a SmolLM2-shaped model with random weights"
        MODEL=$tmp/model
        "$PYTHON" scripts/compare/random_smollm2.py --out "$MODEL" --tokenizer "$BIN/assets/tokenizer" || exit 1
    fi
    echo "== SmolLM2-135M LoRA, 10 steps: cpu; cuda f32 twice; cuda bf16 twice"
    train cpu "$tmp/cpu" >"$tmp/cpu.json"
    train cuda "$tmp/cuda1" >"$tmp/cuda1.json"
    train cuda "$tmp/cuda2" >"$tmp/cuda2.json"
    train cuda "$tmp/bf1" bf16 >"$tmp/bf1.json"
    train cuda "$tmp/bf2" bf16 >"$tmp/bf2.json"
    python3 - "$tmp" <<'PY' || failed=1
import json, sys
d = sys.argv[1]
r = {k: json.load(open(f"{d}/{k}.json")) for k in ["cpu", "cuda1", "cuda2", "bf1", "bf2"]}
c, g, b = r["cpu"]["losses"], r["cuda1"]["losses"], r["bf1"]["losses"]
print(f"{'step':>4} {'cpu loss':>10} {'cuda f32':>10} {'rel diff':>9} {'cuda bf16':>10} {'rel diff':>9}")
worst, worst_bf = 0.0, 0.0
for i, (x, y, z) in enumerate(zip(c, g, b)):
    rel, rel_bf = abs(x - y) / abs(x), abs(x - z) / abs(x)
    worst, worst_bf = max(worst, rel), max(worst_bf, rel_bf)
    print(f"{i + 1:>4} {x:>10.5f} {y:>10.5f} {rel:>9.2e} {z:>10.5f} {rel_bf:>9.2e}")
same = g == r["cuda2"]["losses"] and len(g) == len(c) == 10
same_bf = b == r["bf2"]["losses"] and len(b) == 10
tps = {k: f"{r[k]['tokens_per_s']:.0f}" for k in ["cpu", "cuda1", "bf1"]}
print(f"tokens/s: cpu {tps['cpu']}, cuda f32 {tps['cuda1']}, cuda bf16 {tps['bf1']}")
print(f"cuda f32 runs bit-identical: {same}; worst cpu/cuda loss difference {worst:.2e} (limit 1e-2)")
print(f"cuda bf16 runs bit-identical: {same_bf}; worst cpu/bf16 loss difference {worst_bf:.2e} (limit 3e-2)")
sys.exit(0 if same and same_bf and worst <= 1e-2 and worst_bf <= 3e-2 else 1)
PY
    echo "== criterion: the ops on the GPU (cuda_ benches, f32 and bf16 storage; short runs)"
    "$BIN/ops" --bench cuda_ --warm-up-time 0.5 --measurement-time 1 --noplot 2>&1 |
        grep -E "^cuda_|time:|thrpt:|skipped" || failed=1
    if "$PYTHON" -c "import torch, peft, transformers" 2>/dev/null; then
        echo "== vs PyTorch + PEFT on the GPU (bf16), batch 8 x seq 1024, 10 steps"
        DEVICE=cuda GRADIENTS_BIN=$BIN/gradients MODEL=$MODEL PYTHON=$PYTHON \
            bash scripts/compare/run.sh 8 1024 10 1 || failed=1
    else
        echo "gpu-check: torch/peft/transformers not importable; skipping the PEFT comparison"
    fi
    exit $failed
}

case "${1:-}" in
build) build ;;
run) run ;;
*) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
