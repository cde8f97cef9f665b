"""The fused CPU attention op (csrc/kernels/attention_cpu.cpp) against ggml's mul_mat/soft_max chain on the same
model: causal + sliding masks in the encoder (chunks straddling the window), GQA, bidirectional decoder with
and without self-conditioning. Both are float32; they differ only in summation order."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine_fixtures import gguf
from kernel_tier import kernel_tier

TESTS = Path(__file__).parent
RUN = r'''
import sys, numpy as np
from diffgemma_cpp import Model
path, out = sys.argv[1], sys.argv[2]
with Model(path, n_threads=2, n_batch=7) as m:
    rng = np.random.default_rng(0)
    m.encode(rng.integers(0, m.n_vocab, 30).tolist())
    canvas = rng.integers(0, m.n_vocab, m.canvas_length).tolist()
    sc = rng.normal(0, 3, (m.canvas_length, m.n_vocab)).astype(np.float32)
    np.save(out, np.stack([m.decoder_logits(canvas), m.decoder_logits(canvas, sc)]))
'''


def _logits(path, tmp_path, disable_op):
    out = tmp_path / f"logits_{int(disable_op)}.npy"
    env = dict(os.environ, DIFFGEMMA_NO_ATTENTION_OP="1" if disable_op else "0")
    subprocess.run([sys.executable, "-c", RUN, str(path), str(out)], env=env, check=True, cwd=TESTS)
    return np.load(out)


@pytest.mark.skipif(kernel_tier() != "avx512", reason="the fused attention op needs AVX-512F; ggml's chain runs instead")
@pytest.mark.parametrize("name", ["small", "gqa4"])
def test_fused_attention_matches_ggml_chain(name, tmp_path):
    path = gguf(name)
    fused, chain = _logits(path, tmp_path, False), _logits(path, tmp_path, True)
    # These random models amplify float32 rounding ~1000x (see test_engine_parity.py): 1e-7 relative in
    # attention shows as ~1e-4 in the logits. A wrong mask, head mapping or softmax moves them by O(1).
    assert np.max(np.abs(fused - chain)) <= 1e-3
    assert not np.array_equal(fused, chain), "the fused op did not run (results are bit-identical to ggml's)"
