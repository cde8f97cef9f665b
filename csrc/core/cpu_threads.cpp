// See cpu_threads.h.
#include "core/cpu_threads.h"

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

// The CPUs in our affinity mask; false when it cannot be read.
bool affinity(cpu_set_t * set) {
    CPU_ZERO(set);
    return sched_getaffinity(0, sizeof *set, set) == 0;
}

// Distinct (package, core) pairs among the CPUs we may run on; 0 when the topology is unreadable.
int32_t physical_cores_in_affinity() {
    cpu_set_t set;
    if (!affinity(&set)) {
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

// n capped by the cgroup quota; at least 1.
int32_t within_quota(int32_t n) {
    const int32_t quota = cgroup_cpu_limit();
    return std::max(1, quota > 0 ? std::min(n, quota) : n);
}

#endif

}  // namespace

int32_t default_thread_count() {
#if defined(__linux__)
    const int32_t n = physical_cores_in_affinity();
    return within_quota(n > 0 ? n : logical_fallback());
#else
    return logical_fallback();
#endif
}

int32_t cpus_we_may_use() {
#if defined(__linux__)
    cpu_set_t set;
    return within_quota(affinity(&set) ? CPU_COUNT(&set) : logical_fallback());
#else
    return logical_fallback();
#endif
}

int32_t other_runnable_tasks() {
#if defined(__linux__)
    // "0.52 0.58 0.59 3/467 12345": the fourth field is running-or-runnable/total scheduling entities now.
    std::ifstream f("/proc/loadavg");
    double load1 = 0, load5 = 0, load15 = 0;
    long runnable = 0;
    if (!(f >> load1 >> load5 >> load15 >> runnable) || runnable < 1) {
        return -1;
    }
    return static_cast<int32_t>(runnable - 1);  // the caller itself is running
#else
    return -1;
#endif
}

}  // namespace dg
