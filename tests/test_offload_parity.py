"""Issue 8's acceptance check, bench/gpu_bench_parity.py: CPU vs GPU decoder logits (F32 and F16 sudoku model,
every placement, NMSE <= 1e-4) and identical committed tokens for the same seed. It needs neither torch nor
transformers (this file imports neither), so the lent GPU machine runs it whatever its image holds. Here it
runs on the stand-in GPU; marked `gpu`, on a real GPU when there is one."""
from __future__ import annotations

import random
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


def test_the_tf32_diagnosis_reruns_the_gpu_generation_in_a_child(monkeypatch, tmp_path):
    """The path taken only after a token mismatch on a real GPU: it must work the first time it is needed."""
    from diffgemma_cpp import sudoku

    monkeypatch.setenv(STAND_IN, "4096")
    path = gpu_bench_parity.model_files(tmp_path)["f16"]
    prompts = [sudoku.prompt_ids(sudoku.generate(64, random.Random(i))[0]) for i in range(2)]
    cpu_ids = gpu_bench_parity.generate(path, prompts, seed=gpu_bench_parity.GENERATION_SEED)[0]
    lines = []
    assert gpu_bench_parity.identical_without_tf32(path, prompts, cpu_ids, lines.append) == 2
    assert lines == ["generation f16 without TF32 (NVIDIA_TF32_OVERRIDE=0): identical 2/2"]


@pytest.mark.gpu
def test_cuda_matches_cpu_logits_and_tokens(monkeypatch, tmp_path):
    monkeypatch.delenv(STAND_IN, raising=False)
    if lib.diffgemma_gpu_count() == 0:
        pytest.skip("no GPU")
    _check(tmp_path)
