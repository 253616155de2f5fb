#!/usr/bin/env python3
"""PyTorch + transformers + PEFT side of the engine comparison (CPU fp32, or a CUDA GPU).

Runs the same LoRA SFT step as `gradients bench` — SmolLM2-135M-Instruct loaded from the GGUF
(dequantised by transformers to fp32), LoRA on q,k,v,o,gate,up,down, AdamW, batch x seq tokens
of the same fixed pseudo-random ids with every position labelled — and prints one JSON object with
train tokens/s, eval tokens/s, peak RSS and the losses.

Usage (threads must match the engine's run):
    python scripts/compare/torch_peft.py --gguf PATH --batch 4 --seq 256 --steps 5 --threads 2
GPU mode (same step on `cuda`, weights and activations in --dtype, autocast off, timings
bracketed by torch.cuda.synchronize; peak memory = torch.cuda.max_memory_allocated (tensors) and
gpu_used_mib = the largest total - free after a step (what the engine reports too); also
measures the GPU's dense bf16 matmul rate so MFU can be quoted against it):
    python scripts/compare/torch_peft.py --gguf PATH --device cuda --dtype bf16 --batch 8 --seq 1024
Needs: torch, transformers, peft, gguf (pip). Nothing here is used by the tests.
"""
import argparse
import json
import os
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", "--model", dest="model", required=True,
                    help="a GGUF file or an HF model directory")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    if os.path.isdir(args.model):
        d, kw = args.model, {}
    else:
        d, f = os.path.split(os.path.abspath(args.model))
        kw = {"gguf_file": f}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    model = AutoModelForCausalLM.from_pretrained(d, **kw, torch_dtype=dtype,
                                                 attn_implementation="sdpa").to(dev)
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"],
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    vocab = model.config.vocab_size
    # The same splitmix64 token ids as `gradients bench`, so the first losses must agree.
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15

    def next_id():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return (z ^ (z >> 31)) % vocab

    ids = torch.tensor([[next_id() for _ in range(args.seq)] for _ in range(args.batch)],
                       device=dev)

    def sync():
        if gpu:
            torch.cuda.synchronize(dev)

    # GPU memory in use (total - free, as the driver sees it: the same measure as the
    # engine's gpu_used_mib), sampled after every step and evaluation
    used = [0]

    def sample_used():
        if gpu:
            free, total = torch.cuda.mem_get_info(dev)
            used[0] = max(used[0], total - free)

    if gpu:
        torch.cuda.reset_peak_memory_stats(dev)
    labels = ids.clone()
    ntok = args.batch * args.seq

    model.train()
    losses = []
    t_train = 0.0
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        losses.append(float(out.loss))
        if i >= args.warmup:
            t_train += dt
        sample_used()

    model.eval()
    t_eval = 0.0
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids, labels=labels)
            sync()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                t_eval += dt
            sample_used()

    extra = {}
    if gpu:
        extra["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        extra["gpu_used_mib"] = used[0] / 2**20
        extra["gpu"] = torch.cuda.get_device_name(dev)
        extra["matmul_bf16_tflops"] = matmul_rate(torch, dev) / 1e12
    print(json.dumps({
        "engine": "torch+peft",
        "torch": torch.__version__,
        "device": str(dev),
        "dtype": args.dtype,
        "threads": args.threads,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "train_tokens_per_s": ntok * args.steps / t_train,
        "eval_tokens_per_s": ntok * args.steps / t_eval,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "losses": losses,
        **extra,
    }))


def matmul_rate(torch, dev, n=8192, reps=20):
    """Dense bf16 GEMM rate (FLOP/s) of an n x n x n product: the MFU denominator."""
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
