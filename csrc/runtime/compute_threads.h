// The compute threads of one context: a persistent ggml threadpool, and how many of its threads each pass runs.
//
// ggml 0.20.2's CPU backend ends every graph node with a barrier that spins without yielding (ggml_barrier in
// ggml-cpu.c). When our threads outnumber the CPUs that are free, a thread that the kernel took off its CPU holds
// up the others at the next barrier for a whole scheduler slice, hundreds of times per pass: 2 threads beside
// one busy program ran 7x slower than 1 thread, 8 threads over 100x. So before each pass we run no more threads
// than the machine has CPUs free for us at that moment (never fewer than one). Idle workers sleep (poll 0)
// instead of spinning between passes, so they take nothing from other programs while we do host work.
#pragma once

#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cstdint>
#include <functional>

namespace dg {

class ComputeThreads {
  public:
    // n_threads <= 0: default_thread_count(). Above cpus_we_may_use() it is capped, with one warning, unless
    // `fixed`; `fixed` also runs every pass on all n_threads whatever else the machine runs (scaling studies).
    ComputeThreads(int32_t n_threads, bool fixed);
    ~ComputeThreads();
    ComputeThreads(const ComputeThreads &) = delete;
    ComputeThreads & operator=(const ComputeThreads &) = delete;

    // Gives the CPU backend this pool (call once).
    void attach(ggml_backend_t cpu) const;
    // Sets the CPU backend's thread count for the pass about to run, from the CPUs free right now; returns it.
    int32_t prepare_pass(ggml_backend_t cpu);
    // fn(begin, end) over disjoint ranges covering [0, n), on the pool's threads, each range at least
    // min_items long (small work stays on the calling thread). Exceptions must not leave fn.
    void parallel_for(int64_t n, int64_t min_items, const std::function<void(int64_t, int64_t)> & fn);

  private:
    int32_t threads_free_now() const;

    int32_t n_max_ = 1;
    int32_t n_cpus_ = 1;                 // cpus_we_may_use()
    int32_t test_other_tasks_ = -1;      // DIFFGEMMA_TEST_OTHER_TASKS: a fixed machine load for the tests
    bool fixed_ = false;
    ggml_threadpool * pool_ = nullptr;
};

}  // namespace dg
