"""Reference values for engine/src/optim: HF learning-rate schedules, torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_.

Regenerate (from the repository root; CPU only, about a second):

    /root/.cache/gradients/pyref/bin/python tools/make_optim_fixtures.py

Writes tests/fixtures/adamw_torch.json and tests/fixtures/clip_torch.json, and prints the
schedule table that engine/src/optim/schedule.rs embeds in its tests (paste it there when
transformers changes).

adamw_torch.json: three float32 tensors (`shapes`, `init`), per-step gradients
`grads[step][tensor]` and learning rates `lrs[step]`, torch.optim.AdamW(foreach=False) with
`betas`, `eps`, `weight_decay`; `params[step][tensor]` after each update, and the final
`exp_avg[tensor]` / `exp_avg_sq[tensor]`.

clip_torch.json: `cases`, each with `max_norm`, `grads[tensor]` before clipping, `total_norm`
(torch's returned norm) and `clipped[tensor]` after clip_grad_norm_.
"""

import json
import os

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SHAPES = [[3, 4], [5], [2, 3]]


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def schedules():
    """Print `(kind, base_lr, warmup, total, [lr at step 0..total+2])` rows as Rust literals."""
    cases = [
        ("Constant", 3e-4, 3, 10),
        ("Constant", 1e-3, 0, 10),
        ("Linear", 3e-4, 3, 10),
        ("Linear", 2e-5, 0, 7),
        ("Cosine", 3e-4, 3, 10),
        ("Cosine", 1e-4, 0, 9),
        ("Cosine", 5e-4, 4, 4),
    ]
    makers = {
        "Constant": lambda o, w, t: get_constant_schedule_with_warmup(o, w),
        "Linear": lambda o, w, t: get_linear_schedule_with_warmup(o, w, t),
        "Cosine": lambda o, w, t: get_cosine_schedule_with_warmup(o, w, t),
    }
    print("// (kind, base_lr, warmup_steps, total_steps, lr at steps 0..=total_steps+2)")
    for kind, base, warmup, total in cases:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=base)
        sched = makers[kind](opt, warmup, total)
        lrs = []
        for _ in range(total + 3):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        vals = ", ".join(repr(float(x)) for x in lrs)
        print(f"(ScheduleKind::{kind}, {base!r}, {warmup}, {total}, &[{vals}]),")


def adamw():
    gen = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    init = [flat(p) for p in params]
    betas, eps, wd = (0.9, 0.999), 1e-8, 0.1
    lrs = [1e-2, 2e-2, 5e-3, 1e-2, 3e-3]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd, foreach=False)
    grads, after = [], []
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        step_grads = [torch.randn(s, generator=gen) for s in SHAPES]
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        grads.append([flat(g) for g in step_grads])
        after.append([flat(p) for p in params])
    out = {
        "generator": "tools/make_optim_fixtures.py",
        "torch": torch.__version__,
        "shapes": SHAPES,
        "betas": list(betas),
        "eps": eps,
        "weight_decay": wd,
        "lrs": lrs,
        "init": init,
        "grads": grads,
        "params": after,
        "exp_avg": [flat(opt.state[p]["exp_avg"]) for p in params],
        "exp_avg_sq": [flat(opt.state[p]["exp_avg_sq"]) for p in params],
    }
    with open(os.path.join(FIXTURES, "adamw_torch.json"), "w") as f:
        json.dump(out, f)


def clip():
    gen = torch.Generator().manual_seed(11)
    cases = []
    for max_norm, scale in [(0.5, 1.0), (1.0, 0.1), (2.0, 3.0)]:
        params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
        grads = [scale * torch.randn(s, generator=gen) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append({
            "max_norm": max_norm,
            "grads": [flat(g) for g in grads],
            "total_norm": float(total),
            "clipped": [flat(p.grad) for p in params],
        })
    out = {"generator": "tools/make_optim_fixtures.py", "torch": torch.__version__,
           "shapes": SHAPES, "cases": cases}
    with open(os.path.join(FIXTURES, "clip_torch.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    schedules()
    adamw()
    clip()
