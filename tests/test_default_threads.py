"""The default thread count follows the CPUs this process may use (affinity mask, physical cores), not the
machine's logical CPU count: a container pinned to one core must not start two spinning GEMM threads."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffgemma_cpp._native import lib


def _physical_cores(cpus):
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", cpu))
    return len(cores)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity masks")
def test_default_is_one_thread_per_physical_core_we_may_use():
    expected = _physical_cores(os.sched_getaffinity(0))
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.exists() and quota.read_text().split()[0] != "max":
        q, period = quota.read_text().split()
        expected = min(expected, -(-int(q) // int(period)))
    assert lib.diffgemma_default_n_threads() == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity masks")
def test_a_process_pinned_to_one_cpu_defaults_to_one_thread():
    cpu = min(os.sched_getaffinity(0))
    code = ("import os; os.sched_setaffinity(0, {%d}); from diffgemma_cpp._native import lib; "
            "print(lib.diffgemma_default_n_threads())" % cpu)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
