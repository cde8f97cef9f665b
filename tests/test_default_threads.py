"""The default thread count follows the CPUs this process may use (affinity mask, physical cores), not the
machine's logical CPU count: a container pinned to one core must not start two spinning GEMM threads."""
import os
import subprocess
import sys

import pytest

from cpu_limits import physical_cores_we_may_use
from diffgemma_cpp._native import lib


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity masks")
def test_default_is_one_thread_per_physical_core_we_may_use():
    assert lib.diffgemma_default_n_threads() == physical_cores_we_may_use()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity masks")
def test_a_process_pinned_to_one_cpu_defaults_to_one_thread():
    cpu = min(os.sched_getaffinity(0))
    code = ("import os; os.sched_setaffinity(0, {%d}); from diffgemma_cpp._native import lib; "
            "print(lib.diffgemma_default_n_threads())" % cpu)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
