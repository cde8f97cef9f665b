"""A minimal workload for `perf record`: load M.gguf, encode 256 tokens, then 1 + STEPS decoder passes with
self-conditioning. Usage: python bench/step_profile_run.py M.gguf THREADS STEPS"""
import sys, numpy as np
from diffgemma_cpp import Model
m = Model(sys.argv[1], n_threads=int(sys.argv[2]), n_ctx=1024)
rng = np.random.default_rng(0)
m.encode(rng.integers(5, m.n_vocab, 256).tolist())
canvas = rng.integers(5, m.n_vocab, m.canvas_length).tolist()
lg = m.decoder_logits(canvas)
for _ in range(int(sys.argv[3])):
    lg = m.decoder_logits(canvas, lg / 0.8)
