#!/usr/bin/env python3
"""Expected token ids for engine/src/tokenizer tests, from the real Hugging Face stack.

Loads the SmolLM2-135M-Instruct GGUF's tokenizer with transformers
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, needs `pip install gguf`), sets the
pre-tokenizer of SmolLM2's own tokenizer.json (Digits(individual_digits) + ByteLevel), and
prints, as JSON, the ids of a few texts and of ChatML prompts rendered by the GGUF's chat
template. Both pre-tokenizers must agree on these texts (checked below).

Usage: /root/.cache/gradients/pyref/bin/python tools/tokenizer_ids.py [path/to/model.gguf]
"""

import json
import os
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

DEFAULT = os.path.join(
    os.environ.get("GRADIENTS_CACHE", os.path.expanduser("~/.cache/gradients")),
    "assets",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)

TEXTS = [
    "What is the capital of France?",
    "In 2024, naïve café prices rose 12.5% — 東京 🚀!\n\tTabs  and  spaces.",
    "<|im_start|>user\nHi<|im_end|>\n",
]

CHATS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        False,
    ),
]


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    plain = [tok(t, add_special_tokens=False).input_ids for t in TEXTS]
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    out = {"texts": [], "chats": []}
    for text, ids_plain in zip(TEXTS, plain):
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == ids_plain, f"pre-tokenizers disagree on {text!r}"
        assert tok.decode(ids) == text, f"decode does not round-trip {text!r}"
        out["texts"].append({"text": text, "ids": ids})
    for messages, gen in CHATS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        ids = tok(rendered, add_special_tokens=False).input_ids
        out["chats"].append(
            {"messages": messages, "add_generation_prompt": gen, "rendered": rendered, "ids": ids}
        )
    print(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
