"""Interop fixtures: PEFT loads the engine's adapters, and transformers loads its merges.

Regenerate (from the repository root; export CARGO_TARGET_DIR to reuse a build):

    /root/.cache/gradients/pyref/bin/python tools/make_interop_fixtures.py [--gguf]

1. Rust half (`cargo test --test interop_peft write_fixture_adapter -- --ignored`): the
   engine saves a deterministic LoRA adapter for tests/fixtures/parity/llama3_untied into
   tests/fixtures/interop/adapter/ and merges it into that base (engine `lora::merge`) in a
   temporary directory.
2. PEFT: `PeftModel.from_pretrained(base, adapter)` must read back the engine's config
   (r, alpha, rsLoRA, dropout, targets); its logits on IDS are `peft_logits`, the base's
   `base_logits`.
3. transformers: `from_pretrained(merged dir)` gives `merged_logits`; they must equal the
   PEFT logits to 1e-5, and the merged weights must equal PEFT's own `merge_and_unload`.
4. Writes tests/fixtures/interop/expected.safetensors and meta.json (deterministic).

`--gguf` (manual, needs the real assets): the engine merges a random adapter into the
SmolLM2-135M GGUF with `gradients merge`; transformers loads the merged directory (model and
tokenizer) and its logits are compared with transformers' own GGUF loader + PEFT adapter.
tests/interop_peft.rs checks the committed fixtures on every `cargo test`.
Exits non-zero on any mismatch.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests/fixtures/parity/llama3_untied")
OUT = os.path.join(ROOT, "tests/fixtures/interop")
IDS = [39, 54, 111, 46, 59, 14, 126, 61, 90, 40, 29, 38]  # = IDS in tests/interop_peft.rs
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().contiguous()


def cargo(args, env):
    subprocess.run(["cargo"] + args, cwd=ROOT, env=env, check=True)


def fixtures(work, failures):
    env = dict(os.environ, GRADIENTS_INTEROP_DIR=work)
    cargo(["test", "--workspace", "--test", "interop_peft", "write_fixture_adapter", "--", "--ignored",
           "--nocapture"], env)
    # only the model files: transformers would also load the parity adapter beside them
    plain = os.path.join(work, "base")
    os.makedirs(plain)
    for f in ["config.json", "model.safetensors"]:
        shutil.copy(os.path.join(BASE, f), plain)
    base = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
    if hasattr(base, "peft_config"):
        failures.append("base model came with an adapter")
    base_logits = logits(base, IDS)
    model = PeftModel.from_pretrained(base, os.path.join(OUT, "adapter"))
    cfg = model.peft_config["default"]
    print(f"peft read: r={cfg.r} alpha={cfg.lora_alpha} rslora={cfg.use_rslora} "
          f"dropout={cfg.lora_dropout} targets={sorted(cfg.target_modules)}")
    if (cfg.r, cfg.lora_alpha, cfg.use_rslora, sorted(cfg.target_modules)) != (
            4, 12, True, sorted(TARGETS)) or abs(cfg.lora_dropout - 0.05) > 1e-6:
        failures.append("adapter config as read by PEFT")
    peft_logits = logits(model, IDS)
    effect = (peft_logits - base_logits).abs().max().item()
    print(f"adapter's effect on the logits: {effect:.3g}")
    if effect < 1e-2:
        failures.append("adapter has no effect")

    merged = AutoModelForCausalLM.from_pretrained(os.path.join(work, "merged"),
                                                  dtype=torch.float32)
    merged_logits = logits(merged, IDS)
    diff = (merged_logits - peft_logits).abs().max().item()
    print(f"transformers on the engine's merge vs base + PEFT: max |logit diff| = {diff:.3g}")
    if diff > 1e-5:
        failures.append("merged logits")
    ref = model.merge_and_unload().state_dict()
    ours = merged.state_dict()
    wdiff = max((ours[k] - v).abs().max().item() for k, v in ref.items())
    print(f"merged weights vs PEFT merge_and_unload: max |diff| = {wdiff:.3g}")
    if set(ref) != set(ours) or wdiff > 1e-6:
        failures.append("merged weights")

    save_file({"base_logits": base_logits, "peft_logits": peft_logits,
               "merged_logits": merged_logits},
              os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})
    meta = {
        "ids": IDS, "base": "tests/fixtures/parity/llama3_untied",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "peft_config": {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora,
                        "lora_dropout": cfg.lora_dropout,
                        "target_modules": sorted(cfg.target_modules)},
        "adapter_effect_max_abs": round(effect, 6),
        "merged_vs_peft_max_abs": diff,
        "merged_weights_vs_merge_and_unload_max_abs": wdiff,
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def gguf_check(work, failures):
    """Manual: transformers on `gradients merge` of the real GGUF vs its own GGUF loader."""
    assets = os.path.expanduser(os.environ.get("GRADIENTS_CACHE", "~/.cache/gradients"))
    gguf = os.path.join(assets, "assets", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(gguf):
        print(f"skipping --gguf: {gguf} missing")
        return
    env = dict(os.environ, GRADIENTS_INTEROP_DIR=work)
    cargo(["test", "--workspace", "--test", "interop_peft", "write_gguf_adapter", "--", "--ignored",
           "--nocapture"], env)
    adapter = os.path.join(work, "smollm2_adapter")
    out = os.path.join(work, "smollm2_merged")
    cargo(["run", "-q", "-p", "gradients-subnet", "--", "merge", "--model", gguf,
           "--adapter", adapter, "--out", out], env)
    tok_ref = AutoTokenizer.from_pretrained(os.path.dirname(gguf),
                                            gguf_file=os.path.basename(gguf))
    tok = AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text)["input_ids"]
    print(f"tokenizer of the merged dir: {len(ids)} ids; GGUF tokenizer agrees: "
          f"{ids == tok_ref(text)['input_ids']}")
    if ids != tok_ref(text)["input_ids"]:
        failures.append("gguf merge tokenizer")
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf),
                                                gguf_file=os.path.basename(gguf),
                                                dtype=torch.float32)
    ref = logits(PeftModel.from_pretrained(base, adapter), ids)
    got = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), ids)
    diff = (got - ref).abs().max().item()
    print(f"gguf merge: transformers on the merged dir vs transformers GGUF + PEFT: "
          f"max |logit diff| = {diff:.3g}")
    if diff > 1e-3:
        failures.append("gguf merge logits")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    failures = []
    with tempfile.TemporaryDirectory() as work:
        fixtures(work, failures)
        if "--gguf" in sys.argv:
            gguf_check(work, failures)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("OK: PEFT loads the engine's adapter and transformers loads its merge")


if __name__ == "__main__":
    main()
