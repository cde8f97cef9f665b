#include "loader/mmproj.h"

#include "core/errors.h"
#include "core/names.h"
#include "image/image_patches.h"
#include "loader/gguf_meta.h"

#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace dg {

namespace {

constexpr const char * kProjectorType = "gemma4v";

// A positive int32 from a u32 key (required or with a fallback), named in the error.
int32_t positive(const GgufMeta & m, Key key, int64_t fallback = -1) {
    const uint32_t v = fallback < 0 ? m.u32(key) : m.u32(key, static_cast<uint32_t>(fallback));
    if (v == 0 || v > INT32_MAX) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector key '%s' is %u; it must be 1 .. %d", key_name(key).c_str(), v,
              INT32_MAX);
    }
    return static_cast<int32_t>(v);
}

bool ends_with(const std::string & s, const char * suffix) {
    const size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

VisionHParams read_vision_hparams(const gguf_context * g, const std::string & path) {
    const GgufMeta m(g);
    // clip.cpp reads the plain key first, then the per-modality one (which llama.cpp's Gemma-4 converter writes).
    const Key type_key = m.has(Key::CLIP_PROJECTOR_TYPE) ? Key::CLIP_PROJECTOR_TYPE : Key::CLIP_VISION_PROJECTOR_TYPE;
    if (!m.has(type_key)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s is not a vision projector (neither '%s' nor '%s' is set; make one "
              "with `convert --mmproj`)", path.c_str(), key_name(Key::CLIP_PROJECTOR_TYPE).c_str(),
              key_name(Key::CLIP_VISION_PROJECTOR_TYPE).c_str());
    }
    const std::string type = m.str(type_key);
    if (type != kProjectorType) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s has projector type '%s'; DiffusionGemma's vision tower is '%s'",
              path.c_str(), type.c_str(), kProjectorType);
    }
    if (!m.boolean(Key::CLIP_HAS_VISION_ENCODER, true)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s has no vision encoder (%s is false)", path.c_str(),
              key_name(Key::CLIP_HAS_VISION_ENCODER).c_str());
    }
    VisionHParams hp;
    hp.n_embd = positive(m, Key::CLIP_VISION_EMBEDDING_LENGTH);
    hp.n_ff = positive(m, Key::CLIP_VISION_FEED_FORWARD_LENGTH);
    hp.n_layer = positive(m, Key::CLIP_VISION_BLOCK_COUNT);
    hp.n_head = positive(m, Key::CLIP_VISION_HEAD_COUNT);
    hp.n_embd_out = positive(m, Key::CLIP_VISION_PROJECTION_DIM);
    hp.patch_size = positive(m, Key::CLIP_VISION_PATCH_SIZE);
    hp.pooling = positive(m, Key::CLIP_VISION_SCALE_FACTOR, 3);
    hp.max_soft_tokens = positive(m, Key::CLIP_VISION_MAX_SOFT_TOKENS, 280);
    hp.eps = m.f32(Key::CLIP_VISION_LAYER_NORM_EPS, 1e-6f);
    hp.rope_theta = m.f32(Key::CLIP_VISION_ROPE_FREQ_BASE, 100.0f);
    if (!(hp.eps > 0.0f) || !(hp.rope_theta > 0.0f) || !std::isfinite(hp.rope_theta)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector %s: layer_norm_epsilon (%g) and rope.freq_base (%g) must be positive",
              path.c_str(), hp.eps, hp.rope_theta);
    }
    // The image processor's rules for these settings (image/image_patches.h), checked once here.
    PatchSettings settings;
    settings.patch_size = hp.patch_size;
    settings.pooling = hp.pooling;
    settings.max_soft_tokens = hp.max_soft_tokens;
    try {
        check_patch_settings(settings);
    } catch (const Error & e) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector %s: %s", path.c_str(), e.message.c_str());
    }
    return hp;
}

void bind_vision_tensors(ggml_context * meta, VisionHParams & hp, VisionWeights & w, std::vector<ggml_tensor *> & vectors,
                         const std::string & path) {
    std::set<std::string> used;
    TensorBinder b(meta, used, vectors);
    const int64_t E = hp.n_embd;
    const int64_t p = hp.patch_size;

    // The head size comes from the q norm (HF head_dim need not be n_embd / n_head).
    ggml_tensor * q_norm0 = ggml_get_tensor(meta, tensor_name(LayerTensor::V_ATTN_Q_NORM, 0).c_str());
    if (q_norm0 == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' is missing from the projector",
              tensor_name(LayerTensor::V_ATTN_Q_NORM, 0).c_str());
    }
    if (q_norm0->ne[0] < 4 || q_norm0->ne[0] % 4 != 0 || q_norm0->ne[0] > 4096) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' has %lld entries: the head size must be a multiple of 4 "
              "(2-D RoPE rotates each half by one coordinate)", ggml_get_name(q_norm0), static_cast<long long>(q_norm0->ne[0]));
    }
    hp.head_dim = static_cast<int32_t>(q_norm0->ne[0]);
    const int64_t D = hp.head_dim;
    const int64_t HD = static_cast<int64_t>(hp.n_head) * D;

    ggml_tensor * proj = ggml_get_tensor(meta, tensor_name(Tensor::MM_INPUT_PROJECTION).c_str());
    if (proj != nullptr && proj->ne[1] != hp.n_embd_out) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector %s: tensor '%s' projects to %lld, but %s says %d", path.c_str(),
              ggml_get_name(proj), static_cast<long long>(proj->ne[1]), key_name(Key::CLIP_VISION_PROJECTION_DIM).c_str(),
              hp.n_embd_out);
    }
    ggml_tensor * pos = ggml_get_tensor(meta, tensor_name(Tensor::V_POSITION_EMBD).c_str());
    if (pos != nullptr) {
        if (pos->ne[1] < 1 || pos->ne[1] > INT32_MAX) {
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tensor '%s' has %lld rows", ggml_get_name(pos),
                  static_cast<long long>(pos->ne[1]));
        }
        hp.n_pos = static_cast<int32_t>(pos->ne[1]);
    }
    w.patch_embd = b.get(tensor_name(Tensor::V_PATCH_EMBD), {p, p, 3, E}, true, TensorRole::Matrix);
    w.position_embd = b.get(tensor_name(Tensor::V_POSITION_EMBD), {E, hp.n_pos, 2}, true, TensorRole::Embed);
    w.std_bias = b.get(tensor_name(Tensor::V_STD_BIAS), {E}, false, TensorRole::Vector);
    w.std_scale = b.get(tensor_name(Tensor::V_STD_SCALE), {E}, false, TensorRole::Vector);
    if ((w.std_bias == nullptr) != (w.std_scale == nullptr)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector %s: '%s' and '%s' must be both present (standardize) or both absent",
              path.c_str(), tensor_name(Tensor::V_STD_BIAS).c_str(), tensor_name(Tensor::V_STD_SCALE).c_str());
    }
    w.mm_proj = b.get(tensor_name(Tensor::MM_INPUT_PROJECTION), {E, hp.n_embd_out}, true, TensorRole::Matrix);
    w.layers.resize(static_cast<size_t>(hp.n_layer));
    for (int il = 0; il < hp.n_layer; ++il) {
        VisionLayerWeights & l = w.layers[static_cast<size_t>(il)];
        auto name = [il](LayerTensor t) { return tensor_name(t, il); };
        l.ln1 = b.get(name(LayerTensor::V_LN1), {E}, true, TensorRole::Vector);
        l.wq = b.get(name(LayerTensor::V_ATTN_Q), {E, HD}, true, TensorRole::Matrix);
        l.wk = b.get(name(LayerTensor::V_ATTN_K), {E, HD}, true, TensorRole::Matrix);
        l.wv = b.get(name(LayerTensor::V_ATTN_V), {E, HD}, true, TensorRole::Matrix);
        l.wo = b.get(name(LayerTensor::V_ATTN_OUT), {HD, E}, true, TensorRole::Matrix);
        l.q_norm = b.get(name(LayerTensor::V_ATTN_Q_NORM), {D}, true, TensorRole::Vector);
        l.k_norm = b.get(name(LayerTensor::V_ATTN_K_NORM), {D}, true, TensorRole::Vector);
        l.attn_post_norm = b.get(name(LayerTensor::V_ATTN_POST_NORM), {E}, true, TensorRole::Vector);
        l.ln2 = b.get(name(LayerTensor::V_LN2), {E}, true, TensorRole::Vector);
        l.ffn_gate = b.get(name(LayerTensor::V_FFN_GATE), {E, hp.n_ff}, true, TensorRole::Matrix);
        l.ffn_up = b.get(name(LayerTensor::V_FFN_UP), {E, hp.n_ff}, true, TensorRole::Matrix);
        l.ffn_down = b.get(name(LayerTensor::V_FFN_DOWN), {hp.n_ff, E}, true, TensorRole::Matrix);
        l.ffn_post_norm = b.get(name(LayerTensor::V_FFN_POST_NORM), {E}, true, TensorRole::Vector);
    }
    for (ggml_tensor * t = ggml_get_first_tensor(meta); t != nullptr; t = ggml_get_next_tensor(meta, t)) {
        const std::string n = ggml_get_name(t);
        if (used.count(n) != 0) {
            continue;
        }
        // HF use_clipped_linears (false for the release) clamps each linear's input and output; llama.cpp stores the
        // bounds next to the weights. We do not run them: refusing is better than silently different features.
        for (const char * suffix : {".input_min", ".input_max", ".output_min", ".output_max"}) {
            if (ends_with(n, suffix)) {
                raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector %s has clipped linears (tensor '%s'; HF use_clipped_linears), "
                      "which are not supported", path.c_str(), n.c_str());
            }
        }
        log(DIFFGEMMA_LOG_WARN, "unused tensor in the projector: %s", n.c_str());
    }
}

}  // namespace

std::vector<ggml_tensor **> vision_tensor_slots(VisionWeights & w) {
    std::vector<ggml_tensor **> slots = {&w.patch_embd, &w.position_embd, &w.std_bias, &w.std_scale, &w.mm_proj};
    for (VisionLayerWeights & l : w.layers) {
        for (ggml_tensor ** t : {&l.ln1, &l.wq, &l.wk, &l.wv, &l.wo, &l.q_norm, &l.k_norm, &l.attn_post_norm, &l.ln2,
                                 &l.ffn_gate, &l.ffn_up, &l.ffn_down, &l.ffn_post_norm}) {
            slots.push_back(t);
        }
    }
    static_assert(sizeof(VisionLayerWeights) == 13 * sizeof(ggml_tensor *), "a VisionLayerWeights member is not listed");
    slots.erase(std::remove_if(slots.begin(), slots.end(), [](ggml_tensor ** t) { return *t == nullptr; }), slots.end());
    return slots;
}

VisionModel::~VisionModel() {
    if (meta_ctx != nullptr) {
        ggml_free(meta_ctx);
    }
    if (gguf != nullptr) {
        gguf_free(gguf);
    }
}

std::unique_ptr<VisionModel> load_vision_model(const std::string & path, int32_t text_n_embd) {
    auto vm = std::make_unique<VisionModel>();
    vm->path = path;
    gguf_init_params gp = {true, &vm->meta_ctx};
    {
        GgmlErrorCapture ggml_errors;  // ggml's parser says why only in its log
        vm->gguf = gguf_init_from_file(path.c_str(), gp);
        if (vm->gguf == nullptr) {
            const std::string why = ggml_errors.text();
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "the projector %s is a corrupt or truncated GGUF file: %s", path.c_str(),
                  why.empty() ? "ggml's GGUF parser rejected it" : why.c_str());
        }
    }
    vm->hp = read_vision_hparams(vm->gguf, path);
    if (vm->hp.n_embd_out != text_n_embd) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "projector does not match the model: %s projects to %d features, the model's "
              "n_embd is %d", path.c_str(), vm->hp.n_embd_out, text_n_embd);
    }
    std::vector<ggml_tensor *> vectors;
    bind_vision_tensors(vm->meta_ctx, vm->hp, vm->w, vectors, path);
    vm->mapping.map(path, vm->gguf, vm->meta_ctx);
    check_finite(vectors);
    return vm;
}

}  // namespace dg
