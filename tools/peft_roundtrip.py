"""Interop check of the Rust loaders against transformers + PEFT (not part of `cargo test`).

Usage (with the reference venv; export CARGO_TARGET_DIR to reuse a build):
    /root/.cache/gradients/pyref/bin/python tools/peft_roundtrip.py   # all three phases

1. prepare: tiny random Llama (untied, GQA) and Qwen2 (tied, q/k/v bias) models saved with
   `save_pretrained`, a PEFT LoRA adapter on all seven projections with random A and B
   (rsLoRA, dropout, alpha 12) saved by PEFT, and reference logits of both.
2. rust: `cargo test --test loaders_pyref -- --ignored` reads those with load_hf_model and
   read_peft_adapter and writes them back with save_hf_model and write_peft_adapter.
3. check: transformers loads the models the engine wrote and PEFT loads the adapter it
   wrote (PeftModel.from_pretrained); their logits must equal the references.
Exits non-zero on any mismatch.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100, 7, 3]])


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def prepare(work):
    torch.manual_seed(0)
    small = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    models = {
        "llama": LlamaConfig(**small, tie_word_embeddings=False, rope_theta=50000.0,
                             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=[2, 3]),
        "qwen2": Qwen2Config(**small, tie_word_embeddings=True),
    }
    for name, cfg in models.items():
        model = AutoModelForCausalLM.from_config(cfg).float()
        with torch.no_grad():  # give norms non-trivial weights
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.uniform_(0.5, 1.5)
        model.save_pretrained(os.path.join(work, f"{name}_base"))
        torch.save(logits(model), os.path.join(work, f"{name}_base_logits.pt"))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(work, "llama_base"))
    lora = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.1, target_modules=TARGETS,
                      use_rslora=True, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(os.path.join(work, "peft_ref"))
    torch.save(logits(peft_model), os.path.join(work, "peft_logits.pt"))


def check(work):
    failures = []
    for name in ["llama", "qwen2"]:
        ours = AutoModelForCausalLM.from_pretrained(os.path.join(work, f"{name}_ours"))
        ref = torch.load(os.path.join(work, f"{name}_base_logits.pt"))
        diff = (logits(ours) - ref).abs().max().item()
        print(f"{name}: model written by the engine, max |logit diff| = {diff:.3g}")
        if diff > 1e-5:
            failures.append(name)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(work, "llama_base"))
    peft_model = PeftModel.from_pretrained(base, os.path.join(work, "peft_ours"))
    cfg = peft_model.peft_config["default"]
    print(f"peft config read back: r={cfg.r} alpha={cfg.lora_alpha} dropout={cfg.lora_dropout} "
          f"rslora={cfg.use_rslora} targets={sorted(cfg.target_modules)}")
    if (cfg.r, cfg.lora_alpha, cfg.use_rslora, sorted(cfg.target_modules)) != (
            4, 12, True, sorted(TARGETS)) or abs(cfg.lora_dropout - 0.1) > 1e-9:
        failures.append("peft config")
    ref = torch.load(os.path.join(work, "peft_logits.pt"))
    diff = (logits(peft_model) - ref).abs().max().item()
    base_ref = torch.load(os.path.join(work, "llama_base_logits.pt"))
    effect = (ref - base_ref).abs().max().item()
    print(f"adapter written by the engine: max |logit diff| = {diff:.3g} "
          f"(adapter's own effect on logits: {effect:.3g})")
    if diff > 1e-5 or effect < 1e-2:
        failures.append("peft adapter")
    return failures


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as work:
        prepare(work)
        env = dict(os.environ, GRADIENTS_PYREF_DIR=work)
        subprocess.run(["cargo", "test", "--test", "loaders_pyref", "--", "--ignored",
                        "--nocapture"], cwd=root, env=env, check=True)
        failures = check(work)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("OK: transformers and PEFT load what the engine writes, bit for bit")


if __name__ == "__main__":
    main()
