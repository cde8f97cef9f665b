// Internal definition of the opaque diffgemma_context handle, and the compute passes the C API's calls share.
#pragma once

#include "diffgemma.h"
#include "core/kernel_config.h"
#include "graph/kv_cache.h"
#include "kernels/sc_topk.h"
#include "offload/gpu_step_sampler.h"
#include "runtime/compute_threads.h"
#include "runtime/generation_state.h"
#include "runtime/model.h"
#include "runtime/prompt_images.h"
#include "runtime/timing.h"
#include "runtime/tensor_dump.h"

#include "ggml-backend.h"

#include <atomic>
#include <functional>
#include <memory>
#include <random>
#include <vector>

namespace dg {
struct DecoderGraphCache;  // context.cpp
}

struct diffgemma_context {
    diffgemma_model * model = nullptr;
    ggml_backend_t cpu = nullptr;
    std::vector<ggml_backend_t> gpus;     // the backends of the placement's devices that hold something, in layer
                                          // order (none: CPU only, or the test stand-ins, whose work runs on `cpu`)
    bool gpu_graph = false;               // graphs as a real GPU gets them (GraphBuilder::real_gpu): with `gpus`, or
                                          // on the stand-in with DIFFGEMMA_TEST_GPU_GRAPH=1 (tests of that graph)
    dg::KernelConfig kernels;             // our CPU kernels, from the environment when the context was made: the
                                          // graph builder picks each node's op with it (kernel_config.h)
    ggml_backend_sched_t sched = nullptr;
    dg::KvCache kv;
    std::unique_ptr<dg::GpuStepSampler> gpu_sampler;  // with an offloaded head: sampling where the logits are
    int32_t n_past = 0;
    int32_t n_batch = 512;
    std::unique_ptr<dg::ComputeThreads> threads;  // the persistent pool and each pass's thread count
    dg::ScTopkParams sc_topk;             // top-k self-conditioning (k = 0: exact); read by decoder graphs
    std::vector<int32_t> cached_tokens;   // the ids whose K/V are in the cache, in order (prefix reuse)
    std::vector<dg::ImageSpan> cached_spans;  // the images among them (prefix reuse compares their pixels too)
    std::vector<std::shared_ptr<const dg::PreparedImage>> images;  // diffgemma_set_images: the prompts' images
    std::vector<uint8_t> graph_meta;      // storage for graph-building contexts
    std::unique_ptr<dg::DecoderGraphCache> decoder_graph;  // the last decoder graph, reused by the next step
    std::mt19937_64 rng;
    dg::Generation generation;            // the generation between diffgemma_generate_begin and its last canvas
    dg::Timings timing;                   // diffgemma_timings_* (timing.h)
    dg::TensorDump dump;                  // diffgemma_set_tensor_callback (tensor_dump.h)
    std::atomic<bool> busy{false};
    std::atomic<bool> cancel{false};
    ~diffgemma_context();
};

namespace dg {

// Calls that touch the cache are refused while a generation is open (they would change it under the
// generation); the generation's own steps, and settings, are not.
enum class CallKind { kTouchesCache, kDuringGeneration };

// The one busy guard of the C API: runs `body` as the only call on ctx (a second thread gets
// DIFFGEMMA_ERR_BUSY), refuses kTouchesCache calls while a generation is open, and turns exceptions into status
// codes.
int32_t exclusive_call(diffgemma_context * ctx, CallKind kind, const std::function<void()> & body);

// One graph's context over the context's shared metadata storage, for graphs that are not kept (encoder, vision).
struct GraphScope {
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    explicit GraphScope(diffgemma_context * c);
    ~GraphScope();
    GraphScope(const GraphScope &) = delete;
    GraphScope & operator=(const GraphScope &) = delete;
};
// Allocates `gf` on the context's scheduler (reset it first); its inputs can be set afterwards. Throws dg::Error.
void allocate_graph(diffgemma_context * c, ggml_cgraph * gf, const char * what);
// Computes an allocated graph with this pass's threads; a cancel gives DIFFGEMMA_ERR_CANCELLED. Throws dg::Error.
void compute_graph(diffgemma_context * c, ggml_cgraph * gf, const char * what);
// Sets an allocated graph input (an input no node reads is not allocated and is skipped).
void set_graph_input(ggml_tensor * t, const void * data, size_t bytes);

// Compute pieces shared by the C API entry points (context.cpp, generation.cpp). All throw dg::Error.
// Encodes tokens at [n_past, n_past + n_tokens); `spans` (absolute positions inside that range, features
// computed: runtime/image_prompt.h) are its images.
void encode_tokens(diffgemma_context * ctx, const int32_t * tokens, int32_t n_tokens,
                   const std::vector<ImageSpan> & spans = {});
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
