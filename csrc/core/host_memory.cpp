// See host_memory.h.
#include "core/host_memory.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace dg {

namespace {

// "<Key>: <value> kB" from /proc/meminfo, in bytes; 0 when absent.
uint64_t meminfo_bytes(const std::string & key) {
    std::ifstream f("/proc/meminfo");
    std::string name;
    uint64_t kb = 0;
    std::string unit;
    while (f >> name >> kb) {
        std::getline(f, unit);
        if (name == key + ":") {
            return kb * 1024;
        }
    }
    return 0;
}

// A cgroup v2 file holding one number, or "max"; 0 for "max" or unreadable.
uint64_t cgroup_value(const char * path) {
    std::ifstream f(path);
    std::string v;
    if (!(f >> v) || v == "max") {
        return 0;
    }
    try {
        return std::stoull(v);
    } catch (...) {
        return 0;
    }
}

}  // namespace

uint64_t available_host_memory() {
    const uint64_t available = meminfo_bytes("MemAvailable");
    if (available == 0) {
        return 0;
    }
    uint64_t total = available + meminfo_bytes("SwapFree");
    const uint64_t limit = cgroup_value("/sys/fs/cgroup/memory.max");
    if (limit > 0) {
        const uint64_t used = cgroup_value("/sys/fs/cgroup/memory.current");
        total = std::min(total, limit > used ? limit - used : 0);
    }
    return total;
}

}  // namespace dg
