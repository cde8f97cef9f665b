// The default number of compute threads: one per physical core this process may run on.
//
// std::thread::hardware_concurrency counts every logical CPU of the machine. In a container limited by an
// affinity mask or a cgroup CPU quota that oversubscribes the cores we actually get, and on SMT machines two
// hardware threads share one core's FMA units, so a second GEMM thread per core only adds barrier waits.
#pragma once

#include <cstdint>

namespace dg {

// min(physical cores among the CPUs in our affinity mask, cgroup v2 CPU quota rounded up); at least 1.
int32_t default_thread_count();

// min(logical CPUs in our affinity mask, cgroup v2 CPU quota rounded up); at least 1. More compute threads than
// this can only take turns on the CPUs, and ggml's barriers spin while a descheduled thread holds them up.
int32_t cpus_we_may_use();

// Tasks of the whole machine that are running or waiting to run, other than the calling thread (the kernel's
// instantaneous count in /proc/loadavg); -1 where it cannot be read.
int32_t other_runnable_tasks();

}  // namespace dg
