#include "loader/weights.h"

#include "core/errors.h"
#include "core/names.h"
#include "devices/gpu_devices.h"
#include "devices/rpc.h"

#include "ggml-cpu.h"
#include "gguf.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <initializer_list>
#include <set>

namespace dg {

namespace {

bool is_matrix_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1: case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K:
        case GGML_TYPE_IQ4_NL: case GGML_TYPE_IQ4_XS: case GGML_TYPE_MXFP4: case GGML_TYPE_NVFP4:
            return true;
        default:
            return false;
    }
}

std::string shape_str(const int64_t * ne, int n) {
    std::string s = "[";
    for (int i = 0; i < n; ++i) {
        s += (i ? ", " : "") + std::to_string(ne[i]);
    }
    return s + "]";
}

// The tensor's size in bytes from its shape and type, or false if a product overflows. ggml's parser has
// an element-count check, but it is skipped when the count itself wraps to zero (e.g. [2^32, 2^32, 6]), after
// which ggml_nbytes is garbage; an unused tensor like that would otherwise reach ggml_backend_tensor_alloc,
// which aborts on a size outside the buffer.
bool checked_nbytes(const ggml_tensor * t, size_t * out) {
    const int64_t blck = ggml_blck_size(t->type);
    if (blck <= 0 || t->ne[0] % blck != 0) {
        return false;
    }
    uint64_t bytes = static_cast<uint64_t>(t->ne[0] / blck) * ggml_type_size(t->type);  // ne0 < 2^63, size <= 256
    if (t->ne[0] != 0 && bytes / ggml_type_size(t->type) != static_cast<uint64_t>(t->ne[0] / blck)) {
        return false;
    }
    for (int d = 1; d < GGML_MAX_DIMS; ++d) {
        if (t->ne[d] < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(t->ne[d]), &bytes)) {
            return false;
        }
    }
    *out = static_cast<size_t>(bytes);
    return true;
}

// Fills w from the meta context; shapes follow shared/docs/gguf-format.md (ggml ne order).
// Returns the bound f32 vectors (norms, scales) for check_finite.
std::vector<ggml_tensor *> bind_tensors(ggml_context * meta, HParams & hp, Weights & w) {
    std::set<std::string> used;
    std::vector<ggml_tensor *> vectors;
    TensorBinder b(meta, used, vectors);
    ggml_tensor * embd = ggml_get_tensor(meta, tensor_name(Tensor::TOKEN_EMBD).c_str());
    if (embd == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' is missing from the GGUF", tensor_name(Tensor::TOKEN_EMBD).c_str());
    }
    // The vocabulary size comes from this shape alone: 0 rows would leave the sampler nothing to draw from
    // (a division by zero), and more than INT32_MAX would wrap in the int32 token ids.
    if (embd->ne[1] < 1 || embd->ne[1] > INT32_MAX) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' has %lld rows; the vocabulary must hold 1 .. %d tokens",
              ggml_get_name(embd), static_cast<long long>(embd->ne[1]), INT32_MAX);
    }
    hp.n_vocab = static_cast<int32_t>(embd->ne[1]);
    const int64_t E = hp.n_embd;
    w.tok_embd = b.get(tensor_name(Tensor::TOKEN_EMBD), {E, hp.n_vocab}, true, TensorRole::Embed);
    w.output_norm = b.get(tensor_name(Tensor::OUTPUT_NORM), {E}, true, TensorRole::Vector);
    w.rope_freqs = b.get(tensor_name(Tensor::ROPE_FREQS), {hp.head_dim_full / 2}, false, TensorRole::Vector);
    w.sc_pre_norm = b.get(tensor_name(Tensor::SELF_COND_PRE_NORM), {E}, false, TensorRole::Vector);
    w.sc_gate = b.get(tensor_name(Tensor::SELF_COND_GATE), {E, hp.n_ff}, false, TensorRole::Matrix);
    w.sc_up = b.get(tensor_name(Tensor::SELF_COND_UP), {E, hp.n_ff}, false, TensorRole::Matrix);
    w.sc_down = b.get(tensor_name(Tensor::SELF_COND_DOWN), {hp.n_ff, E}, false, TensorRole::Matrix);
    w.sc_gate_s = b.get(tensor_name(Tensor::SELF_COND_GATE_OUT_SCALE), {hp.n_ff}, false, TensorRole::Vector);
    w.sc_up_s = b.get(tensor_name(Tensor::SELF_COND_UP_OUT_SCALE), {hp.n_ff}, false, TensorRole::Vector);
    w.sc_down_s = b.get(tensor_name(Tensor::SELF_COND_DOWN_OUT_SCALE), {E}, false, TensorRole::Vector);
    const int n_sc = (w.sc_pre_norm != nullptr) + (w.sc_gate != nullptr) + (w.sc_up != nullptr) + (w.sc_down != nullptr);
    if (n_sc != 0 && n_sc != 4) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "the self-conditioning tensors (self_cond_pre_norm/gate/up/down) must be all present or all absent; %d of 4 found", n_sc);
    }
    w.layers.resize(static_cast<size_t>(hp.n_layer));
    for (int il = 0; il < hp.n_layer; ++il) {
        LayerWeights & l = w.layers[static_cast<size_t>(il)];
        const int64_t D = hp.head_dim(il);
        const int64_t q_dim = hp.n_head * D;
        const int64_t kv_dim = hp.n_head_kv[il] * D;
        auto name = [il](LayerTensor t) { return tensor_name(t, il); };
        l.attn_norm = b.get(name(LayerTensor::ATTN_NORM), {E}, true, TensorRole::Vector);
        l.wq = b.get(name(LayerTensor::ATTN_Q), {E, q_dim}, true, TensorRole::Matrix);
        l.wk = b.get(name(LayerTensor::ATTN_K), {E, kv_dim}, true, TensorRole::Matrix);
        l.wv = b.get(name(LayerTensor::ATTN_V), {E, kv_dim}, hp.is_swa[il], TensorRole::Matrix);
        if (!hp.is_swa[il] && l.wv != nullptr) {
            // Full-attention layers take V from the raw K projection (spec 4.2); a stray attn_v is ignored.
            log(DIFFGEMMA_LOG_WARN, "ignoring %s: full-attention layers use the raw K projection as V", name(LayerTensor::ATTN_V).c_str());
            l.wv = nullptr;
        }
        l.wo = b.get(name(LayerTensor::ATTN_OUTPUT), {q_dim, E}, true, TensorRole::Matrix);
        l.q_norm = b.get(name(LayerTensor::ATTN_Q_NORM), {D}, true, TensorRole::Vector);
        l.k_norm = b.get(name(LayerTensor::ATTN_K_NORM), {D}, true, TensorRole::Vector);
        l.post_attn_norm = b.get(name(LayerTensor::POST_ATTENTION_NORM), {E}, true, TensorRole::Vector);
        l.ffn_norm = b.get(name(LayerTensor::FFN_NORM), {E}, true, TensorRole::Vector);
        l.ffn_gate = b.get(name(LayerTensor::FFN_GATE), {E, hp.n_ff}, true, TensorRole::Matrix);
        l.ffn_up = b.get(name(LayerTensor::FFN_UP), {E, hp.n_ff}, true, TensorRole::Matrix);
        l.ffn_down = b.get(name(LayerTensor::FFN_DOWN), {hp.n_ff, E}, true, TensorRole::Matrix);
        l.post_ffw_norm_1 = b.get(name(LayerTensor::POST_FFW_NORM_1), {E}, true, TensorRole::Vector);
        l.gate_inp = b.get(name(LayerTensor::FFN_GATE_INP), {E, hp.n_expert}, true, TensorRole::Matrix);
        l.gate_inp_scale = b.get(name(LayerTensor::FFN_GATE_INP_SCALE), {E}, true, TensorRole::Vector);
        l.pre_ffw_norm_2 = b.get(name(LayerTensor::PRE_FFW_NORM_2), {E}, true, TensorRole::Vector);
        l.gate_up_exps = b.get(name(LayerTensor::FFN_GATE_UP_EXPS), {E, 2 * hp.n_ff_exp, hp.n_expert}, false, TensorRole::Matrix);
        if (l.gate_up_exps == nullptr) {
            l.gate_exps = b.get(name(LayerTensor::FFN_GATE_EXPS), {E, hp.n_ff_exp, hp.n_expert}, true, TensorRole::Matrix);
            l.up_exps = b.get(name(LayerTensor::FFN_UP_EXPS), {E, hp.n_ff_exp, hp.n_expert}, true, TensorRole::Matrix);
        }
        l.down_exps = b.get(name(LayerTensor::FFN_DOWN_EXPS), {hp.n_ff_exp, E, hp.n_expert}, true, TensorRole::Matrix);
        l.down_exps_scale = b.get(name(LayerTensor::FFN_DOWN_EXPS_SCALE), {hp.n_expert}, true, TensorRole::Vector);
        l.post_ffw_norm_2 = b.get(name(LayerTensor::POST_FFW_NORM_2), {E}, true, TensorRole::Vector);
        l.post_ffw_norm = b.get(name(LayerTensor::POST_FFW_NORM), {E}, true, TensorRole::Vector);
        l.dec_scale = b.get(name(LayerTensor::LAYER_OUTPUT_SCALE), {1}, true, TensorRole::Vector);
        l.enc_scale = b.get(name(LayerTensor::ENC_LAYER_OUTPUT_SCALE), {1}, true, TensorRole::Vector);
        auto out_scale = [&](LayerTensor t, std::initializer_list<int64_t> shape) {
            return b.get(name(t), shape, false, TensorRole::Vector);
        };
        const int64_t FE = hp.n_ff_exp;
        const int64_t NE = hp.n_expert;
        l.wq_s = out_scale(LayerTensor::ATTN_Q_OUT_SCALE, {q_dim});
        l.wk_s = out_scale(LayerTensor::ATTN_K_OUT_SCALE, {kv_dim});
        l.wv_s = l.wv != nullptr ? out_scale(LayerTensor::ATTN_V_OUT_SCALE, {kv_dim}) : nullptr;
        l.wo_s = out_scale(LayerTensor::ATTN_OUTPUT_OUT_SCALE, {E});
        l.ffn_gate_s = out_scale(LayerTensor::FFN_GATE_OUT_SCALE, {hp.n_ff});
        l.ffn_up_s = out_scale(LayerTensor::FFN_UP_OUT_SCALE, {hp.n_ff});
        l.ffn_down_s = out_scale(LayerTensor::FFN_DOWN_OUT_SCALE, {E});
        if (l.gate_up_exps != nullptr) {
            l.gate_up_exps_s = out_scale(LayerTensor::FFN_GATE_UP_EXPS_OUT_SCALE, {2 * FE, NE});
        } else {
            l.gate_exps_s = out_scale(LayerTensor::FFN_GATE_EXPS_OUT_SCALE, {FE, NE});
            l.up_exps_s = out_scale(LayerTensor::FFN_UP_EXPS_OUT_SCALE, {FE, NE});
        }
        l.down_exps_s = out_scale(LayerTensor::FFN_DOWN_EXPS_OUT_SCALE, {E, NE});
    }
    for (ggml_tensor * t = ggml_get_first_tensor(meta); t != nullptr; t = ggml_get_next_tensor(meta, t)) {
        if (used.count(ggml_get_name(t)) == 0) {
            log(DIFFGEMMA_LOG_WARN, "unused tensor in the GGUF: %s", ggml_get_name(t));
        }
    }
    return vectors;
}

// probs @ E contracts over the vocabulary, which is ggml's ne1 of tok_embd; mul_mat contracts over ne0, so
// self-conditioning needs E transposed. Built once here, a chunk of rows at a time to bound the scratch.
void build_transposed_embedding(const Weights & w, ggml_tensor * dst, int n_threads) {
    const int64_t n_embd = w.tok_embd->ne[0];
    const int64_t n_vocab = w.tok_embd->ne[1];
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n_vocab, (64ll << 20) / (n_embd * 4)));
    const size_t scratch = static_cast<size_t>(chunk * n_embd * 4 + chunk * 4) + 16 * ggml_tensor_overhead() +
                           ggml_graph_overhead() + (1 << 20);
    for (int64_t start = 0; start < n_vocab; start += chunk) {
        const int64_t n = std::min(chunk, n_vocab - start);
        ggml_init_params params = {scratch, nullptr, false};
        ggml_context * ctx = ggml_init(params);
        if (ctx == nullptr) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of scratch for the transposed embedding", scratch);
        }
        ggml_tensor * ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
        for (int64_t i = 0; i < n; ++i) {
            static_cast<int32_t *>(ids->data)[i] = static_cast<int32_t>(start + i);
        }
        ggml_tensor * rows = ggml_get_rows(ctx, w.tok_embd, ids);  // [n_embd, n] f32
        ggml_tensor * view = ggml_view_2d(ctx, dst, n, n_embd, dst->nb[1], static_cast<size_t>(start) * dst->nb[0]);
        ggml_tensor * out = ggml_cpy(ctx, ggml_transpose(ctx, rows), view);
        ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, out);
        const enum ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, n_threads);
        ggml_free(ctx);
        if (st != GGML_STATUS_SUCCESS) {
            raise(DIFFGEMMA_ERR_BACKEND, "building the transposed embedding failed (ggml status %d)", (int) st);
        }
    }
}

// Converts an f16 host tensor into a bf16 tensor of the same shape on any backend, a bounded chunk at a time.
void upload_f16_as_bf16(const ggml_tensor * src, ggml_tensor * dst) {
    const int64_t n = ggml_nelements(src);
    const int64_t chunk = 1 << 20;
    std::vector<float> f32(static_cast<size_t>(std::min(n, chunk)));
    std::vector<ggml_bf16_t> bf16(f32.size());
    const ggml_fp16_t * in = static_cast<const ggml_fp16_t *>(src->data);
    for (int64_t start = 0; start < n; start += chunk) {
        const int64_t m = std::min(chunk, n - start);
        ggml_fp16_to_fp32_row(in + start, f32.data(), m);
        ggml_fp32_to_bf16_row(f32.data(), bf16.data(), m);
        ggml_backend_tensor_set(dst, bf16.data(), static_cast<size_t>(start) * sizeof(ggml_bf16_t),
                                static_cast<size_t>(m) * sizeof(ggml_bf16_t));
    }
}

}  // namespace

TensorBinder::TensorBinder(ggml_context * meta, std::set<std::string> & used, std::vector<ggml_tensor *> & vectors)
    : meta_(meta), used_(used), vectors_(vectors) {}

ggml_tensor * TensorBinder::get(const std::string & name, std::initializer_list<int64_t> shape, bool required,
                                TensorRole role) {
    ggml_tensor * t = ggml_get_tensor(meta_, name.c_str());
    if (t == nullptr) {
        if (required) {
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' is missing from the GGUF (expected shape %s)",
                  name.c_str(), shape_str(shape.begin(), static_cast<int>(shape.size())).c_str());
        }
        return nullptr;
    }
    used_.insert(name);
    int64_t want[GGML_MAX_DIMS] = {1, 1, 1, 1};
    int i = 0;
    for (int64_t d : shape) {
        want[i++] = d;
    }
    for (int d = 0; d < GGML_MAX_DIMS; ++d) {
        if (t->ne[d] != want[d]) {
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' has shape %s, expected %s", name.c_str(),
                  shape_str(t->ne, ggml_n_dims(t)).c_str(), shape_str(want, static_cast<int>(shape.size())).c_str());
        }
    }
    const bool ok = role == TensorRole::Vector ? t->type == GGML_TYPE_F32 : is_matrix_type(t->type);
    if (!ok) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_TYPE, "tensor '%s' has type %s, which we cannot run for this tensor%s",
              name.c_str(), ggml_type_name(t->type), role == TensorRole::Vector ? " (norms and scalars must be f32)" : "");
    }
    if (role == TensorRole::Vector) {
        vectors_.push_back(t);
    }
    return t;
}

// Norm weights and scales multiply every activation: one NaN or infinity in them turns every logit into NaN,
// which would surface only as a sampler failure much later. They are small (f32 vectors), so all are read.
void check_finite(const std::vector<ggml_tensor *> & vectors) {
    for (const ggml_tensor * t : vectors) {
        const float * v = static_cast<const float *>(t->data);
        const int64_t n = ggml_nelements(t);
        for (int64_t i = 0; i < n; ++i) {
            if (!std::isfinite(v[i])) {
                raise(DIFFGEMMA_ERR_BAD_FORMAT, "tensor '%s' holds %s at index %lld (norm and scale weights must be finite)",
                      ggml_get_name(t), std::isnan(v[i]) ? "NaN" : (v[i] > 0 ? "inf" : "-inf"), static_cast<long long>(i));
            }
        }
    }
}

GgufMapping::~GgufMapping() {
    if (buf_ != nullptr) {
        ggml_backend_buffer_free(buf_);
    }
    if (map_ != nullptr) {
        munmap(map_, map_size_);
    }
}

void GgufMapping::map(const std::string & path, gguf_context * gguf, ggml_context * meta_ctx) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        raise(DIFFGEMMA_ERR_IO, "cannot open %s: %s", path.c_str(), std::strerror(errno));
    }
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        close(fd);
        raise(DIFFGEMMA_ERR_IO, "cannot stat %s: %s", path.c_str(), std::strerror(e));
    }
    map_size_ = static_cast<size_t>(st.st_size);
    map_ = mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot memory-map %s (%zu bytes): %s", path.c_str(), map_size_, std::strerror(errno));
    }

    const size_t data_offset = gguf_get_data_offset(gguf);
    if (data_offset > map_size_) {
        raise(DIFFGEMMA_ERR_BAD_FORMAT, "%s is truncated: the tensor data would start at byte %zu of %zu", path.c_str(),
              data_offset, map_size_);
    }
    char * data = static_cast<char *>(map_) + data_offset;
    const size_t data_size = map_size_ - data_offset;
    // ggml only reads through this buffer; the mapping is read-only.
    buf_ = ggml_backend_cpu_buffer_from_ptr(data, std::max<size_t>(data_size, 1));
    if (buf_ == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "cannot wrap the mapped weights in a CPU buffer");
    }
    ggml_backend_buffer_set_usage(buf_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    const int64_t n_tensors = gguf_get_n_tensors(gguf);
    for (int64_t i = 0; i < n_tensors; ++i) {
        const char * name = gguf_get_tensor_name(gguf, i);
        ggml_tensor * t = ggml_get_tensor(meta_ctx, name);
        if (t == nullptr) {
            raise(DIFFGEMMA_ERR_INTERNAL, "tensor '%s' of the GGUF has no descriptor in the metadata context", name);
        }
        const size_t offset = gguf_get_tensor_offset(gguf, i);
        size_t nbytes = 0;
        if (!checked_nbytes(t, &nbytes) || nbytes != ggml_nbytes(t)) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "tensor '%s' has shape %s of type %s, whose size in bytes overflows", name,
                  shape_str(t->ne, GGML_MAX_DIMS).c_str(), ggml_type_name(t->type));
        }
        if (offset % gguf_get_alignment(gguf) != 0) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "tensor '%s' starts at offset %zu, which is not a multiple of the file's alignment %zu",
                  name, offset, gguf_get_alignment(gguf));
        }
        if (offset > data_size || nbytes > data_size - offset) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "tensor '%s' (%zu bytes at offset %zu) lies outside the file's %zu bytes of tensor data (truncated file?)",
                  name, nbytes, offset, data_size);
        }
        if (ggml_backend_tensor_alloc(buf_, t, data + offset) != GGML_STATUS_SUCCESS) {
            raise(DIFFGEMMA_ERR_BACKEND, "cannot place tensor '%s' in the weights buffer", name);
        }
    }
}

WeightStore::~WeightStore() {
    for (ggml_backend_buffer_t buf : gpu_bufs_) {
        free_remote_quietly([buf] { ggml_backend_buffer_free(buf); });  // an RPC server may be gone (rpc.h)
    }
    for (ggml_context * ctx : gpu_ctxs_) {
        ggml_free(ctx);
    }
    if (derived_buf_ != nullptr) {
        ggml_backend_buffer_free(derived_buf_);
    }
    if (derived_ctx_ != nullptr) {
        ggml_free(derived_ctx_);
    }
}

void WeightStore::load(const std::string & path, gguf_context * gguf, ggml_context * meta_ctx, HParams & hp, Weights & w,
                       int n_threads) {
    const std::vector<ggml_tensor *> vectors = bind_tensors(meta_ctx, hp, w);

    mapping_.map(path, gguf, meta_ctx);
    check_finite(vectors);

    if (w.sc_gate != nullptr) {
        const ggml_type t_type = w.tok_embd->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
        ggml_init_params params = {ggml_tensor_overhead() * 2, nullptr, true};
        derived_ctx_ = ggml_init(params);
        w.embd_t = ggml_new_tensor_2d(derived_ctx_, t_type, hp.n_vocab, hp.n_embd);
        ggml_set_name(w.embd_t, "embd_t");
        derived_buf_ = ggml_backend_alloc_ctx_tensors_from_buft(derived_ctx_, ggml_backend_cpu_buffer_type());
        if (derived_buf_ == nullptr) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for the transposed embedding", ggml_nbytes(w.embd_t));
        }
        build_transposed_embedding(w, w.embd_t, n_threads);
    }
    w.head = w.tok_embd;
}

void WeightStore::free_host_embd_t() {
    if (derived_buf_ != nullptr) {
        ggml_backend_buffer_free(derived_buf_);
        derived_buf_ = nullptr;
    }
}

void WeightStore::place_on(const Gpu & gpu, const std::vector<ggml_tensor **> & slots, Weights & w) {
    ggml_init_params params = {ggml_tensor_overhead() * slots.size(), nullptr, true};
    ggml_context * ctx = ggml_init(params);
    if (ctx == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the context of the offloaded weights");
    }
    gpu_ctxs_.push_back(ctx);
    std::vector<ggml_tensor *> copies;
    for (ggml_tensor ** slot : slots) {
        // The self-conditioning product on the GPU runs bf16 x bf16 (f32 accumulation on tensor cores; ggml-cuda
        // would accumulate f16 x f16 in f16 over the whole vocabulary), so an f16 embd_t goes there as bf16.
        const bool to_bf16 = slot == &w.embd_t && (*slot)->type == GGML_TYPE_F16;
        ggml_tensor * copy = to_bf16 ? ggml_new_tensor(ctx, GGML_TYPE_BF16, GGML_MAX_DIMS, (*slot)->ne)
                                     : ggml_dup_tensor(ctx, *slot);
        ggml_set_name(copy, ggml_get_name(*slot));
        copies.push_back(copy);
    }
    ggml_backend_buffer_t buf;
    {
        GgmlErrorCapture quiet_ggml;  // the error below says it once, with the size
        buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, gpu_buffer_type(gpu));
    }
    if (buf == nullptr) {
        size_t total = 0;
        for (const ggml_tensor * t : copies) {
            total += ggml_nbytes(t);
        }
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate %.1f MiB of weights on %s (hint: a smaller n_gpu_layers, or "
              "cpu_moe / n_cpu_moe to keep expert weights in host memory)", total / 1048576.0, gpu.name.c_str());
    }
    gpu_bufs_.push_back(buf);
    ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (size_t i = 0; i < slots.size(); ++i) {
        if (copies[i]->type == (*slots[i])->type) {
            ggml_backend_tensor_set(copies[i], (*slots[i])->data, 0, ggml_nbytes(copies[i]));
        } else {
            upload_f16_as_bf16(*slots[i], copies[i]);
        }
        *slots[i] = copies[i];
        w.gpu_tensors.insert(copies[i]);
        if (gpu.remote) {
            w.remote_tensors.insert(copies[i]);
        }
    }
}

}  // namespace dg
