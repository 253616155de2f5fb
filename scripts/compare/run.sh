#!/usr/bin/env bash
# Side-by-side comparison on one machine, same settings: `gradients bench` vs PyTorch +
# transformers + PEFT (scripts/compare/torch_peft.py) on SmolLM2-135M, LoRA r=8 on all seven
# projections, AdamW, batch x seq tokens. Prints both JSON lines and a table with the ratios.
#
# CPU (default): fp32, THREADS threads on both sides; builds the release binary.
#   PYTHON=/path/to/python-with-torch bash scripts/compare/run.sh [BATCH] [SEQ] [STEPS] [THREADS]
# CPU in bf16 (DTYPE=bf16; needs AVX512_BF16 for the engine): torch loads the model in bf16,
# the engine runs `--precision bf16` (bf16 x bf16 -> f32 frozen-weight and lm_head products).
# GPU: DEVICE=cuda (torch in DTYPE, default bf16; the engine on its CUDA backend in the same
# precision; GPU memory compared as gpu_used_mib, total - free after each step). A GPU
# machine may have no Rust toolchain: GRADIENTS_BIN=path/to/gradients (built elsewhere)
# skips the build, and MODEL=path (a GGUF file or an HF directory, e.g. the SmolLM2-shaped
# random model of scripts/compare/random_smollm2.py) skips the asset fetch.
#   DEVICE=cuda GRADIENTS_BIN=./gradients MODEL=./model bash scripts/compare/run.sh 8 1024 10
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH="${1:-4}"; SEQ="${2:-256}"; STEPS="${3:-5}"; THREADS="${4:-2}"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cpu}"
DTYPE="${DTYPE:-$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)}"
MODEL="${MODEL:-${GGUF:-$(bash scripts/fetch-assets.sh | grep '\.gguf$')}}"
if [ -z "${GRADIENTS_BIN:-}" ]; then
    cargo build --release -q -p gradients-subnet
    GRADIENTS_BIN=target/release/gradients
fi
dev_args=(--precision "$([ "$DTYPE" = bf16 ] && echo bf16 || echo f32)")
# The engine runs in the precision torch runs in (on a GPU, bf16: mixed precision, bf16
# weights/activations, tensor-core GEMMs, f32 LoRA + AdamW; fp32: f32 throughout).
[ "$DEVICE" = cpu ] || dev_args+=(--device "$DEVICE")
ours="$("$GRADIENTS_BIN" bench --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --threads "$THREADS" "${dev_args[@]}")"
echo "$ours"
theirs="$(OMP_NUM_THREADS="$THREADS" "$PYTHON" scripts/compare/torch_peft.py --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE" 2>/dev/null | tail -n 1)"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'':28}{'gradients':>12}{'torch+peft':>12}{'ratio':>8}")
keys = [("train_tokens_per_s", "up"), ("eval_tokens_per_s", "up"), ("peak_rss_mib", "down")]
if "gpu_used_mib" in b:
    keys += [("gpu_used_mib", "down"), ("peak_gpu_mib", "down")]
for k, better in keys:
    if a.get(k) is None:
        print(f"{k:28}{'-':>12}{b[k]:12.1f}")
        continue
    r = a[k] / b[k]
    print(f"{k:28}{a[k]:12.1f}{b[k]:12.1f}{r:8.2f}x")
print(f"{'first loss':28}{a['losses'][0]:12.4f}{b['losses'][0]:12.4f}")
if "matmul_bf16_tflops" in b:
    # FLOPs per trained token of SmolLM2-135M LoRA (BENCHMARKS.md: 587.4 MFLOP at seq 256;
    # attention grows with seq, so this is a lower bound at longer sequences)
    peak = b["matmul_bf16_tflops"] * 1e12
    for side, r in [("gradients", a), ("torch+peft", b)]:
        print(f"MFU {side:23}{587.4e6 * r['train_tokens_per_s'] / peak * 100:11.1f}% "
              f"of the measured bf16 matmul rate {b['matmul_bf16_tflops']:.0f} TFLOP/s")
PY
