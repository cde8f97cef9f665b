"""Compute threads on a CPU we do not own (csrc/runtime/compute_threads.*): a persistent pool, never more threads than
the CPUs we may use unless the caller insists, each pass only as many as the machine has free, and the same
tokens whatever number of threads ran. Speed under contention is a benchmark (bench/contention_bench.py),
not a test; these check the rules that make it hold."""
import logging
import os
import subprocess
from pathlib import Path

import pytest

from diffgemma_cpp import Model
from diffgemma_cpp._native import ffi, lib
from c_driver import build_or_skip
from cpu_limits import cpus_we_may_use

REPO = Path(__file__).resolve().parents[1]
SUDOKU = REPO / "python" / "diffgemma_cpp" / "models" / "sudoku.gguf"


pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity masks")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return build_or_skip(tmp_path_factory.mktemp("threads") / "test_compute_threads", "test_compute_threads.cpp",
                         ["runtime/compute_threads.cpp", "core/cpu_threads.cpp", "core/errors.cpp",
                          "core/kernel_config.cpp", "core/cpu_isa.cpp"], ("-O1",),
                         ggml_libs=("ggml-cpu", "ggml-base", "ggml"))


def _run(driver, *args, other_tasks=None):
    env = dict(os.environ)
    env.pop("DIFFGEMMA_TEST_OTHER_TASKS", None)
    if other_tasks is not None:
        env["DIFFGEMMA_TEST_OTHER_TASKS"] = str(other_tasks)
    res = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("n,min_items,threads", [(0, 1, 2), (1, 1, 3), (7, 1, 4), (256, 1, 2), (1000, 3, 3),
                                                 (257, 64, 4)])
def test_parallel_for_visits_every_index_once(driver, n, min_items, threads):
    _run(driver, "cover", n, min_items, threads)


def test_parallel_for_splits_big_work_and_keeps_small_work_on_one_thread(driver):
    assert _run(driver, "cover", 10, 100, 4) == "threads=1"
    # Big work on a pool of 2 fixed threads: both ran a range (the pool's worker, not a new thread per call).
    assert _run(driver, "cover", 4096, 1, 2) == "threads=2"


def test_a_pass_runs_only_the_cpus_the_machine_has_free(driver):
    cpus = cpus_we_may_use()
    want = min(2, cpus)
    assert _run(driver, "pass", 2, 0, other_tasks=0) == str(want)
    assert _run(driver, "pass", 2, 0, other_tasks=cpus - 1) == "1"
    assert _run(driver, "pass", 2, 0, other_tasks=500) == "1"  # never fewer than one
    assert _run(driver, "pass", 2, 1, other_tasks=500) == "2"  # fixed: the caller insists


def _pass_threads(model):
    t = ffi.new("diffgemma_timings *")
    assert lib.diffgemma_timings_get(model._c, t) == 0
    return t.n_threads_last


def _one_pass(model):
    model.encode(model.tokenize("1 2 3", add_bos=True))


def test_more_threads_than_cpus_are_capped_with_one_warning(caplog, monkeypatch):
    monkeypatch.setenv("DIFFGEMMA_TEST_OTHER_TASKS", "0")  # an idle machine, whatever else runs now
    cpus = cpus_we_may_use()
    with caplog.at_level(logging.WARNING, logger="diffgemma_cpp"):
        with Model(SUDOKU, n_threads=cpus + 3) as m:
            _one_pass(m)
            _one_pass(m)
            assert _pass_threads(m) == cpus
    warnings = [r.getMessage() for r in caplog.records if "more than the" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"n_threads={cpus + 3}" in warnings[0] and "fixed_threads" in warnings[0]


def test_fixed_threads_runs_exactly_what_was_asked(caplog, monkeypatch):
    monkeypatch.setenv("DIFFGEMMA_TEST_OTHER_TASKS", "500")
    cpus = cpus_we_may_use()
    with caplog.at_level(logging.WARNING, logger="diffgemma_cpp"):
        with Model(SUDOKU, n_threads=cpus + 1, fixed_threads=True) as m:
            _one_pass(m)
            assert _pass_threads(m) == cpus + 1
    assert not [r for r in caplog.records if "more than the" in r.getMessage()]


def test_a_busy_machine_gets_one_thread(monkeypatch):
    monkeypatch.setenv("DIFFGEMMA_TEST_OTHER_TASKS", "500")
    with Model(SUDOKU, n_threads=2) as m:
        _one_pass(m)
        assert _pass_threads(m) == 1


def test_tokens_do_not_depend_on_the_threads_that_ran(monkeypatch):
    """The adaptive count changes from pass to pass on a busy machine; what we generate must not."""
    from diffgemma_cpp import sudoku
    import random

    puzzle, _ = sudoku.generate(50, random.Random(5))
    prompt = sudoku.prompt_ids(puzzle)
    runs = {}
    for label, kwargs, others in (("1", dict(n_threads=1), "0"),
                                  ("2 fixed", dict(n_threads=2, fixed_threads=True), "0"),
                                  ("2 busy", dict(n_threads=2), "500")):
        monkeypatch.setenv("DIFFGEMMA_TEST_OTHER_TASKS", others)
        with Model(SUDOKU, **kwargs) as m:
            runs[label] = m.generate_ids(prompt, max_new_tokens=81, steps=8, seed=11)
    assert runs["1"] == runs["2 fixed"] == runs["2 busy"]
