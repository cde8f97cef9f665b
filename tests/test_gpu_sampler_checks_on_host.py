"""The checks of tests/gpu/test_sampler_cuda.py (tests/gpu/sampler_kernel_checks.py), run on the CPU against the emulated kernel
(tests/gpu/emulated_sampler_driver.py answers the GPU driver's file protocol). A GPU session is short and rare:
a check that even a correct kernel cannot pass (a tolerance below the output type's rounding, a wrong expected
id) fails here instead of there. What the real kernel does is still only tested on a GPU."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gpu"))
import sampler_kernel_checks as checks  # noqa: E402
import c_driver  # noqa: E402


@pytest.fixture(scope="module")
def emulated_driver(tmp_path_factory):
    work = tmp_path_factory.mktemp("emulated_gpu")
    try:
        host = c_driver.build_sampler_driver(work)
    except c_driver.Unavailable as exc:
        pytest.skip(str(exc))
    exe = work / "sampler_cuda_driver"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "gpu" / "emulated_sampler_driver.py"}" '
                   f'"{host}" "$@"\n')
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("probs_type,pad", [("bf16", 0), ("f16", 0), ("bf16", 1)])
def test_full_vocab_checks(emulated_driver, tmp_path, probs_type, pad):
    checks.full_vocab(emulated_driver, tmp_path, probs_type, pad)


def test_bf16_of_bf16_logits_checks(emulated_driver, tmp_path):
    checks.probs_of_bf16_rounded_logits(emulated_driver, tmp_path)


@pytest.mark.parametrize("vocab", [3, 2049])
def test_ragged_vocab_checks(emulated_driver, tmp_path, vocab):
    checks.ragged_vocab(emulated_driver, tmp_path, vocab)


def test_edge_row_checks(emulated_driver, tmp_path):
    checks.edge_rows(emulated_driver, tmp_path)


def test_no_distribution_checks(emulated_driver, tmp_path):
    checks.rows_without_a_distribution(emulated_driver, tmp_path)
