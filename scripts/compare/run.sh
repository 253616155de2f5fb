#!/usr/bin/env bash
# Side-by-side CPU comparison on one machine, same settings: `gradients bench` vs PyTorch +
# transformers + PEFT (scripts/compare/torch_peft.py) on SmolLM2-135M, LoRA r=8 on all seven
# projections, AdamW, batch x seq tokens, THREADS threads, fp32. Prints both JSON lines and a
# table with the ratios.
# Usage: PYTHON=/path/to/python-with-torch bash scripts/compare/run.sh [BATCH] [SEQ] [STEPS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH="${1:-4}"; SEQ="${2:-256}"; STEPS="${3:-5}"; THREADS="${4:-2}"
PYTHON="${PYTHON:-python3}"
GGUF="$(bash scripts/fetch-assets.sh | grep '\.gguf$')"
cargo build --release -q -p gradients-subnet
ours="$(target/release/gradients bench --model "$GGUF" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --threads "$THREADS")"
echo "$ours"
theirs="$(OMP_NUM_THREADS="$THREADS" "$PYTHON" scripts/compare/torch_peft.py --gguf "$GGUF" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --threads "$THREADS" 2>/dev/null | tail -n 1)"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'':28}{'gradients':>12}{'torch+peft':>12}{'ratio':>8}")
for k, better in [("train_tokens_per_s", "up"), ("eval_tokens_per_s", "up"), ("peak_rss_mib", "down")]:
    r = a[k] / b[k]
    print(f"{k:28}{a[k]:12.1f}{b[k]:12.1f}{r:8.2f}x")
print(f"{'first loss':28}{a['losses'][0]:12.4f}{b['losses'][0]:12.4f}")
PY
