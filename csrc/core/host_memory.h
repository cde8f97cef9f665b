// How much host memory a new allocation may still take, so that a request which cannot fit fails up front with
// a specific message instead of succeeding lazily (overcommit) and being killed when the pages are touched.
#pragma once

#include <cstdint>

namespace dg {

// MemAvailable + SwapFree from /proc/meminfo, capped by the cgroup v2 limit (memory.max - memory.current);
// 0 when unknown (not Linux, unreadable), in which case callers should not refuse anything.
uint64_t available_host_memory();

}  // namespace dg
