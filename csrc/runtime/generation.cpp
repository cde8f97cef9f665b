// The block loop (spec 5): prefill with prefix reuse, the seeded RNG, one canvas per diffgemma_generate_next,
// what happens at EOS, and re-encoding each committed canvas before the next. Every generation runs here:
// diffgemma_generate is a loop over these calls, and so are the Python iterators.
#include "core/errors.h"
#include "runtime/context.h"
#include "runtime/denoise.h"
#include "runtime/image_prompt.h"
#include "tokenizer/tokenizer.h"

#include <algorithm>

namespace dg {

namespace {

void check_generation(const diffgemma_context * c, int32_t n_prompt, const diffgemma_sampler_params & p) {
    check_sampler_params(p);
    const int32_t C = c->model->hp.canvas_length;
    const int64_t n_blocks = (static_cast<int64_t>(p.max_new_tokens) + C - 1) / C;
    const int64_t needed = static_cast<int64_t>(n_prompt) + n_blocks * C;
    if (needed > c->kv.n_ctx()) {
        raise(DIFFGEMMA_ERR_CONTEXT_OVERFLOW,
              "prompt (%d tokens) + %lld canvas(es) x %d = %lld positions exceed n_ctx = %d (hint: a larger n_ctx or "
              "a smaller max_new_tokens)", n_prompt, static_cast<long long>(n_blocks), C, static_cast<long long>(needed),
              c->kv.n_ctx());
    }
}

// Makes the cache hold exactly `prompt`, keeping the prefix it shares with the cached tokens.
void prefill(diffgemma_context * c, const int32_t * prompt, int32_t n_prompt) {
    if (n_prompt <= 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "the prompt is empty (it must hold at least the BOS token)");
    }
    // A cached position is reused when it holds the same token and, for an image's soft token, the same pixels.
    const std::vector<ImageSpan> spans = prompt_image_spans(c, prompt, n_prompt, 0);
    const std::vector<uint64_t> wanted = image_identities(spans, n_prompt);
    const std::vector<uint64_t> cached = image_identities(c->cached_spans, static_cast<int32_t>(c->cached_tokens.size()));
    size_t common = 0;
    while (common < c->cached_tokens.size() && common < static_cast<size_t>(n_prompt) &&
           c->cached_tokens[common] == prompt[common] && cached[common] == wanted[common]) {
        ++common;
    }
    // A fully cached prompt needs no encoder pass: its K/V are already there, computed exactly as before, so
    // repeating a request reproduces it bit for bit (re-encoding a suffix alone would round differently).
    // When the sliding rings no longer hold the window at the common prefix (the cache ran more than their
    // slack past it), the whole prompt is encoded again, chunked exactly as a fresh context would.
    if (!c->kv.holds_window_at(c->model->hp, static_cast<int32_t>(common))) {
        common = 0;
    }
    rewind(c, static_cast<int32_t>(common));  // backs up to an image's first token if common falls inside it
    std::vector<ImageSpan> rest;
    for (const ImageSpan & s : spans) {
        if (s.begin >= c->n_past) {
            rest.push_back(s);
        }
    }
    compute_features(*c, rest);
    encode_tokens(c, prompt + c->n_past, n_prompt - c->n_past, rest);
}

// The one place that decides what follows an end-of-generation token: the rest of its canvas is padded (as HF's
// generate returns it) and the generation ends. Returns the index of the first such token, or C.
int32_t pad_after_eos(const diffgemma_vocab * vocab, int32_t * canvas, int32_t C) {
    if (vocab == nullptr) {
        return C;
    }
    int32_t * end = canvas + C;
    int32_t * eos = std::find_if(canvas, end, [&](int32_t t) { return vocab->is_eog(t); });
    std::fill(eos == end ? end : eos + 1, end, vocab->pad() >= 0 ? vocab->pad() : 0);
    return static_cast<int32_t>(eos - canvas);
}

void next_canvas(diffgemma_context * c, diffgemma_step_callback on_step, void * user_data, int32_t * out_canvas,
                 diffgemma_canvas_info * info) {
    Generation & g = c->generation;
    if (!g.open) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "no generation is open on this context (diffgemma_generate_begin first; "
              "a generation ends after its last canvas, an error or diffgemma_generate_end)");
    }
    const int32_t C = c->model->hp.canvas_length;
    try {
        if (!g.to_encode.empty()) {
            encode_tokens(c, g.to_encode.data(), C);
            g.to_encode.clear();
        }
        const int32_t block = g.next_block++;
        const int32_t steps = denoise_canvas(c, g.params, g.replay, block, on_step, user_data, out_canvas);
        const int32_t n_content = pad_after_eos(c->model->vocab.get(), out_canvas, C);
        const bool eos = n_content < C;
        const bool done = eos || g.next_block >= g.n_blocks;
        if (done) {
            g = Generation{};
        } else {
            g.to_encode.assign(out_canvas, out_canvas + C);
        }
        *info = diffgemma_canvas_info{block, steps, n_content, eos ? 1 : 0, done ? 1 : 0};
    } catch (...) {
        g = Generation{};  // a failed or cancelled canvas ends the generation; the context stays usable
        throw;
    }
}

}  // namespace

}  // namespace dg

extern "C" {

int32_t diffgemma_generate_check(const diffgemma_context * ctx, int32_t n_prompt, const diffgemma_sampler_params * params) {
    if (ctx == nullptr || params == nullptr || n_prompt < 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_generate_check: bad arguments");
    }
    return dg::guard([&]() -> int32_t {
        dg::check_generation(ctx, n_prompt, *params);
        return DIFFGEMMA_OK;
    });
}

int32_t diffgemma_prefill(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt) {
    if (ctx == nullptr || prompt == nullptr || n_prompt < 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_prefill: bad arguments");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] { dg::prefill(ctx, prompt, n_prompt); });
}

int32_t diffgemma_generate_begin(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt,
                                 const diffgemma_sampler_params * params, const diffgemma_replay * replay) {
    if (ctx == nullptr || params == nullptr || prompt == nullptr || n_prompt < 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_generate_begin: ctx, prompt and params must not be NULL");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
        const diffgemma_sampler_params & p = *params;
        dg::check_generation(ctx, n_prompt, p);
        ctx->rng.seed(p.seed);
        dg::prefill(ctx, prompt, n_prompt);
        const int32_t C = ctx->model->hp.canvas_length;
        dg::Generation & g = ctx->generation;
        g = dg::Generation{};
        g.params = p;
        g.replay = replay;
        g.n_blocks = static_cast<int32_t>((static_cast<int64_t>(p.max_new_tokens) + C - 1) / C);
        g.open = true;
    });
}

int32_t diffgemma_generate_next(diffgemma_context * ctx, diffgemma_step_callback on_step, void * user_data,
                                int32_t * out_canvas, diffgemma_canvas_info * info) {
    if (ctx == nullptr || out_canvas == nullptr || info == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_generate_next: ctx, out_canvas and info must not be NULL");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kDuringGeneration,
                              [&] { dg::next_canvas(ctx, on_step, user_data, out_canvas, info); });
}

int32_t diffgemma_generate_end(diffgemma_context * ctx) {
    if (ctx == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_generate_end: ctx must not be NULL");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kDuringGeneration, [&] { ctx->generation = dg::Generation{}; });
}

int32_t diffgemma_generate(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt,
                           const diffgemma_sampler_params * params, const diffgemma_replay * replay,
                           diffgemma_step_callback on_step, void * user_data, int32_t * out_tokens, size_t out_capacity,
                           size_t * n_out, int32_t * out_steps_total) {
    if (ctx == nullptr || params == nullptr || n_out == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_generate: ctx, params and n_out must not be NULL");
    }
    *n_out = 0;
    if (const int32_t status = diffgemma_generate_check(ctx, n_prompt, params); status != DIFFGEMMA_OK) {
        return status;  // before the buffer's size, which depends on a valid max_new_tokens
    }
    const int32_t C = ctx->model->hp.canvas_length;
    const size_t needed = (static_cast<size_t>(params->max_new_tokens) + C - 1) / C * C;
    if (out_capacity < needed || out_tokens == nullptr) {
        *n_out = needed;
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "the output buffer holds %zu tokens, max_new_tokens=%d needs %zu "
                        "(whole canvases of %d)", out_capacity, params->max_new_tokens, needed, C);
    }
    int32_t status = diffgemma_generate_begin(ctx, prompt, n_prompt, params, replay);
    int32_t total_steps = 0;
    size_t produced = 0;
    diffgemma_canvas_info info{};
    while (status == DIFFGEMMA_OK && !info.done) {
        status = diffgemma_generate_next(ctx, on_step, user_data, out_tokens + produced, &info);
        if (status == DIFFGEMMA_OK) {
            produced += static_cast<size_t>(C);
            total_steps += info.steps;
        }
    }
    if (status != DIFFGEMMA_OK) {
        return status;
    }
    *n_out = produced;
    if (out_steps_total != nullptr) {
        *out_steps_total = total_steps;
    }
    return DIFFGEMMA_OK;
}

}  // extern "C"
