// See compute_threads.h.
#include "runtime/compute_threads.h"

#include "core/cpu_threads.h"
#include "core/errors.h"
#include "core/kernel_config.h"

#include "ggml.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace dg {

namespace {

struct RangeJob {
    int64_t n;
    const std::function<void(int64_t, int64_t)> * fn;
};

// ggml custom op: thread ith of nth takes the ith contiguous range of the job.
void run_range(ggml_tensor *, int ith, int nth, void * userdata) {
    const auto * job = static_cast<const RangeJob *>(userdata);
    const int64_t begin = job->n * ith / nth;
    const int64_t end = job->n * (ith + 1) / nth;
    if (begin < end) {
        (*job->fn)(begin, end);
    }
}

}  // namespace

ComputeThreads::ComputeThreads(int32_t n_threads, bool fixed) : fixed_(fixed) {
    n_cpus_ = cpus_we_may_use();
    n_max_ = n_threads > 0 ? n_threads : default_thread_count();
    if (n_max_ > n_cpus_ && !fixed) {
        log(DIFFGEMMA_LOG_WARN, "n_threads=%d is more than the %d CPUs this process may use: running at most %d "
            "threads (more can only take turns on the CPUs, which makes every pass slower; fixed_threads=1 insists)",
            n_max_, n_cpus_, n_cpus_);
        n_max_ = n_cpus_;
    }
    if (const char * v = test_hook("DIFFGEMMA_TEST_OTHER_TASKS"); v != nullptr) {
        test_other_tasks_ = std::atoi(v);
    }
    ggml_threadpool_params tp = ggml_threadpool_params_default(n_max_);
    tp.poll = 0;  // workers sleep between passes instead of spinning on a CPU another program could use
    pool_ = ggml_threadpool_new(&tp);
    if (pool_ == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "cannot start a pool of %d compute threads", n_max_);
    }
}

ComputeThreads::~ComputeThreads() {
    if (pool_ != nullptr) {
        ggml_threadpool_free(pool_);
    }
}

void ComputeThreads::attach(ggml_backend_t cpu) const { ggml_backend_cpu_set_threadpool(cpu, pool_); }

int32_t ComputeThreads::threads_free_now() const {
    if (fixed_) {
        return n_max_;
    }
    const int32_t others = test_other_tasks_ >= 0 ? test_other_tasks_ : other_runnable_tasks();
    if (others < 0) {
        return n_max_;  // no load figure on this system
    }
    return std::clamp(n_cpus_ - others, 1, n_max_);
}

int32_t ComputeThreads::prepare_pass(ggml_backend_t cpu) {
    const int32_t n = threads_free_now();
    ggml_backend_cpu_set_n_threads(cpu, n);
    return n;
}

void ComputeThreads::parallel_for(int64_t n, int64_t min_items, const std::function<void(int64_t, int64_t)> & fn) {
    const int64_t by_size = min_items > 0 ? std::max<int64_t>(1, n / min_items) : n;
    const int n_threads = static_cast<int>(std::min<int64_t>(threads_free_now(), by_size));
    if (n_threads <= 1) {
        if (n > 0) {
            fn(0, n);
        }
        return;
    }
    // One custom node on a throw-away graph: the pool's threads run it, no thread is created.
    std::vector<uint8_t> meta(ggml_tensor_overhead() * 2 + ggml_graph_overhead_custom(2, false) + 256);
    ggml_init_params params = {meta.size(), meta.data(), false};
    ggml_context * ctx = ggml_init(params);
    if (ctx == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the context of a parallel loop");
    }
    RangeJob job{n, &fn};
    ggml_tensor * node = ggml_custom_4d(ctx, GGML_TYPE_I8, 1, 1, 1, 1, nullptr, 0, run_range, GGML_N_TASKS_MAX, &job);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 2, false);
    ggml_build_forward_expand(gf, node);
    ggml_cplan plan = ggml_graph_plan(gf, n_threads, pool_);
    const ggml_status st = plan.work_size == 0 ? ggml_graph_compute(gf, &plan) : GGML_STATUS_FAILED;
    ggml_free(ctx);
    if (st != GGML_STATUS_SUCCESS) {
        raise(DIFFGEMMA_ERR_BACKEND, "a parallel loop on the compute threads failed (ggml status %d)",
              static_cast<int>(st));
    }
}

}  // namespace dg
