"""Reference perplexity of SmolLM2-135M-Instruct (the GGUF, dequantised by transformers to fp32)
on the passage of tests/smollm2.rs. Usage: python tools/smollm2_perplexity.py DIR_WITH_GGUF
(needs torch, transformers, gguf). Printed on 2026-11-24 with transformers 5.24, torch 2.15:
64 tokens, loss 3.2316083908081055, ppl 25.320349254642256.
"""
import sys
import torch, math
from transformers import AutoModelForCausalLM, AutoTokenizer
d=sys.argv[1]; f='SmolLM2-135M-Instruct.Q4_1.gguf'
tok=AutoTokenizer.from_pretrained(d, gguf_file=f)
m=AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
p=("The town library opens at nine in the morning and closes at six in the evening. On weekends it stays open a little longer, because many families like to visit together. Children can borrow up to five books at a time, and the librarians are always happy to help them find stories about animals, space and faraway places.")
ids=tok(p, return_tensors='pt').input_ids
print(ids.shape)
with torch.no_grad(): out=m(ids, labels=ids)
print('loss', out.loss.item(), 'ppl', math.exp(out.loss.item()))
