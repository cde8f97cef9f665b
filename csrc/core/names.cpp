#include "core/names.h"

#include <cstdio>

namespace dg {

namespace {

const char * const kKeyPatterns[] = {
#define DG_ARCH(name)
#define DG_KEY(id, name) name,
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

const char * const kTensorNames[] = {
#define DG_ARCH(name)
#define DG_KEY(id, name)
#define DG_TENSOR(id, name) name,
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

const char * const kLayerTensorPatterns[] = {
#define DG_ARCH(name)
#define DG_KEY(id, name)
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name) name,
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

const char * const kArch =
#define DG_ARCH(name) name
#define DG_KEY(id, name)
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
    ;

std::string substitute(const char * pattern, const char * token, const std::string & value) {
    std::string s = pattern;
    const size_t at = s.find(token);
    if (at != std::string::npos) {
        s.replace(at, 2, value);
    }
    return s;
}

}  // namespace

const char * arch_name() { return kArch; }

std::string key_name(Key key) { return substitute(kKeyPatterns[static_cast<int>(key)], "%s", kArch); }

std::string tensor_name(Tensor tensor) { return kTensorNames[static_cast<int>(tensor)]; }

std::string tensor_name(LayerTensor tensor, int layer) {
    return substitute(kLayerTensorPatterns[static_cast<int>(tensor)], "%d", std::to_string(layer));
}

}  // namespace dg
