"""The CPUs this process may use, computed independently of csrc/core/cpu_threads.cpp: the oracle its tests compare
with (affinity mask, physical cores from sysfs topology, cgroup v2 quota)."""
from __future__ import annotations

import os
from pathlib import Path


def cgroup_quota() -> int | None:
    """cpu.max's quota / period rounded up; None when unlimited or absent."""
    quota = Path("/sys/fs/cgroup/cpu.max")
    if not quota.exists() or quota.read_text().split()[0] == "max":
        return None
    q, period = quota.read_text().split()
    return -(-int(q) // int(period))


def _within_quota(n: int) -> int:
    quota = cgroup_quota()
    return max(1, n if quota is None else min(n, quota))


def physical_cores_we_may_use() -> int:
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", cpu))
    return _within_quota(len(cores))


def cpus_we_may_use() -> int:
    """Logical CPUs in the affinity mask, capped by the quota."""
    return _within_quota(len(os.sched_getaffinity(0)))
