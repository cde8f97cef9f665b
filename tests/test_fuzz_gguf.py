"""Bounded fuzzing of the GGUF loader: a seconds-long smoke run in the default suite, and a minute-long run
(DG_FUZZ_SECONDS to change it) in .ci/run's long step (`pytest -m long tests`).

With clang + libFuzzer on the machine: scripts/fuzz_gguf.sh (coverage-guided, ASan + UBSan build of our
sources). Without: tests/fuzz/mutation_fuzz.py (random structure-biased mutations against the installed
library, each load in a child process). Longer runs: scripts/fuzz_gguf.sh 3600.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
import mutation_fuzz  # noqa: E402

SECONDS = int(os.environ.get("DG_FUZZ_SECONDS", "60"))


def _libfuzzer(seconds: int):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "fuzz_gguf.sh"), str(seconds)], capture_output=True, text=True,
                          errors="replace", env=env, timeout=seconds + 900)
    return proc


def test_seed_corpus_loads():
    # The seeds must be valid models, or the fuzzers would only ever explore the error paths.
    from load_probe import probe
    out = probe(mutation_fuzz.SEEDS)
    assert len(out) >= 3 and all(r["outcome"] == "loaded" for r in out), out


@pytest.mark.long
def test_fuzz_loader_bounded(tmp_path):
    proc = _libfuzzer(SECONDS)
    if proc.returncode == 77:  # no clang/libFuzzer here: the portable fuzzer gets the same time
        result = mutation_fuzz.run(SECONDS, tmp_path)
        print(f"mutation fuzz: {result}")
        assert "crash" not in result, f"the loader crashed on {result.get('crash')}:\n{result.get('stderr')}"
        assert result["execs"] > 0
        return
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"libFuzzer found a problem (artifact in build/fuzz/artifacts):\n{tail}"
    execs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr).group(1))
    print(f"libFuzzer: {execs} executions in {SECONDS} s")
    assert execs > 0


def test_mutation_fuzzer_smoke(tmp_path):
    # The portable fallback itself must work (it is what CI machines without clang run).
    result = mutation_fuzz.run(5, tmp_path, seed=1)
    assert "crash" not in result, result
    assert result["execs"] > 50 and result["loaded"] > 0, result
