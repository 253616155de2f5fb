#!/usr/bin/env python3
"""Reference values of dequantised SmolLM2 GGUF tensors, for engine tests (tests/gguf_real.rs).

Reads the GGUF with the `gguf` package (llama.cpp's own Python reader and dequantiser),
reshapes each tensor to HF order, undoes llama.cpp's Q/K row permutation with numpy
(reshape [n_head, head_dim/2, 2, in] -> swap axes 1, 2), and prints, per tensor, a few
elements at fixed [row, col] positions and the float64 sum of all elements.

Usage: /root/.cache/gradients/pyref/bin/python tools/gguf_reference.py [path/to/model.gguf]
"""

import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

DEFAULT = os.path.join(
    os.environ.get("GRADIENTS_CACHE", os.path.expanduser("~/.cache/gradients")),
    "assets",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)

# (tensor, heads to unpermute by or None)
TENSORS = [
    ("token_embd.weight", None),
    ("blk.0.attn_q.weight", 9),
    ("blk.0.attn_k.weight", 3),
    ("blk.0.attn_v.weight", None),
    ("blk.29.ffn_down.weight", None),
    ("output_norm.weight", None),
]
POSITIONS = [(0, 0), (1, 5), (2, 31), (33, 100), (63, 575), (64, 7)]


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    for name, heads in TENSORS:
        t = by_name[name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if heads is not None:
            w = unpermute(w, heads)
        if w.ndim == 1:
            vals = [(r, 0, float(w[r])) for r, _ in POSITIONS if r < w.shape[0]]
        else:
            vals = [(r, c, float(w[r, c])) for r, c in POSITIONS]
        entries = ", ".join(f"({r}, {c}, {v!r})" for r, c, v in vals)
        total = float(w.astype(np.float64).sum())
        print(f'    ("{name}", {total!r}, &[{entries}]),')


if __name__ == "__main__":
    main()
