#!/usr/bin/env python3
"""A SmolLM2-135M-shaped Llama with seeded random weights, as an HF directory.

For machines that cannot fetch the real GGUF (the lent GPU machines reach nothing outside and
take at most 64 MiB of files; the GGUF is 94 MiB): same architecture and shapes as
SmolLM2-135M-Instruct (30 layers, hidden 576, MLP 1536, 9 heads / 3 kv heads, vocab 49,152,
tied embeddings, rope theta 100,000, 8,192 positions), so every kernel, GEMM and memory plan
sees the real model's sizes; only the values differ. Throughput, peak memory and CPU/GPU
agreement are measured the same way; losses are those of a random model (≈ ln 49,152).

    python scripts/compare/random_smollm2.py --out DIR [--tokenizer TOKDIR] [--seed 0]

--tokenizer copies tokenizer.json / tokenizer_config.json / chat_template.jinja from TOKDIR
(`scripts/gpu-check.sh build` exports them from the GGUF), so `gradients train` can run on
text data. Needs torch, transformers, safetensors.
"""
import argparse
import os
import shutil


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, hidden_act="silu", initializer_range=0.041666666666666664,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if args.tokenizer:
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
            src = os.path.join(args.tokenizer, f)
            if os.path.exists(src):
                shutil.copy(src, tmp)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: SmolLM2-135M-shaped, {n / 1e6:.1f}M parameters, seed {args.seed}")


if __name__ == "__main__":
    main()
