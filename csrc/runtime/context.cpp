// diffgemma_context: the KV cache, the scheduler and the two compute passes (encoder, decoder).
#include "runtime/context.h"
#include "core/errors.h"
#include "devices/rpc.h"
#include "graph/graph.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cstring>

namespace dg {

// The last decoder graph with its shape. Every denoising step of a canvas after the first builds the same
// graph (same cache length, self-conditioned), and rebuilding and re-splitting its ~3000 nodes costs about
// 1 ms of host time per step at the release shapes, serial with the GPU's work; so it is kept, with its own
// metadata storage (encoder graphs use graph_meta), and reused while the scheduler still holds its allocation.
struct DecoderGraphCache {
    struct Key {
        int32_t n_past = -1;
        bool with_sc = false;
        bool sc_on_gpu = false;
        float sc_scale = 0.0f;
        int32_t topk = 0;
        bool topk_renormalize = false;
        bool operator==(const Key & o) const {
            return n_past == o.n_past && with_sc == o.with_sc && sc_on_gpu == o.sc_on_gpu && sc_scale == o.sc_scale &&
                   topk == o.topk && topk_renormalize == o.topk_renormalize;
        }
    };
    std::vector<uint8_t> meta;
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    GraphInputs in;
    Key key;
    bool allocated = false;  // the scheduler's buffers still hold this graph (no other graph allocated since)

    ~DecoderGraphCache() { drop(); }
    void drop() {
        if (ctx != nullptr) {
            ggml_free(ctx);
        }
        ctx = nullptr;
        gf = nullptr;
        allocated = false;
    }
};

}  // namespace dg

namespace {

constexpr size_t kGraphNodes = 16384;

// ggml's CPU backend polls this between graph nodes: a cancel stops a long pass promptly.
bool abort_requested(void * data) { return static_cast<diffgemma_context *>(data)->cancel.load(); }

// A no-alloc ggml context for one graph over reusable metadata storage `meta`, and its graph in *gf.
ggml_context * new_graph_context(std::vector<uint8_t> & meta, ggml_cgraph ** gf) {
    const size_t need = ggml_tensor_overhead() * kGraphNodes + ggml_graph_overhead_custom(kGraphNodes, false);
    if (meta.size() < need) {
        meta.resize(need);
    }
    ggml_init_params params = {meta.size(), meta.data(), true};
    ggml_context * ctx = ggml_init(params);
    if (ctx == nullptr) {
        dg::raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create a graph context");
    }
    *gf = ggml_new_graph_custom(ctx, kGraphNodes, false);
    return ctx;
}

}  // namespace

diffgemma_context::~diffgemma_context() {
    if (sched != nullptr) {
        dg::free_remote_quietly([this] { ggml_backend_sched_free(sched); });  // its buffers may be on a lost server
    }
    for (ggml_backend_t b : gpus) {
        ggml_backend_free(b);
    }
    if (cpu != nullptr) {
        ggml_backend_free(cpu);
    }
}

namespace dg {

void set_graph_input(ggml_tensor * t, const void * data, size_t bytes) {
    if (t != nullptr && t->buffer != nullptr) {  // an input no node reads is not allocated
        ggml_backend_tensor_set(t, data, 0, bytes);
    }
}

GraphScope::GraphScope(diffgemma_context * c) { ctx = new_graph_context(c->graph_meta, &gf); }

GraphScope::~GraphScope() { ggml_free(ctx); }

void allocate_graph(diffgemma_context * c, ggml_cgraph * gf, const char * what) {
    if (c->decoder_graph != nullptr && gf != c->decoder_graph->gf) {
        c->decoder_graph->allocated = false;  // the scheduler's buffers now belong to another graph
    }
    if (!ggml_backend_sched_alloc_graph(c->sched, gf)) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate the compute buffers of the %s pass", what);
    }
}

void compute_graph(diffgemma_context * c, ggml_cgraph * gf, const char * what) {
    c->timing.totals.n_threads_last = c->threads->prepare_pass(c->cpu);
    const auto t0 = Clock::now();
    const enum ggml_status st = ggml_backend_sched_graph_compute(c->sched, gf);
    if (st == GGML_STATUS_ABORTED || c->cancel.load()) {
        raise(DIFFGEMMA_ERR_CANCELLED, "the %s pass was cancelled", what);
    }
    if (st != GGML_STATUS_SUCCESS) {
        raise(DIFFGEMMA_ERR_BACKEND, "the %s pass failed (ggml status %d)", what, (int) st);
    }
    note_compute_pass(ms_since(t0) / 1000.0);  // how long an RPC server may legitimately stay silent
}

int32_t exclusive_call(diffgemma_context * ctx, CallKind kind, const std::function<void()> & body) {
    bool expected = false;
    if (!ctx->busy.compare_exchange_strong(expected, true)) {
        return fail(DIFFGEMMA_ERR_BUSY, "the context is in use by another thread (one call at a time per context)");
    }
    struct Release {
        diffgemma_context * ctx;
        ~Release() { ctx->busy.store(false); }
    } release{ctx};
    if (kind == CallKind::kTouchesCache) {
        if (ctx->generation.open) {
            return fail(DIFFGEMMA_ERR_BUSY, "a generation is open on this context: step it with diffgemma_generate_next "
                        "until done, or end it with diffgemma_generate_end");
        }
        ctx->cancel.store(false);  // a generation's steps keep a cancel asked for between its canvases
    }
    return guard([&]() -> int32_t {
        body();
        return DIFFGEMMA_OK;
    });
}

int32_t draw_token(std::mt19937_64 & rng, int32_t n_vocab) {
    // Rejection sampling on 64 bits: exact uniformity with a fixed, portable algorithm.
    const uint64_t n = static_cast<uint64_t>(n_vocab);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = rng();
    } while (x >= limit);
    return static_cast<int32_t>(x % n);
}

float draw_uniform(std::mt19937_64 & rng) {
    // 24 random bits: every value is exactly representable and strictly below 1.
    return static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f);
}

void encode_tokens(diffgemma_context * c, const int32_t * tokens, int32_t n_tokens, const std::vector<ImageSpan> & spans) {
    const HParams & hp = c->model->hp;
    for (int32_t i = 0; i < n_tokens; ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, hp.n_vocab);
        }
    }
    if (static_cast<int64_t>(c->n_past) + n_tokens > c->kv.n_ctx()) {
        raise(DIFFGEMMA_ERR_CONTEXT_OVERFLOW, "encoding %d tokens after %d cached positions needs %lld positions, but n_ctx is %d",
              n_tokens, c->n_past, static_cast<long long>(c->n_past) + n_tokens, c->kv.n_ctx());
    }
    const int32_t first = c->n_past;
    for (int32_t start = 0; start < n_tokens;) {
        const int32_t T = next_chunk_length(first + start, first + n_tokens, c->n_batch, spans);
        const int32_t chunk_begin = c->n_past;
        // The images of this chunk: their features stand in for the soft tokens' embeddings.
        std::vector<ImageSpan> chunk_spans;
        std::vector<float> image_rows;
        std::vector<int32_t> rows(static_cast<size_t>(T));
        for (int32_t t = 0; t < T; ++t) {
            rows[static_cast<size_t>(t)] = t;
        }
        for (const ImageSpan & s : spans) {
            if (s.begin >= chunk_begin && s.end <= chunk_begin + T) {
                const int32_t row0 = T + static_cast<int32_t>(image_rows.size() / static_cast<size_t>(hp.n_embd));
                if (s.features == nullptr) {
                    raise(DIFFGEMMA_ERR_INTERNAL, "image span at %d reached the encoder without its features", s.begin);
                }
                image_rows.insert(image_rows.end(), s.features->begin(), s.features->end());
                for (int32_t p = s.begin; p < s.end; ++p) {
                    rows[static_cast<size_t>(p - chunk_begin)] = row0 + (p - s.begin);
                }
                chunk_spans.push_back(s);
            }
        }
        const int32_t n_image_rows = static_cast<int32_t>(image_rows.size() / static_cast<size_t>(hp.n_embd));
        std::vector<PositionSpan> bidirectional;
        if (hp.vision_bidirectional) {
            for (const ImageSpan & s : chunk_spans) {
                bidirectional.push_back(PositionSpan{s.begin, s.end});
            }
        }
        const auto t0 = Clock::now();
        GraphScope g(c);
        GraphBuilder b{hp, c->model->w, c->kv, g.ctx, g.gf, c->gpu_graph, c->kernels};
        GraphInputs in = b.build_encoder(c->n_past, T, n_image_rows);
        ggml_backend_sched_reset(c->sched);
        allocate_graph(c, g.gf, "encoder");
        std::vector<int32_t> pos(static_cast<size_t>(T));
        for (int32_t t = 0; t < T; ++t) {
            pos[static_cast<size_t>(t)] = c->n_past + t;
        }
        set_graph_input(in.ids, tokens + start, sizeof(int32_t) * static_cast<size_t>(T));
        set_graph_input(in.pos, pos.data(), sizeof(int32_t) * pos.size());
        if (n_image_rows > 0) {
            set_graph_input(in.image_embd, image_rows.data(), sizeof(float) * image_rows.size());
            set_graph_input(in.embd_rows, rows.data(), sizeof(int32_t) * rows.size());
        }
        for (auto [mask, begin, window] : {std::tuple{in.mask_full, 0, 0},
                                           std::tuple{in.mask_swa, swa_first_key(hp, c->n_past), hp.n_swa}}) {
            std::vector<float> m(static_cast<size_t>(mask->ne[0] * mask->ne[1]));
            fill_encoder_mask(m.data(), begin, c->n_past, T, window, bidirectional);
            set_graph_input(mask, m.data(), m.size() * sizeof(float));
        }
        c->timing.last_node = Clock::now();
        compute_graph(c, g.gf, "encoder");
        c->cached_tokens.insert(c->cached_tokens.end(), tokens + start, tokens + start + T);
        c->cached_spans.insert(c->cached_spans.end(), chunk_spans.begin(), chunk_spans.end());
        c->n_past += T;
        c->kv.mark_written(c->n_past);
        c->timing.totals.encode_ms += ms_since(t0);
        c->timing.totals.n_encode_tokens += T;
        c->timing.totals.n_encode_passes += 1;
        start += T;
    }
}

void rewind(diffgemma_context * c, int32_t n_keep) {
    // An image's tokens see each other: keep all of its span or none of it.
    for (const ImageSpan & s : c->cached_spans) {
        if (s.begin < n_keep && n_keep < s.end) {
            n_keep = s.begin;
        }
    }
    std::vector<ImageSpan> kept_spans;
    for (const ImageSpan & s : c->cached_spans) {
        if (s.end <= n_keep) {
            kept_spans.push_back(s);
        }
    }
    if (n_keep > 0 && c->kv.holds_window_at(c->model->hp, n_keep)) {
        c->n_past = n_keep;  // positions >= n_keep are dead: the next encode overwrites them
        c->cached_tokens.resize(static_cast<size_t>(n_keep));
        c->cached_spans = kept_spans;
        return;
    }
    // Nothing kept, or a sliding ring already overwrote part of the window at n_keep: rebuild from position 0.
    std::vector<int32_t> keep(c->cached_tokens.begin(), c->cached_tokens.begin() + n_keep);
    c->n_past = 0;
    c->cached_tokens.clear();
    c->cached_spans.clear();
    c->kv.clear();
    encode_tokens(c, keep.data(), n_keep, kept_spans);
}

namespace {

// Builds, allocates and runs one decoder graph over `canvas`, then hands its logits tensor to `use` while the
// tensor still exists (the graph's metadata and buffers are reused by the next pass). Self-conditioning
// reads host `sc_logits` (softmax at sc_scale in the graph), or with `sc_on_gpu` the sampler's probabilities.
template <typename Use>
void run_decoder(diffgemma_context * c, const int32_t * canvas, const float * sc_logits, float sc_scale, bool sc_on_gpu,
                 Use use) {
    const HParams & hp = c->model->hp;
    const int32_t C = hp.canvas_length;
    for (int32_t i = 0; i < C; ++i) {
        if (canvas[i] < 0 || canvas[i] >= hp.n_vocab) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "canvas token %d at index %d is outside the vocabulary [0, %d)", canvas[i], i, hp.n_vocab);
        }
    }
    if (static_cast<int64_t>(c->n_past) + C > c->kv.n_ctx()) {
        raise(DIFFGEMMA_ERR_CONTEXT_OVERFLOW, "a canvas of %d after %d cached positions needs %lld positions, but n_ctx is %d",
              C, c->n_past, static_cast<long long>(c->n_past) + C, c->kv.n_ctx());
    }
    const auto t_setup = Clock::now();
    sc_on_gpu = sc_on_gpu && (c->gpu_sampler->sc_probs() != nullptr || c->gpu_sampler->sc_logits() != nullptr);
    const bool with_sc = sc_logits != nullptr || sc_on_gpu;
    DecoderGraphCache & cache = *c->decoder_graph;
    const DecoderGraphCache::Key key{c->n_past, with_sc, sc_on_gpu, sc_scale, c->sc_topk.k, c->sc_topk.renormalize};
    if (cache.gf == nullptr || !(cache.key == key)) {
        cache.drop();
        cache.ctx = new_graph_context(cache.meta, &cache.gf);
        GraphBuilder b{hp, c->model->w, c->kv, cache.ctx, cache.gf, c->gpu_graph, c->kernels};
        c->sc_topk.scale = sc_scale;
        cache.in = b.build_decoder(c->n_past, C, with_sc, sc_scale, c->sc_topk.k > 0 ? &c->sc_topk : nullptr,
                                   sc_on_gpu ? c->gpu_sampler->sc_probs() : nullptr,
                                   sc_on_gpu ? c->gpu_sampler->sc_logits() : nullptr);
        cache.key = key;
    }
    if (!cache.allocated) {
        ggml_backend_sched_reset(c->sched);
        allocate_graph(c, cache.gf, "decoder");
        cache.allocated = true;
    }
    const GraphInputs & in = cache.in;
    std::vector<int32_t> pos(static_cast<size_t>(C));
    for (int32_t t = 0; t < C; ++t) {
        pos[static_cast<size_t>(t)] = c->n_past + t;
    }
    set_graph_input(in.ids, canvas, sizeof(int32_t) * static_cast<size_t>(C));
    set_graph_input(in.pos, pos.data(), sizeof(int32_t) * pos.size());
    if (sc_logits != nullptr) {
        set_graph_input(in.sc_logits, sc_logits, sizeof(float) * static_cast<size_t>(C) * static_cast<size_t>(hp.n_vocab));
    }
    Timings & tm = c->timing;
    tm.totals.decoder_setup_ms += ms_since(t_setup);
    tm.compute_begin = tm.last_node = Clock::now();
    try {
        compute_graph(c, cache.gf, "decoder");
    } catch (...) {
        cache.allocated = false;  // a cancelled or failed pass: allocate afresh next time
        throw;
    }
    tm.add_decoder_compute(ms_since(tm.compute_begin));
    use(in.logits);
    tm.totals.n_decoder += 1;
}

}  // namespace

void decoder_pass(diffgemma_context * c, const int32_t * canvas, const float * sc_logits, float sc_scale, float * out_logits) {
    run_decoder(c, canvas, sc_logits, sc_scale, false, [&](ggml_tensor * logits) {
        const auto t_read = Clock::now();
        ggml_backend_tensor_get(logits, out_logits, 0, ggml_nbytes(logits));
        c->timing.totals.readback_ms += ms_since(t_read);
    });
}

void decoder_pass_gpu(diffgemma_context * c, const int32_t * canvas, bool with_sc, float temperature, const float * uniforms,
                      std::vector<RowStats> & stats) {
    if (c->gpu_sampler == nullptr) {
        raise(DIFFGEMMA_ERR_INTERNAL, "decoder_pass_gpu needs a context whose head is offloaded");
    }
    run_decoder(c, canvas, nullptr, 1.0f, with_sc, [&](ggml_tensor * logits) {
        const auto t_sampler = Clock::now();
        c->gpu_sampler->step(logits, temperature, uniforms, stats);
        c->timing.totals.sampler_ms += ms_since(t_sampler);
    });
}

}  // namespace dg

extern "C" {

void diffgemma_context_default_params(diffgemma_context_params * p) {
    if (p == nullptr) {
        return;
    }
    p->n_ctx = 0;
    p->n_batch = 0;
    p->n_threads = 0;
    p->fixed_threads = 0;
    p->kv_type = DIFFGEMMA_KV_F32;
    p->sc_top_k = 0;
    p->sc_top_k_renormalize = 0;
}

int32_t diffgemma_context_new(diffgemma_model * model, const diffgemma_context_params * params, diffgemma_context ** out) {
    if (model == nullptr || out == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_context_new: model and out must not be NULL");
    }
    *out = nullptr;
    diffgemma_context_params defaults;
    diffgemma_context_default_params(&defaults);
    const diffgemma_context_params & p = params ? *params : defaults;
    return dg::guard([&]() -> int32_t {
        const dg::HParams & hp = model->hp;
        if (p.kv_type != DIFFGEMMA_KV_F32 && p.kv_type != DIFFGEMMA_KV_F16) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "kv_type %d is not a diffgemma_kv_type", p.kv_type);
        }
        if (p.n_threads > GGML_MAX_N_THREADS) {  // see diffgemma_model_load: ggml's pools hold at most this many
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_threads=%d exceeds ggml's maximum of %d threads", p.n_threads,
                      GGML_MAX_N_THREADS);
        }
        if (p.n_ctx < 0 || p.n_batch < 0) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_ctx (%d) and n_batch (%d) must not be negative", p.n_ctx, p.n_batch);
        }
        if (p.sc_top_k < 0 || p.sc_top_k > hp.n_vocab) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "sc_top_k=%d is outside 0..n_vocab (%d); 0 means the exact self-conditioning",
                      p.sc_top_k, hp.n_vocab);
        }
        if (p.sc_top_k_renormalize != 0 && p.sc_top_k_renormalize != 1) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "sc_top_k_renormalize must be 0 or 1, got %d", p.sc_top_k_renormalize);
        }
        int32_t n_ctx = p.n_ctx > 0 ? p.n_ctx : hp.default_n_ctx();
        if (n_ctx < hp.canvas_length) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_ctx %d is smaller than one canvas (%d)", n_ctx, hp.canvas_length);
        }
        auto c = std::make_unique<diffgemma_context>();
        c->model = model;
        c->decoder_graph = std::make_unique<dg::DecoderGraphCache>();
        c->n_batch = p.n_batch > 0 ? p.n_batch : 512;
        c->kernels = dg::kernel_config_from_env();
        c->sc_topk.k = p.sc_top_k;
        c->sc_topk.renormalize = p.sc_top_k_renormalize != 0;
        if (p.fixed_threads != 0 && p.fixed_threads != 1) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "fixed_threads must be 0 or 1, got %d", p.fixed_threads);
        }
        c->threads = std::make_unique<dg::ComputeThreads>(p.n_threads, p.fixed_threads != 0);
        c->cpu = ggml_backend_cpu_init();
        if (c->cpu == nullptr) {
            dg::raise(DIFFGEMMA_ERR_BACKEND, "cannot initialise the ggml CPU backend");
        }
        c->threads->attach(c->cpu);
        ggml_backend_cpu_set_abort_callback(c->cpu, abort_requested, c.get());
        // Ring slack of sliding layers: one encoder chunk, and at least one canvas, so that a prompt repeated
        // after one generated block still finds its sliding windows in the cache.
        const int32_t slack = std::max(c->n_batch, hp.canvas_length);
        const ggml_type kv_type = p.kv_type == DIFFGEMMA_KV_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
        const dg::Placement & pl = model->placement;
        std::vector<ggml_backend_buffer_type_t> kv_buft(static_cast<size_t>(hp.n_layer), ggml_backend_cpu_buffer_type());
        if (pl.use_gpu) {
            if (pl.head_on_gpu && p.sc_top_k > 0) {
                dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "sc_top_k is an approximation for the CPU; with the head offloaded "
                          "the exact self-conditioning product runs on the GPU (use sc_top_k=0)");
            }
            for (int il = 0; il < hp.n_layer; ++il) {
                if (pl.layer_device[il] >= 0) {  // each layer's cache where the layer is
                    kv_buft[static_cast<size_t>(il)] = dg::gpu_buffer_type(pl.devices[static_cast<size_t>(pl.layer_device[il])]);
                }
            }
            dg::check_context_fits(hp, model->w, pl, n_ctx, [&](int32_t n, int d) {
                return dg::KvCache::bytes_for(hp, n, slack, kv_type, pl.layers_on(d));
            });
            for (size_t d = 0; d < pl.devices.size(); ++d) {
                const bool holds_something = pl.head_device == static_cast<int>(d) ||
                    std::find(pl.layer_device.begin(), pl.layer_device.end(), static_cast<int>(d)) != pl.layer_device.end();
                ggml_backend_t b = holds_something ? dg::gpu_backend_init(pl.devices[d]) : nullptr;
                if (b != nullptr) {
                    c->gpus.push_back(b);
                }
            }
            // The stand-in keeps our exact CPU element-wise ops unless a test asks for the real GPU's graph (the
            // only difference: ggml's GEGLU, on strided views for fused gate/up experts), so that graph is built
            // and run before a GPU ever sees it.
            const char * gpu_graph_hook = dg::test_hook("DIFFGEMMA_TEST_GPU_GRAPH");
            c->gpu_graph = !c->gpus.empty() || (gpu_graph_hook != nullptr && gpu_graph_hook[0] != '0');
        }
        c->kv.init(hp, n_ctx, slack, kv_type, kv_buft);
        if (pl.head_on_gpu && dg::GpuStepSampler::available(pl, c->kernels)) {
            const ggml_tensor * embd_t = model->w.embd_t;
            const ggml_type probs_type = embd_t == nullptr ? GGML_TYPE_COUNT
                                         : embd_t->type == GGML_TYPE_BF16 ? GGML_TYPE_BF16 : GGML_TYPE_F16;
            c->gpu_sampler = std::make_unique<dg::GpuStepSampler>(hp, pl, probs_type);
        } else if (pl.head_on_gpu) {
            dg::log(DIFFGEMMA_LOG_WARN, "the head is on %s, but this build has no diffgemma sampler for it: each "
                    "denoising step reads %.0f MiB of logits back to the host (a CUDA GPU takes CMAKE_ARGS=\"-DDIFFGEMMA_CUDA=ON\")",
                    pl.head_gpu().name.c_str(), 4.0 * hp.n_vocab * hp.canvas_length / 1048576.0);
        }
        // The devices first: ggml's scheduler prefers earlier backends. No op offload: weights the user kept in
        // host memory (cpu_moe, layers on the CPU) are multiplied there instead of being copied over each pass.
        std::vector<ggml_backend_t> backends = c->gpus;
        backends.push_back(c->cpu);
        c->sched = ggml_backend_sched_new(backends.data(), nullptr, static_cast<int>(backends.size()), kGraphNodes,
                                          false, false);
        if (c->sched == nullptr) {
            dg::raise(DIFFGEMMA_ERR_BACKEND, "cannot create the ggml scheduler");
        }
        dg::set_rpc_socket_timeouts();  // ggml connects lazily: the KV cache may have opened a server's socket
        *out = c.release();
        return DIFFGEMMA_OK;
    });
}

void diffgemma_context_free(diffgemma_context * ctx) { delete ctx; }

int32_t diffgemma_n_past(const diffgemma_context * ctx) { return ctx ? ctx->n_past : 0; }

int32_t diffgemma_n_ctx(const diffgemma_context * ctx) { return ctx ? ctx->kv.n_ctx() : 0; }

size_t diffgemma_kv_cache_bytes(const diffgemma_context * ctx) { return ctx ? ctx->kv.bytes() : 0; }

int32_t diffgemma_kv_truncate(diffgemma_context * ctx, int32_t n_keep) {
    if (ctx == nullptr || n_keep < 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_kv_truncate: bad context or n_keep %d", n_keep);
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
    dg::rewind(ctx, std::min(ctx->n_past, n_keep));
    });
}

int32_t diffgemma_decoder_logits(diffgemma_context * ctx, const int32_t * canvas, const float * sc_logits, float * out_logits) {
    if (ctx == nullptr || canvas == nullptr || out_logits == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_decoder_logits: ctx, canvas and out_logits must not be NULL");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
    dg::decoder_pass(ctx, canvas, sc_logits, 1.0f, out_logits);
    });
}

void diffgemma_cancel(diffgemma_context * ctx) {
    if (ctx != nullptr) {
        ctx->cancel.store(true);
    }
}

}  // extern "C"
