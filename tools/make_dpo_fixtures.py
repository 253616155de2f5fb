"""DPO parity fixtures: the DPO loss and its LoRA gradients computed by transformers + PEFT on
the tiny ``llama_tied`` parity model (tests/fixtures/parity/llama_tied, written by
tools/make_parity_fixtures.py), for tests/dpo_parity.rs.

Regenerate (from the repository root; CPU only, a few seconds):

    /root/.cache/gradients/pyref/bin/python tools/make_dpo_fixtures.py

The DPO loss is written by hand (no TRL): for each pair, ``pi`` is the policy's summed
log-probability of the completion tokens given the prompt (prompt tokens masked, the model
shifts: the token at t is predicted from position t-1), ``rho`` the same with the adapter
disabled (``with model.disable_adapter()``, no grad), ``z = beta*((pi_c - rho_c) - (pi_r -
rho_r))`` and the loss is the mean over pairs of ``-logsigmoid(z)``, beta = 0.1. Every
sequence (prompt + completion) is its own forward, unpadded.

It writes tests/fixtures/dpo/:

- ``pairs.json``: ``{"beta": 0.1, "pairs": [{"prompt": [...], "chosen": [...], "rejected":
  [...]}, ...]}`` (token ids of the llama_tied vocabulary; completions never empty) and
  ``expected``: ``policy_logps`` / ``reference_logps`` ([chosen, rejected] per pair),
  ``per_pair_loss``, ``margins`` (z), ``loss`` (all as Python floats from float32 tensors).
- ``expected.safetensors``: ``grad.<key>`` (float32) for every key of the llama_tied
  adapter_model.safetensors: d loss / d that LoRA tensor.
- ``meta.json``: versions, seed, shapes.

Self-checks: ``pi`` equals minus the sum of the per-token cross-entropies of a labels-masked
forward (HF's loss times the number of targets); with the adapter disabled for the policy too
every loss is ln 2. Output is deterministic (one thread, fixed seed).
"""

import json
import math
import os
import shutil
import sys
import tempfile

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "tests", "fixtures", "parity", "llama_tied")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "dpo")
BETA = 0.1
SEED = 4321
# (prompt, chosen, rejected) lengths: different lengths, a one-token completion
SHAPES = [(4, 5, 3), (6, 2, 7), (3, 1, 4), (5, 6, 6)]


def logp(model, prompt, completion):
    """Summed log-prob of `completion` after `prompt` (one unpadded sequence)."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].float()  # [T, vocab]
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts ids[t+1]
    targets = ids[0, 1:]
    picked = logprobs.gather(1, targets[:, None])[:, 0]
    return picked[len(prompt) - 1:].sum()  # the completion tokens only


def hf_check(model, prompt, completion, lp):
    ids = torch.tensor([prompt + completion])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    loss = model(input_ids=ids, labels=labels).loss
    n = len(completion)
    got, want = float(-loss.detach() * n), float(lp.detach())
    assert abs(got - want) < 1e-4, (got, want)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(MODEL, f), tmp)
        base = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, MODEL, is_trainable=True)
    model.train()  # lora_dropout is 0: train and eval agree
    vocab = model.config.vocab_size
    pairs = []
    for p, c, r in SHAPES:
        ids = torch.randint(0, vocab, (p + c + r,), generator=gen).tolist()
        pairs.append({"prompt": ids[:p], "chosen": ids[p:p + c], "rejected": ids[p + c:]})

    params = {n.replace(".default.", "."): t for n, t in model.named_parameters() if "lora_" in n}
    saved = load_file(os.path.join(MODEL, "adapter_model.safetensors"))
    assert sorted(saved) == sorted(params)

    policy, reference, losses, margins = [], [], [], []
    total = 0.0
    for pair in pairs:
        pc = logp(model, pair["prompt"], pair["chosen"])
        pr = logp(model, pair["prompt"], pair["rejected"])
        hf_check(model, pair["prompt"], pair["chosen"], pc)
        with torch.no_grad(), model.disable_adapter():
            rc = logp(model, pair["prompt"], pair["chosen"])
            rr = logp(model, pair["prompt"], pair["rejected"])
            # the base model as its own policy: z = 0, loss ln 2
            same = BETA * ((logp(model, pair["prompt"], pair["chosen"]) - rc)
                           - (logp(model, pair["prompt"], pair["rejected"]) - rr))
            assert abs(-float(torch.nn.functional.logsigmoid(same)) - math.log(2)) < 1e-6
        z = BETA * ((pc - rc) - (pr - rr))
        loss = -torch.nn.functional.logsigmoid(z)
        total = total + loss
        policy.append([pc.item(), pr.item()])
        reference.append([rc.item(), rr.item()])
        losses.append(loss.item())
        margins.append(z.item())
    mean = total / len(pairs)
    mean.backward()
    grads = {}
    for k in sorted(params):
        g = params[k].grad
        assert g is not None and float(g.abs().max()) > 0, k
        grads["grad." + k] = g.detach().clone().contiguous().float()

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "pairs.json"), "w") as f:
        json.dump({
            "beta": BETA,
            "pairs": pairs,
            "expected": {
                "policy_logps": policy,
                "reference_logps": reference,
                "per_pair_loss": losses,
                "margins": margins,
                "loss": mean.item(),
            },
        }, f, indent=1)
    save_file(grads, os.path.join(OUT, "expected.safetensors"))
    meta = {
        "generator": "tools/make_dpo_fixtures.py",
        "model": "tests/fixtures/parity/llama_tied (model + adapter)",
        "seed": SEED,
        "beta": BETA,
        "shapes": SHAPES,
        "loss": "mean over pairs of -logsigmoid(beta*((pi_c-rho_c)-(pi_r-rho_r))); rho with the adapter disabled",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": sys.version.split()[0],
        },
        "grads": {k: list(v.shape) for k, v in grads.items()},
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"dpo: loss {mean.item():.6f} per pair {[round(x, 6) for x in losses]} "
          f"margins {[round(x, 6) for x in margins]}")


if __name__ == "__main__":
    main()
