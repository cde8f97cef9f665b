// C view of the GGUF name table (gguf_names.def): enums of keys and tensors plus their name strings.
#pragma once

#include <string>

namespace dg {

enum class Key {
#define DG_ARCH(name)
#define DG_KEY(id, name) id,
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

enum class Tensor {
#define DG_ARCH(name)
#define DG_KEY(id, name)
#define DG_TENSOR(id, name) id,
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

enum class LayerTensor {
#define DG_ARCH(name)
#define DG_KEY(id, name)
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name) id,
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR
};

// The architecture string of DiffusionGemma GGUFs ("diffusion-gemma").
const char * arch_name();

// Full key name with the architecture prefix substituted ("diffusion-gemma.block_count").
std::string key_name(Key key);

std::string tensor_name(Tensor tensor);

std::string tensor_name(LayerTensor tensor, int layer);

}  // namespace dg
