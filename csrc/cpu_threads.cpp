// See cpu_threads.h.
#include "cpu_threads.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <sched.h>
#endif

namespace dg {

namespace {

int32_t logical_fallback() { return static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency())); }

#if defined(__linux__)

// Reads one integer from a sysfs file; -1 when absent.
long read_sysfs_long(const std::string & path) {
    std::ifstream f(path);
    long v = -1;
    return (f >> v) ? v : -1;
}

// Distinct (package, core) pairs among the CPUs we may run on; 0 when the topology is unreadable.
int32_t physical_cores_in_affinity() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) {
        return 0;
    }
    std::set<std::pair<long, long>> cores;
    int32_t allowed = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &set)) {
            continue;
        }
        ++allowed;
        const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        const long core = read_sysfs_long(dir + "core_id");
        const long package = read_sysfs_long(dir + "physical_package_id");
        // Unknown topology: count the logical CPU as its own core rather than guess.
        cores.insert(core < 0 ? std::pair{-1L - cpu, -1L} : std::pair{package, core});
    }
    return std::min<int32_t>(allowed, static_cast<int32_t>(cores.size()));
}

// cgroup v2 "cpu.max" = "<quota> <period>" or "max <period>"; 0 when unlimited or unreadable.
int32_t cgroup_cpu_limit() {
    std::ifstream f("/sys/fs/cgroup/cpu.max");
    std::string quota;
    double period = 0;
    if (!(f >> quota >> period) || quota == "max" || period <= 0) {
        return 0;
    }
    const double cpus = std::stod(quota) / period;
    return cpus > 0 ? static_cast<int32_t>(std::ceil(cpus)) : 0;
}

#endif

}  // namespace

int32_t default_thread_count() {
#if defined(__linux__)
    int32_t n = physical_cores_in_affinity();
    if (n <= 0) {
        n = logical_fallback();
    }
    const int32_t quota = cgroup_cpu_limit();
    if (quota > 0) {
        n = std::min(n, quota);
    }
    return std::max(1, n);
#else
    return logical_fallback();
#endif
}

}  // namespace dg
