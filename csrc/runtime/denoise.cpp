// The block-diffusion sampler (spec 5): denoise one canvas with entropy-bound acceptance and renoising. The block
// loop around it is generation.cpp.
#include "runtime/denoise.h"
#include "core/errors.h"
#include "kernels/sampler_math.h"
#include "runtime/context.h"
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dg {

void check_sampler_params(const diffgemma_sampler_params & p) {
    if (p.steps <= 0 || p.steps > 100000) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "steps must be in 1..100000, got %d", p.steps);
    }
    if (!(p.t_min > 0.0f) || !(p.t_max > 0.0f) || !std::isfinite(p.t_min) || !std::isfinite(p.t_max)) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "temperatures must be positive and finite (t_min %g, t_max %g)", p.t_min, p.t_max);
    }
    if (!(p.entropy_bound >= 0.0f) || !(p.confidence_threshold >= 0.0f) || p.stability_threshold < 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "entropy_bound, confidence_threshold and stability_threshold must not be negative");
    }
    if (p.max_new_tokens <= 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "max_new_tokens must be positive, got %d", p.max_new_tokens);
    }
}

namespace {

// Turns raw logits into the processed lg = raw / T in place (a true division, as HF does; lg is also the next
// step's self-conditioning input) and computes the per-position statistics of lg, in parallel over
// positions: each row is divided and then read again while it is still in cache, one pass over memory.
void step_stats(float * lg, int32_t C, int32_t V, float temperature, const float * uniforms, ComputeThreads & threads,
                std::vector<RowStats> & out) {
    out.resize(static_cast<size_t>(C));
    // Rows per thread at least: below ~64k logits a row range is done before a sleeping worker wakes.
    const int64_t min_rows = std::max<int64_t>(1, 65536 / std::max<int32_t>(V, 1));
    threads.parallel_for(C, min_rows, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
            float * row = lg + static_cast<size_t>(j) * V;
            for (int32_t i = 0; i < V; ++i) {
                row[i] = row[i] / temperature;
            }
            const float u = uniforms ? uniforms[j] : 0.0f;
            if (!row_stats(row, V, 1.0f, u, &out[static_cast<size_t>(j)])) {
                out[static_cast<size_t>(j)].argmax = -1;
            }
        }
    });
}

// Rows without a distribution (argmax -1 from either sampler). Finite weights and activations cannot produce
// them; NaN/Inf weights (which only the norms are scanned for at load) or an overflow in a low-precision cache can.
void check_rows(const std::vector<RowStats> & st) {
    for (size_t j = 0; j < st.size(); ++j) {
        if (st[j].argmax < 0) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "canvas position %zu has NaN or infinite logits: the model's weight matrices "
                  "probably hold NaN/Inf values (hint: check the file with `diffgemma-cpp info`, re-convert it)", j);
        }
    }
}

// Entropy-bound acceptance: sort entropies ascending, accept sorted position k while the sum of the
// strictly earlier entropies is <= bound (so the most certain position is always accepted).
std::vector<bool> accept_set(const std::vector<RowStats> & st, float bound) {
    const size_t C = st.size();
    std::vector<int32_t> order(C);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return st[a].entropy < st[b].entropy; });
    std::vector<bool> accept(C, false);
    float cumsum = 0.0f;  // float, like torch.cumsum on f32
    for (size_t k = 0; k < C; ++k) {
        const float h = st[static_cast<size_t>(order[k])].entropy;
        cumsum += h;
        if (cumsum - h <= bound) {
            accept[static_cast<size_t>(order[k])] = true;
        }
    }
    return accept;
}

}  // namespace

int32_t denoise_canvas(diffgemma_context * c, const diffgemma_sampler_params & p, const diffgemma_replay * replay,
                       int32_t block, diffgemma_step_callback on_step, void * user_data, int32_t * out_canvas) {
    const HParams & hp = c->model->hp;
    const int32_t C = hp.canvas_length;
    const int32_t V = hp.n_vocab;
    const int32_t N = p.steps;
    if (replay != nullptr) {
        if (block >= replay->n_blocks || replay->init == nullptr) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "replay covers %d blocks, block %d was requested", replay->n_blocks, block);
        }
        if (replay->n_steps < N || replay->sampled == nullptr || replay->renoise == nullptr) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "replay covers %d steps per block, but up to %d steps may run", replay->n_steps, N);
        }
    }
    const size_t CV = static_cast<size_t>(C) * static_cast<size_t>(V);
    std::vector<int32_t> canvas(static_cast<size_t>(C));
    for (int32_t i = 0; i < C; ++i) {
        canvas[static_cast<size_t>(i)] = replay ? replay->init[static_cast<size_t>(block) * C + i] : draw_token(c->rng, V);
    }
    // With the head offloaded the logits and the self-conditioning input stay on the GPU (gpu_step_sampler.h).
    const bool on_gpu = c->gpu_sampler != nullptr;
    std::vector<float> logits(on_gpu ? 0 : CV), sc(on_gpu ? 0 : CV);
    bool have_sc = false;
    std::vector<std::vector<int32_t>> history;  // the last k argmax canvases
    std::vector<int32_t> argmax(static_cast<size_t>(C));
    std::vector<float> uniforms(static_cast<size_t>(C));
    std::vector<RowStats> st;
    int32_t steps = 0;
    for (int32_t n = N; n >= 1; --n, ++steps) {
        if (c->cancel.load()) {
            raise(DIFFGEMMA_ERR_CANCELLED, "generation cancelled before step %d of block %d", steps + 1, block);
        }
        const float T = static_cast<float>(p.t_min + (static_cast<double>(p.t_max) - p.t_min) * n / N);
        const size_t step_offset = (static_cast<size_t>(block) * (replay ? replay->n_steps : 0) + static_cast<size_t>(steps)) * C;
        // The uniforms are drawn before the pass (which draws nothing), so both paths consume the RNG alike.
        if (replay == nullptr) {
            for (auto & u : uniforms) {
                u = draw_uniform(c->rng);
            }
        }
        if (on_gpu) {
            // Replays bring their own samples; the GPU still needs some uniform (zeros) for the statistics.
            // The pass also samples there, and adds that time to sampler_ms itself.
            decoder_pass_gpu(c, canvas.data(), have_sc, T, uniforms.data(), st);
        } else {
            decoder_pass(c, canvas.data(), have_sc ? sc.data() : nullptr, 1.0f, logits.data());
        }
        const auto t_sampler = Clock::now();
        if (!on_gpu) {
            step_stats(logits.data(), C, V, T, replay ? nullptr : uniforms.data(), *c->threads, st);
        }
        check_rows(st);
        const std::vector<bool> accept = accept_set(st, p.entropy_bound);
        if (on_gpu && replay == nullptr) {
            c->gpu_sampler->resolve(accept, uniforms.data(), st);  // exact samples of the accepted rows
        }
        double mean_entropy = 0.0;
        for (int32_t j = 0; j < C; ++j) {
            const size_t js = static_cast<size_t>(j);
            argmax[js] = st[js].argmax;
            mean_entropy += st[js].entropy;
            const int32_t sampled = replay ? replay->sampled[step_offset + js] : st[js].sampled;
            // The renoise draw happens for every position (as in HF), whether or not it is used.
            const int32_t noise = replay ? replay->renoise[step_offset + js] : draw_token(c->rng, V);
            canvas[js] = accept[js] ? sampled : noise;
        }
        mean_entropy /= C;
        c->timing.totals.sampler_ms += ms_since(t_sampler);
        c->timing.totals.n_steps += 1;
        const int32_t k = p.stability_threshold;
        bool stable = k == 0;
        if (k > 0 && static_cast<int32_t>(history.size()) == k) {
            stable = std::all_of(history.begin(), history.end(), [&](const std::vector<int32_t> & h) { return h == argmax; });
        }
        if (k > 0) {
            history.push_back(argmax);
            if (static_cast<int32_t>(history.size()) > k) {
                history.erase(history.begin());
            }
        }
        std::swap(sc, logits);  // the GPU path keeps its probabilities on the GPU instead
        have_sc = true;
        if (on_step != nullptr && on_step(block, steps + 1, N, argmax.data(), C, user_data) != 0) {
            raise(DIFFGEMMA_ERR_CANCELLED, "generation cancelled by the step callback at step %d of block %d", steps + 1, block);
        }
        if (stable && static_cast<float>(mean_entropy) < p.confidence_threshold) {
            ++steps;
            break;
        }
    }
    std::copy(argmax.begin(), argmax.end(), out_canvas);
    return steps;
}

}  // namespace dg
