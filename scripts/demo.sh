#!/usr/bin/env bash
# The main job on the embedded default: local, CPU, the real small model.
# Fetches SmolLM2-135M-Instruct (GGUF) and the demo data into ~/.cache/gradients, builds the
# `gradients` tool, shows the model, asks it a question, fine-tunes a LoRA adapter on the
# train split and evaluates it on the held-out test split (loss before and after).
# Safe to re-run: downloads and builds are cached.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== fetching assets (cached after the first run)"
ASSETS="$(bash scripts/fetch-assets.sh)"
GGUF="$(echo "$ASSETS" | grep '\.gguf$')"

echo "== building (release)"
cargo build --release -q -p gradients-subnet
G=target/release/gradients

echo "== the model"
"$G" inspect "$GGUF"

echo "== greedy answer to \"What is the capital of France?\""
"$G" generate --model "$GGUF" --prompt "What is the capital of France?" --max-tokens 24

echo "== LoRA fine-tune on alpaca_en_demo (train split, 20k-token budget), test loss before/after"
"$G" train --config examples/alpaca-smollm2.toml --fresh

echo "== the fine-tuned adapter answers"
"$G" generate --model "$GGUF" --adapter target/demo-alpaca-smollm2/adapter \
    --prompt "Give three tips for staying healthy." --max-tokens 48

echo "== a local tournament: three methods (examples/methods), same engine, seed and token budget,"
echo "   on instruct (alpaca), DPO (dpo_en_demo) and GRPO (examples/grpo-prompts.json) tasks;"
echo "   evaluation at 512 tokens keeps it a demo"
"$G" tournament run --db target/demo-tournament.db --methods examples/methods --eval-seq-len 512
"$G" chain metagraph --db target/demo-tournament.db
