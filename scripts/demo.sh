#!/usr/bin/env bash
# The main job on the embedded default: local, CPU, the real small model.
# Fetches SmolLM2-135M-Instruct (GGUF) and the demo data into ~/.cache/gradients, builds the
# `gradients` tool, shows the model, asks it a question, and measures LoRA training and
# evaluation on it. Safe to re-run: downloads and builds are cached.
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

echo "== LoRA training and evaluation speed (batch 4 x seq 256, r=8 on all 7 projections)"
"$G" bench --model "$GGUF" --batch 4 --seq 256 --steps 3
