// Internal definitions of the opaque diffgemma_model and diffgemma_context handles.
#pragma once

#include "diffgemma.h"
#include "compute_threads.h"
#include "hparams.h"
#include "gpu_step_sampler.h"
#include "kv_cache.h"
#include "placement.h"
#include "sc_topk.h"
#include "timing.h"
#include "weights.h"

#include "ggml-backend.h"

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

struct gguf_context;

struct diffgemma_vocab;

namespace dg {
struct DecoderGraphCache;  // context.cpp
}

struct diffgemma_model {
    std::string path;
    dg::HParams hp;
    dg::Weights w;
    dg::WeightStore store;
    dg::Placement placement;             // what is offloaded to which GPU (CPU only by default)
    std::string memory_plan;             // the plan printed at load ("" when nothing is offloaded)
    gguf_context * gguf = nullptr;       // metadata (kept for diffgemma_model_meta_*)
    ggml_context * meta_ctx = nullptr;   // tensor descriptors bound to the mapping
    std::unique_ptr<diffgemma_vocab> vocab;  // nullptr when the GGUF has no tokenizer
    std::vector<std::pair<std::string, std::string>> meta;  // metadata rendered as strings
    ~diffgemma_model();
};

struct diffgemma_context {
    diffgemma_model * model = nullptr;
    ggml_backend_t cpu = nullptr;
    std::vector<ggml_backend_t> gpus;     // the backends of the placement's devices that hold something, in layer
                                          // order (none: CPU only, or the test stand-ins, whose work runs on `cpu`)
    bool gpu_graph = false;               // graphs as a real GPU gets them (GraphBuilder::real_gpu): with `gpus`, or
                                          // on the stand-in with DIFFGEMMA_TEST_GPU_GRAPH=1 (tests of that graph)
    ggml_backend_sched_t sched = nullptr;
    dg::KvCache kv;
    std::unique_ptr<dg::GpuStepSampler> gpu_sampler;  // with an offloaded head: sampling where the logits are
    int32_t n_past = 0;
    int32_t n_batch = 512;
    std::unique_ptr<dg::ComputeThreads> threads;  // the persistent pool and each pass's thread count
    dg::ScTopkParams sc_topk;             // top-k self-conditioning (k = 0: exact); read by decoder graphs
    std::vector<int32_t> cached_tokens;   // the ids whose K/V are in the cache, in order (prefix reuse)
    std::vector<uint8_t> graph_meta;      // storage for graph-building contexts
    std::unique_ptr<dg::DecoderGraphCache> decoder_graph;  // the last decoder graph, reused by the next step
    std::mt19937_64 rng;
    dg::Timings timing;                   // diffgemma_timings_* (timing.h)
    std::atomic<bool> busy{false};
    std::atomic<bool> cancel{false};
    ~diffgemma_context();
};

namespace dg {

// Marks a context busy for the duration of an API call; a second thread gets DIFFGEMMA_ERR_BUSY.
class BusyGuard {
  public:
    explicit BusyGuard(diffgemma_context * ctx);
    ~BusyGuard();
    bool acquired() const { return acquired_; }

  private:
    diffgemma_context * ctx_;
    bool acquired_ = false;
};

// Compute pieces shared by the C API entry points (context.cpp, generate.cpp). All throw dg::Error.
void encode_tokens(diffgemma_context * ctx, const int32_t * tokens, int32_t n_tokens);
// Drops every cached position >= n_keep. When a sliding layer's ring no longer holds the window at n_keep
// (the cache was rewound by more than its slack), re-encodes the kept tokens from position 0.
void rewind(diffgemma_context * ctx, int32_t n_keep);
void decoder_pass(diffgemma_context * ctx, const int32_t * canvas, const float * sc_logits, float sc_scale,
                  float * out_logits);
// The decoder pass of a context with an offloaded head (gpu_sampler): self-conditioning reads the
// probabilities (or logits) the previous step left on the GPU (with_sc), the logits stay there, and `stats`
// receives their per-position statistics at `temperature` (gpu_step_sampler.h).
void decoder_pass_gpu(diffgemma_context * ctx, const int32_t * canvas, bool with_sc, float temperature,
                      const float * uniforms, std::vector<RowStats> & stats);

// Uniform draws with a fixed algorithm (std::uniform_*_distribution differs between C++ libraries, and the
// same seed must give the same tokens everywhere).
int32_t draw_token(std::mt19937_64 & rng, int32_t n_vocab);
float draw_uniform(std::mt19937_64 & rng);

}  // namespace dg
