"""PyTorch parity fixtures for the engine: tiny random models, a PEFT LoRA, a batch, and the
reference logits, losses, LoRA gradients and 5 AdamW steps computed by transformers + peft.

Regenerate (from the repository root; CPU only, a few seconds):

    /root/.cache/gradients/pyref/bin/python tools/make_parity_fixtures.py

It writes tests/fixtures/parity/<name>/ for three models (see MODELS below):

- ``config.json``, ``model.safetensors``: ``save_pretrained(safe_serialization=True)``, float32.
- ``adapter_config.json``, ``adapter_model.safetensors``: PEFT's own ``save_pretrained`` of a
  LoRA (r=4, lora_alpha=8, dropout 0, all seven projections) whose ``lora_B`` was set to small
  random values so every gradient is non-trivial.
- ``batch.json``: ``{"input_ids": [[...], [...]], "labels": [[...], [...]]}``, batch 2, seq 16,
  labels in HF convention (unshifted: the model predicts ``labels[t+1]`` from position ``t``;
  -100 is ignored: prompt masking and right padding).
- ``expected.safetensors`` (all float32):
  ``logits`` [2,16,vocab] (adapter on); ``loss`` [1] (HF mean cross-entropy over the valid
  shifted targets, adapter on); ``base_loss`` [1] (adapter disabled); ``token_losses`` [2,16]
  (entry [b,t] is the cross-entropy of logits[b,t] against labels[b,t+1], 0 where ignored and
  in the last column); ``grad.<key>`` for every key of adapter_model.safetensors (d loss / d
  that LoRA tensor); ``adamw_losses`` [5] (loss before each of 5 torch.optim.AdamW steps,
  lr=1e-2, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01, constant LR, no clipping, on the
  LoRA tensors only, foreach=False); ``final.<key>``: the LoRA tensors after those 5 steps.
- ``meta.json``: hyper-parameters, shapes, seeds, library versions, key lists.

Self-checks at generation time: the saved adapter keys equal the live LoRA parameters with
".default" dropped; reloading the files (base + PeftModel.from_pretrained) reproduces the
logits and base loss bit for bit; ``token_losses`` average to ``loss``; and ``numpy_logits``,
a float64 forward written from the files alone (RoPE half-split, llama3 frequency bands,
GQA, biases, LoRA ``x·Aᵀ·Bᵀ·alpha/r``, tied/untied head), agrees with the logits to 1e-4.
Output is deterministic (PYTHONHASHSEED fixed, one thread): rerunning rewrites identical bytes.

Naming in transformers 5.x / peft 0.21 (checked by this script at run time):

- config.json has no top-level ``rope_theta`` / ``rope_scaling``: both live in
  ``rope_parameters`` = {"rope_theta": ..., "rope_type": "default" | "llama3", and for llama3
  "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}.
  Older checkpoints (transformers 4.x, most of the Hub) use top-level ``rope_theta`` and
  ``rope_scaling`` instead: a loader must accept both.
- Qwen2's config.json has neither ``attention_bias`` nor ``head_dim``: q/k/v always carry a
  bias and head_dim = hidden_size / num_attention_heads. Llama writes both fields.
- A tied model's model.safetensors has no ``lm_head.weight`` (only model.embed_tokens.weight).
- Model tensor names: ``model.embed_tokens.weight``, ``model.norm.weight``, ``lm_head.weight``,
  ``model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight``,
  ``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, (qwen2) ``...{q,k,v}_proj.bias``,
  ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``; Linear weights are [out, in].
- Adapter keys (the adapter name "default" is dropped on save):
  ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` [r, in] and
  ``...lora_B.weight`` [out, r], likewise for k/v/o_proj and mlp.{gate,up,down}_proj.
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")
BATCH, SEQ, VOCAB = 2, 16, 128
LORA_R, LORA_ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
ADAMW_STEPS = 5

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=64,
)

# name -> (model class, config). Sizes are small so each directory stays well under 300 KB.
MODELS = {
    # GQA (4 query heads, 2 kv heads), head_dim 8 = hidden/heads, lm_head tied to the embedding.
    "llama_tied": (
        LlamaForCausalLM,
        lambda: LlamaConfig(**COMMON, head_dim=8, tie_word_embeddings=True),
    ),
    # Untied lm_head, llama3 RoPE scaling, explicit head_dim 16 (q width 64 != hidden 32).
    # With theta 1e4 and head_dim 16 the wavelengths 2*pi/inv_freq are 6.3, 19.9, 62.8, ...:
    # original_max_position_embeddings 32 and factors (1, 4) put the first frequency in the
    # high band (kept), the second in the smooth band and the rest in the low band (/ factor).
    "llama3_untied": (
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **COMMON,
            head_dim=16,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    # Qwen2: biases on q/k/v (randomised below), tied lm_head like Qwen2.5-0.5B.
    "qwen2_bias": (
        Qwen2ForCausalLM,
        lambda: Qwen2Config(**COMMON, tie_word_embeddings=True),
    ),
}


def randomise(model, gen):
    """Weights with O(1) activations so logits and losses are far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:  # std 0.3: tied logits stay O(1)
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:  # Linear [out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def make_batch(gen):
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100  # prompt of 5 tokens
    labels[1, :7] = -100  # prompt of 7 tokens ...
    ids[1, 13:] = 0  # ... and 3 tokens of right padding
    labels[1, 13:] = -100
    return ids, labels


def peft_key(param_name):
    """Parameter name of the live model -> the key PEFT saves (adapter name dropped)."""
    return param_name.replace(".default.", ".")


def lora_params(model):
    return {peft_key(n): p for n, p in model.named_parameters() if "lora_" in n}


def token_losses(logits, labels):
    out = torch.zeros(labels.shape, dtype=torch.float32)
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    out[:, :-1] = ce.reshape(labels.shape[0], -1)
    return out


def numpy_logits(out):
    """An independent float64 forward from the written files only (no transformers), as a
    check of the files and a plain statement of the math the engine must match."""
    cfg = json.load(open(os.path.join(out, "config.json")))
    acfg = json.load(open(os.path.join(out, "adapter_config.json")))
    w = {k: v.double().numpy() for k, v in load_file(os.path.join(out, "model.safetensors")).items()}
    lora = {k: v.double().numpy()
            for k, v in load_file(os.path.join(out, "adapter_model.safetensors")).items()}
    ids = np.array(json.load(open(os.path.join(out, "batch.json")))["input_ids"])
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    rp = cfg["rope_parameters"]
    inv = 1.0 / rp["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    if rp["rope_type"] == "llama3":
        old, lo, hi, f = (rp["original_max_position_embeddings"], rp["low_freq_factor"],
                          rp["high_freq_factor"], rp["factor"])
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(medium, (1 - smooth) * scaled / f + smooth * scaled, scaled)
    pos = np.arange(ids.shape[1])[:, None] * inv[None, :]  # [seq, hd/2]
    cos, sin = np.cos(pos), np.sin(pos)
    scaling = acfg["lora_alpha"] / acfg["r"]

    def rms(x, wt):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * wt

    def linear(x, prefix):
        y = x @ w[prefix + ".weight"].T
        if prefix + ".bias" in w:
            y = y + w[prefix + ".bias"]
        a = lora.get("base_model.model." + prefix + ".lora_A.weight")
        if a is not None:
            y = y + (x @ a.T @ lora["base_model.model." + prefix + ".lora_B.weight"].T) * scaling
        return y

    def rope(x):  # [b, s, heads, hd], HF half-split
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    b, s = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((s, s), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        xn = rms(x, w[p + "input_layernorm.weight"])
        q = rope(linear(xn, p + "self_attn.q_proj").reshape(b, s, nh, hd))
        k = rope(linear(xn, p + "self_attn.k_proj").reshape(b, s, nkv, hd))
        v = linear(xn, p + "self_attn.v_proj").reshape(b, s, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)
        sc = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd) + mask
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        att = np.einsum("bhqk,bkhd->bqhd", pr, v).reshape(b, s, nh * hd)
        x = x + linear(att, p + "self_attn.o_proj")
        xn = rms(x, w[p + "post_attention_layernorm.weight"])
        g, u = linear(xn, p + "mlp.gate_proj"), linear(xn, p + "mlp.up_proj")
        x = x + linear(g / (1 + np.exp(-g)) * u, p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    assert ("lm_head.weight" in w) != cfg["tie_word_embeddings"]
    return x @ head.T


def build(name, cls, make_config, seed):
    out = os.path.join(ROOT, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    config = make_config()
    config._attn_implementation = "eager"
    config.dtype = "float32"
    model = cls(config).to(torch.float32)
    assert model.config._attn_implementation == "eager"
    randomise(model, gen)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))

    lcfg = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(out, safe_serialization=True)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))

    # The saved keys must be exactly the live LoRA parameters with ".default" dropped.
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))
    live = lora_params(pm)
    assert sorted(saved) == sorted(live), (sorted(saved)[:3], sorted(live)[:3])
    for k, v in saved.items():
        assert v.dtype == torch.float32 and torch.equal(v, live[k].detach()), k
    keys = sorted(saved)

    ids, labels = make_batch(gen)
    with open(os.path.join(out, "batch.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)

    expected = {}
    pm.train()  # dropout is 0, so train/eval agree; train() mirrors a training step
    res = pm(input_ids=ids, labels=labels)
    loss = res.loss
    expected["logits"] = res.logits.detach().clone()
    expected["loss"] = loss.detach().reshape(1).clone()
    tl = token_losses(res.logits.detach(), labels)
    n_valid = int((labels[:, 1:] != -100).sum())
    assert abs(float(tl.sum()) / n_valid - loss.item()) < 1e-5
    expected["token_losses"] = tl
    loss.backward()
    for k in keys:
        g = live[k].grad
        assert g is not None and float(g.abs().max()) > 0, k
        expected["grad." + k] = g.detach().clone()
    pm.zero_grad(set_to_none=True)
    with torch.no_grad(), pm.disable_adapter():
        expected["base_loss"] = pm(input_ids=ids, labels=labels).loss.reshape(1).clone()

    # Reloading the files must give the same logits and base loss (round trip). The base is
    # loaded from a copy without adapter files: transformers 5 would load the adapter itself.
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(out, f), tmp)
        base2 = cls.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
        base2_loss = base2(input_ids=ids, labels=labels).loss.reshape(1)
        torch.testing.assert_close(base2_loss, expected["base_loss"], rtol=0, atol=0)
        pm2 = peft.PeftModel.from_pretrained(base2, out)
        torch.testing.assert_close(pm2(input_ids=ids).logits, expected["logits"], rtol=0, atol=0)

    params = [live[k] for k in keys]
    opt = torch.optim.AdamW(params, foreach=False, **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        step_loss = pm(input_ids=ids, labels=labels).loss
        losses.append(step_loss.item())
        step_loss.backward()
        opt.step()
    assert losses[0] == loss.item()
    expected["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    for k in keys:
        expected["final." + k] = live[k].detach().clone()

    expected = {k: v.contiguous().to(torch.float32) for k, v in expected.items()}
    save_file(expected, os.path.join(out, "expected.safetensors"))
    ref = numpy_logits(out)
    err = float(np.abs(ref - expected["logits"].double().numpy()).max())
    assert err < 1e-4, (name, "numpy forward disagrees with transformers", err)

    with open(os.path.join(out, "config.json")) as f:
        cfg_json = json.load(f)
    model_tensors = load_file(os.path.join(out, "model.safetensors"))
    meta = {
        "name": name,
        "generator": "tools/make_parity_fixtures.py",
        "seed": seed,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "model_type": cfg_json["model_type"],
        "config": {
            k: cfg_json.get(k)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "rms_norm_eps",
                "rope_parameters",
                "max_position_embeddings",
                "tie_word_embeddings",
                "attention_bias",
            )
        },
        "effective_head_dim": pm.base_model.model.model.layers[0].self_attn.head_dim,
        "attn_implementation": "eager",
        "dtype": "float32",
        "init": "embed 0.3*N(0,1); Linear N(0,1/in); norms 1+0.1*N(0,1); biases 0.1*N(0,1)",
        "lora": {
            "r": LORA_R,
            "lora_alpha": LORA_ALPHA,
            "scaling": LORA_ALPHA / LORA_R,
            "lora_dropout": 0.0,
            "target_modules": TARGETS,
            "init": "lora_A: PEFT default (kaiming uniform); lora_B: 0.1*N(0,1)",
        },
        "batch": {
            "batch": BATCH,
            "seq": SEQ,
            "labels": "HF convention (unshifted, model shifts); -100 ignored",
            "valid_targets": n_valid,
        },
        "loss": "mean cross-entropy over valid shifted targets (HF ForCausalLMLoss)",
        "adamw": {
            "optimizer": "torch.optim.AdamW(foreach=False)",
            "lr": ADAMW["lr"],
            "betas": list(ADAMW["betas"]),
            "eps": ADAMW["eps"],
            "weight_decay": ADAMW["weight_decay"],
            "steps": ADAMW_STEPS,
            "schedule": "constant",
            "grad_clip": None,
            "losses": "adamw_losses[i] is the loss before update i+1 (adamw_losses[0] == loss)",
        },
        "model_tensors": {k: list(v.shape) for k, v in sorted(model_tensors.items())},
        "adapter_keys": {k: list(saved[k].shape) for k in keys},
        "expected": {k: list(v.shape) for k, v in sorted(expected.items())},
        "results": {
            "loss": loss.item(),
            "base_loss": float(expected["base_loss"]),
            "adamw_losses": losses,
        },
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    assert size < 300_000, (name, size)
    print(f"{name}: loss {loss.item():.6f} base {float(expected['base_loss']):.6f} "
          f"adamw {[round(x, 5) for x in losses]} numpy-vs-torch {err:.1e} ({size} bytes)")


def main():
    # PEFT stores target_modules from a set: fix the hash seed so adapter_config.json is stable.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for seed, (name, (cls, make_config)) in enumerate(MODELS.items()):
        build(name, cls, make_config, 1234 + seed)


if __name__ == "__main__":
    main()
