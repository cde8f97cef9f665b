// Driver for tests/test_threads.py: dg::ComputeThreads (csrc/runtime/compute_threads.cpp), the persistent pool the
// sampler's per-row work runs on.
//
//   test_compute_threads cover N MIN_ITEMS THREADS
//       parallel_for over [0, N) with a pool of THREADS (fixed): exit 0 when every index was visited exactly once
//       and no range was shorter than MIN_ITEMS (unless it is the whole loop); prints "threads=K", the number of
//       distinct OS threads that ran a range.
//   test_compute_threads pass THREADS FIXED
//       prints the thread count prepare_pass gives a CPU backend (the machine's load, or DIFFGEMMA_TEST_OTHER_TASKS).
#include "runtime/compute_threads.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

int cover(int64_t n, int64_t min_items, int32_t threads) {
    dg::ComputeThreads pool(threads, true);
    std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
    std::mutex m;
    std::set<std::thread::id> ids;
    bool short_range = false;
    pool.parallel_for(n, min_items, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            visits[static_cast<size_t>(i)].fetch_add(1);
        }
        std::lock_guard<std::mutex> lock(m);
        ids.insert(std::this_thread::get_id());
        short_range = short_range || (end - begin < min_items && end - begin != n);
    });
    for (int64_t i = 0; i < n; ++i) {
        if (visits[static_cast<size_t>(i)].load() != 1) {
            std::fprintf(stderr, "index %lld visited %d times\n", static_cast<long long>(i), visits[static_cast<size_t>(i)].load());
            return 1;
        }
    }
    if (short_range) {
        std::fprintf(stderr, "a range shorter than %lld items\n", static_cast<long long>(min_items));
        return 1;
    }
    std::printf("threads=%zu\n", ids.size());
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    try {
        if (argc == 5 && std::strcmp(argv[1], "cover") == 0) {
            return cover(std::atoll(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]));
        }
        if (argc == 4 && std::strcmp(argv[1], "pass") == 0) {
            dg::ComputeThreads pool(std::atoi(argv[2]), std::atoi(argv[3]) != 0);
            ggml_backend_t cpu = ggml_backend_cpu_init();
            pool.attach(cpu);
            std::printf("%d\n", pool.prepare_pass(cpu));
            ggml_backend_free(cpu);
            return 0;
        }
    } catch (...) {
        std::fprintf(stderr, "unexpected exception\n");
        return 1;
    }
    std::fprintf(stderr, "usage: test_compute_threads cover N MIN_ITEMS THREADS | pass THREADS FIXED\n");
    return 2;
}
