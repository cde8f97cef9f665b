"""Issue 8's acceptance check, bench/gpu_bench_parity.py: CPU vs GPU decoder logits (F32 and F16 sudoku model,
every placement, NMSE <= 1e-4) and identical committed tokens for the same seed. It needs neither torch nor
transformers (this file imports neither), so the lent GPU machine runs it whatever its image holds. Here it
runs on the stand-in GPU; marked `gpu`, on a real GPU when there is one."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diffgemma_cpp._native import lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_bench_parity  # noqa: E402

STAND_IN = "DIFFGEMMA_TEST_GPU_MIB"


def _check(tmp_path):
    result = gpu_bench_parity.measure(tmp_path)
    assert len(result["logits"]) == 2 * len(gpu_bench_parity.PLACEMENTS)
    assert result["generation"]["identical"] == gpu_bench_parity.N_PUZZLES
    assert result["generation"]["gpu_readback_ms"] == 0.0
    assert not result["failures"], result["failures"]


def test_parity_check_passes_on_the_stand_in(monkeypatch, tmp_path):
    monkeypatch.setenv(STAND_IN, "4096")
    _check(tmp_path)


@pytest.mark.gpu
def test_cuda_matches_cpu_logits_and_tokens(monkeypatch, tmp_path):
    monkeypatch.delenv(STAND_IN, raising=False)
    if lib.diffgemma_gpu_count() == 0:
        pytest.skip("no GPU")
    _check(tmp_path)
