"""The sampler where the head is (issue 15, item 5): a head on a ggml RPC server (127.0.0.1) samples with ggml
ops there (csrc/offload/ggml_step_sampler.h) and reads back a few numbers per position instead of the logits.

bench/rpc_sampler_bench.py runs in a child process (a server's devices stay registered in a process for its
lifetime): all-host, the server with the host sampler (DIFFGEMMA_HOST_SAMPLER=1, the logits read back) and the
server with the device sampler, 6 prompts each with the same seeds, on the trained sudoku model and on a test
model whose logits are large (a 256-position canvas: 512 KiB per step).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import engine_fixtures as fx
import tiny_hf
import diffgemma_cpp

ROOT = Path(__file__).resolve().parents[1]
needs_rpc = pytest.mark.skipif(not diffgemma_cpp.rpc_available(),
                               reason="this ggml has no RPC backend (scripts/build_ggml.sh rpc builds one; .ci/run does)")
CHILD_TIMEOUT_S = 900  # a hang guard for the child process, far above its run time

# "small" with the release's canvas of 256 positions: V x C x 4 = 512 KiB of logits per step.
tiny_hf.CONFIGS.setdefault("canvas256", dict(tiny_hf.CONFIGS["small"], canvas_length=256, max_position_embeddings=1024))


@needs_rpc
def test_the_device_sampler_commits_the_host_tokens_and_reads_back_little(tmp_path):
    model = fx.gguf("canvas256:trained", "f32")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "rpc_sampler_bench.py"), "--out", str(tmp_path),
                           "--model", str(model), "--steps", "12"], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    print(proc.stdout[-4000:])
    result = json.loads((tmp_path / "rpc_sampler_bench.json").read_text())
    assert proc.returncode == 0 and not result["failures"], (result.get("error"), result["failures"], proc.stderr[-3000:])
    n = 6
    sudoku = result["models"]["sudoku-f16"]
    for label in ("1 server, host sampler (before)", "1 server, device sampler (after)"):
        assert sudoku[label]["identical"] == n  # the same committed tokens as all-host, same seeds
    big = result["models"][model.stem]
    before, after = big["1 server, host sampler (before)"], big["1 server, device sampler (after)"]
    assert after["identical_to_before"] == n  # the same logits: the two samplers commit the same tokens
    logits = after["logits_bytes"]
    assert logits == 256 * 512 * 4
    # Before: the logits come back every step. After: 20 bytes per position and the rows of accepted positions
    # whose sample lay within rounding of a CDF boundary (a handful of 2 KiB rows at most).
    assert before["received_per_step"] >= logits
    assert after["received_per_step"] < logits / 8, after
    # The self-conditioning logits no longer go up either.
    assert after["sent_per_step"] < before["sent_per_step"] - logits / 2, (before, after)
