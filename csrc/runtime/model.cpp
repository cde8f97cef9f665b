// diffgemma_model: open, validate and map a DiffusionGemma GGUF.
#include "runtime/model.h"
#include "devices/rpc.h"

#include "core/cpu_threads.h"
#include "core/errors.h"
#include "core/names.h"
#include "tokenizer/tokenizer.h"

#include "ggml-cpu.h"
#include "gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <thread>

namespace {

// A friendlier reason than gguf's NULL for the common cases: missing file, not a GGUF at all.
// `what`: "model" or "projector", for the messages.
void precheck_file(const char * path, const char * what = "model") {
    struct stat st {};
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        // fopen succeeds on a directory and a FIFO would block the read: name the problem instead.
        dg::raise(DIFFGEMMA_ERR_IO, "%s path %s is not a regular file%s", what, path, S_ISDIR(st.st_mode) ? " (it is a directory)" : "");
    }
    FILE * f = std::fopen(path, "rb");
    if (f == nullptr) {
        dg::raise(DIFFGEMMA_ERR_IO, "cannot open %s file %s: %s", what, path, std::strerror(errno));
    }
    char magic[4] = {0, 0, 0, 0};
    const size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n < 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "%s is not a GGUF file (it does not start with the magic 'GGUF')", path);
    }
}

std::string render_value(const gguf_context * g, int64_t i) {
    const enum gguf_type t = gguf_get_kv_type(g, i);
    switch (t) {
        case GGUF_TYPE_UINT8: return std::to_string(gguf_get_val_u8(g, i));
        case GGUF_TYPE_INT8: return std::to_string(gguf_get_val_i8(g, i));
        case GGUF_TYPE_UINT16: return std::to_string(gguf_get_val_u16(g, i));
        case GGUF_TYPE_INT16: return std::to_string(gguf_get_val_i16(g, i));
        case GGUF_TYPE_UINT32: return std::to_string(gguf_get_val_u32(g, i));
        case GGUF_TYPE_INT32: return std::to_string(gguf_get_val_i32(g, i));
        case GGUF_TYPE_UINT64: return std::to_string(gguf_get_val_u64(g, i));
        case GGUF_TYPE_INT64: return std::to_string(gguf_get_val_i64(g, i));
        case GGUF_TYPE_FLOAT32: return dg::format("%g", gguf_get_val_f32(g, i));
        case GGUF_TYPE_FLOAT64: return dg::format("%g", gguf_get_val_f64(g, i));
        case GGUF_TYPE_BOOL: return gguf_get_val_bool(g, i) ? "true" : "false";
        case GGUF_TYPE_STRING: return gguf_get_val_str(g, i);
        case GGUF_TYPE_ARRAY: {
            const enum gguf_type et = gguf_get_arr_type(g, i);
            const size_t n = gguf_get_arr_n(g, i);
            if (n > 64 || et == GGUF_TYPE_STRING || et == GGUF_TYPE_ARRAY) {
                return dg::format("[%zu x %s]", n, gguf_type_name(et));
            }
            std::string s = "[";
            const char * data = static_cast<const char *>(gguf_get_arr_data(g, i));
            for (size_t j = 0; j < n; ++j) {
                s += j ? ", " : "";
                switch (et) {
                    case GGUF_TYPE_INT32: s += std::to_string(reinterpret_cast<const int32_t *>(data)[j]); break;
                    case GGUF_TYPE_UINT32: s += std::to_string(reinterpret_cast<const uint32_t *>(data)[j]); break;
                    case GGUF_TYPE_FLOAT32: s += dg::format("%g", reinterpret_cast<const float *>(data)[j]); break;
                    case GGUF_TYPE_BOOL: s += data[j] ? "true" : "false"; break;
                    default: s += "?"; break;
                }
            }
            return s + "]";
        }
        default: return "?";
    }
}

}  // namespace

diffgemma_model::~diffgemma_model() {
    if (meta_ctx != nullptr) {
        ggml_free(meta_ctx);
    }
    if (gguf != nullptr) {
        gguf_free(gguf);
    }
}

extern "C" {

void diffgemma_model_default_params(diffgemma_model_params * params) {
    if (params == nullptr) {
        return;
    }
    params->n_gpu_layers = 0;
    params->main_gpu = -1;
    params->n_threads = 0;
    params->cpu_moe = 0;
    params->n_cpu_moe = 0;
    params->fit = 0;
    params->tensor_split = nullptr;
    params->n_tensor_split = 0;
    params->devices = nullptr;
    params->rpc_servers = nullptr;
    params->mmproj_path = nullptr;
}

int32_t diffgemma_model_load(const char * path, const diffgemma_model_params * params, diffgemma_model ** out) {
    if (path == nullptr || out == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_model_load: path and out must not be NULL");
    }
    *out = nullptr;
    diffgemma_model_params defaults;
    diffgemma_model_default_params(&defaults);
    const diffgemma_model_params & p = params ? *params : defaults;
    return dg::guard([&]() -> int32_t {
        // ggml sizes its thread pools and CPU masks for at most GGML_MAX_N_THREADS: more would index past
        // them, and a typo like 100000 would otherwise spawn that many threads (an apparent hang).
        if (p.n_threads > GGML_MAX_N_THREADS) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_threads=%d exceeds ggml's maximum of %d threads", p.n_threads,
                      GGML_MAX_N_THREADS);
        }
        precheck_file(path);
        auto model = std::make_unique<diffgemma_model>();
        model->path = path;
        gguf_init_params gp = {true, &model->meta_ctx};
        {
            dg::GgmlErrorCapture ggml_errors;  // ggml's parser says why only in its log
            model->gguf = gguf_init_from_file(path, gp);
            if (model->gguf == nullptr) {
                const std::string why = ggml_errors.text();
                dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "%s is a corrupt or truncated GGUF file: %s", path,
                          why.empty() ? "ggml's GGUF parser rejected it" : why.c_str());
            }
        }
        model->hp = dg::read_hparams(model->gguf);
        for (int64_t i = 0; i < gguf_get_n_kv(model->gguf); ++i) {
            model->meta.emplace_back(gguf_get_key(model->gguf, i), render_value(model->gguf, i));
        }
        if (gguf_find_key(model->gguf, dg::key_name(dg::Key::TOKENIZER_MODEL).c_str()) >= 0) {
            model->vocab = std::make_unique<diffgemma_vocab>(model->gguf);
        }
        // The placement needs only the layer count; it is decided (and its parameters checked) before the
        // weights are read, and the memory plan is checked before anything is uploaded to the GPU.
        for (const std::string & endpoint : dg::parse_rpc_endpoints(p.rpc_servers)) {
            dg::add_rpc_server(endpoint);  // its devices join the offload devices before the placement
        }
        model->placement = dg::plan_placement(model->hp, p);
        // Load-time work is one short graph: no warning, but never more threads than CPUs (ggml's barriers spin).
        const int32_t load_threads =
            p.n_threads > 0 ? std::min(p.n_threads, dg::cpus_we_may_use()) : dg::default_thread_count();
        model->store.load(path, model->gguf, model->meta_ctx, model->hp, model->w, load_threads);
        model->memory_plan = dg::check_and_announce_plan(model->hp, model->w, model->placement, p);
        dg::place_weights(model->hp, model->placement, model->store, model->w);
        if (model->hp.image_token_id < 0 && model->vocab) {  // files without diffusion.image_token_id
            const char * marker = "<|image|>";
            model->hp.image_token_id = diffgemma_vocab_find(model->vocab.get(), marker, std::strlen(marker));
        }
        if (model->hp.image_token_id >= model->hp.n_vocab) {
            // Text still works; prompts with images cannot (the id has no embedding row to stand in for).
            dg::log(DIFFGEMMA_LOG_WARN, "diffusion.image_token_id %d is outside the vocabulary [0, %d): this model takes "
                    "no images", model->hp.image_token_id, model->hp.n_vocab);
            model->hp.image_token_id = -1;
        }
        if (model->vocab && model->vocab->n_tokens() != model->hp.n_vocab) {
            // The head and embeddings define the id space; a tokenizer beyond it would produce invalid ids.
            if (model->vocab->n_tokens() > model->hp.n_vocab) {
                dg::raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "the tokenizer has %d tokens but token_embd has only %d rows",
                          model->vocab->n_tokens(), model->hp.n_vocab);
            }
        }
        if (p.mmproj_path != nullptr && p.mmproj_path[0] != '\0') {
            precheck_file(p.mmproj_path, "projector");
            model->vision = dg::load_vision_model(p.mmproj_path, model->hp.n_embd);
            dg::place_vision_weights(model->placement, model->store, model->w, *model->vision);
            const dg::VisionHParams & v = model->vision->hp;
            dg::log(DIFFGEMMA_LOG_INFO, "loaded the projector %s: %d layers, n_embd %d, patch %d, pooling %d", p.mmproj_path,
                    v.n_layer, v.n_embd, v.patch_size, v.pooling);
        }
        dg::log(DIFFGEMMA_LOG_INFO, "loaded %s: %d layers, n_embd %d, %d experts (top %d), vocab %d, canvas %d", path,
                model->hp.n_layer, model->hp.n_embd, model->hp.n_expert, model->hp.n_expert_used, model->hp.n_vocab,
                model->hp.canvas_length);
        *out = model.release();
        return DIFFGEMMA_OK;
    });
}

void diffgemma_model_free(diffgemma_model * model) { delete model; }

const char * diffgemma_model_memory_plan(const diffgemma_model * m) { return m ? m->memory_plan.c_str() : ""; }

int32_t diffgemma_model_n_vocab(const diffgemma_model * m) { return m ? m->hp.n_vocab : 0; }
int32_t diffgemma_model_n_embd(const diffgemma_model * m) { return m ? m->hp.n_embd : 0; }
int32_t diffgemma_model_n_layer(const diffgemma_model * m) { return m ? m->hp.n_layer : 0; }
int32_t diffgemma_model_canvas_length(const diffgemma_model * m) { return m ? m->hp.canvas_length : 0; }
int32_t diffgemma_model_n_ctx_train(const diffgemma_model * m) { return m ? m->hp.n_ctx_train : 0; }

const diffgemma_vocab * diffgemma_model_get_vocab(const diffgemma_model * m) {
    return m ? m->vocab.get() : nullptr;
}

int32_t diffgemma_model_meta_count(const diffgemma_model * m) { return m ? static_cast<int32_t>(m->meta.size()) : 0; }

const char * diffgemma_model_meta_key(const diffgemma_model * m, int32_t i) {
    return m && i >= 0 && static_cast<size_t>(i) < m->meta.size() ? m->meta[static_cast<size_t>(i)].first.c_str() : nullptr;
}

const char * diffgemma_model_meta_value(const diffgemma_model * m, int32_t i) {
    return m && i >= 0 && static_cast<size_t>(i) < m->meta.size() ? m->meta[static_cast<size_t>(i)].second.c_str() : nullptr;
}

void diffgemma_sampler_default_params(const diffgemma_model * m, diffgemma_sampler_params * p) {
    if (p == nullptr) {
        return;
    }
    const dg::SamplerDefaults d = m ? m->hp.sampler : dg::SamplerDefaults{};
    p->max_new_tokens = m ? m->hp.canvas_length : 256;
    p->steps = d.max_steps;
    p->t_min = d.t_min;
    p->t_max = d.t_max;
    p->entropy_bound = d.entropy_bound;
    p->stability_threshold = d.stability_threshold;
    p->confidence_threshold = d.confidence_threshold;
    p->seed = 0;
}

}  // extern "C"
