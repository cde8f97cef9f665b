// Typed, checked access to GGUF metadata: every getter names the key and what was wrong with it.
#pragma once

#include "core/names.h"

#include <cstdint>
#include <string>
#include <vector>

struct gguf_context;

namespace dg {

class GgufMeta {
  public:
    explicit GgufMeta(const gguf_context * ctx) : ctx_(ctx) {}

    bool has(Key key) const;
    // Required getters throw dg::Error (DIFFGEMMA_ERR_UNSUPPORTED_MODEL) naming the key when it is absent
    // or has the wrong type; optional ones return `fallback` when absent (a wrong type still throws).
    uint32_t u32(Key key) const;
    uint32_t u32(Key key, uint32_t fallback) const;
    float f32(Key key) const;
    float f32(Key key, float fallback) const;
    bool boolean(Key key, bool fallback) const;
    std::string str(Key key) const;
    // A per-layer array (INT32/UINT32 or BOOL) of exactly n entries; a scalar is broadcast to all layers.
    std::vector<int32_t> per_layer_ints(Key key, int n) const;
    std::vector<bool> per_layer_bools(Key key, int n) const;

  private:
    int64_t find(Key key) const;  // -1 if absent
    const gguf_context * ctx_;
};

}  // namespace dg
