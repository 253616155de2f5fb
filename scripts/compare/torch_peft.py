#!/usr/bin/env python3
"""PyTorch + transformers + PEFT side of the engine comparison (CPU, fp32).

Runs the same LoRA SFT step as `gradients bench` — SmolLM2-135M-Instruct loaded from the GGUF
(dequantised by transformers to fp32), LoRA on q,k,v,o,gate,up,down, AdamW, batch x seq tokens
of fixed pseudo-random ids with every position labelled — and prints one JSON object with
train tokens/s, eval tokens/s, peak RSS and the losses.

Usage (threads must match the engine's run):
    python scripts/compare/torch_peft.py --gguf PATH --batch 4 --seq 256 --steps 5 --threads 2
Needs: torch, transformers, peft, gguf (pip). Nothing here is used by the tests.
"""
import argparse
import json
import os
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    d, f = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"],
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    ntok = args.batch * args.seq

    model.train()
    losses = []
    t_train = 0.0
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(out.loss))
        if i >= args.warmup:
            t_train += dt

    model.eval()
    t_eval = 0.0
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=labels)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                t_eval += dt

    print(json.dumps({
        "engine": "torch+peft",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "train_tokens_per_s": ntok * args.steps / t_train,
        "eval_tokens_per_s": ntok * args.steps / t_eval,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
