#include "loader/gguf_meta.h"

#include "core/errors.h"

#include "gguf.h"

namespace dg {

namespace {

const char * type_label(enum gguf_type t) { return gguf_type_name(t); }

}  // namespace

int64_t GgufMeta::find(Key key) const { return gguf_find_key(ctx_, key_name(key).c_str()); }

bool GgufMeta::has(Key key) const { return find(key) >= 0; }

static int64_t require(const gguf_context * ctx, int64_t id, Key key) {
    if (id < 0) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF metadata key '%s' is missing", key_name(key).c_str());
    }
    return id;
}

static uint32_t as_u32(const gguf_context * ctx, int64_t id, Key key) {
    const enum gguf_type t = gguf_get_kv_type(ctx, id);
    switch (t) {
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx, id);
        case GGUF_TYPE_INT32: {
            const int32_t v = gguf_get_val_i32(ctx, id);
            if (v < 0) {
                raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' is negative (%d)", key_name(key).c_str(), v);
            }
            return static_cast<uint32_t>(v);
        }
        case GGUF_TYPE_UINT64: {
            const uint64_t v = gguf_get_val_u64(ctx, id);
            if (v > UINT32_MAX) {
                raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' is out of range (%llu)", key_name(key).c_str(),
                      (unsigned long long) v);
            }
            return static_cast<uint32_t>(v);
        }
        default:
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has type %s, expected an integer", key_name(key).c_str(),
                  type_label(t));
    }
}

uint32_t GgufMeta::u32(Key key) const { return as_u32(ctx_, require(ctx_, find(key), key), key); }

uint32_t GgufMeta::u32(Key key, uint32_t fallback) const {
    const int64_t id = find(key);
    return id < 0 ? fallback : as_u32(ctx_, id, key);
}

static float as_f32(const gguf_context * ctx, int64_t id, Key key) {
    const enum gguf_type t = gguf_get_kv_type(ctx, id);
    if (t == GGUF_TYPE_FLOAT32) {
        return gguf_get_val_f32(ctx, id);
    }
    if (t == GGUF_TYPE_FLOAT64) {
        return static_cast<float>(gguf_get_val_f64(ctx, id));
    }
    raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has type %s, expected a float", key_name(key).c_str(), type_label(t));
}

float GgufMeta::f32(Key key) const { return as_f32(ctx_, require(ctx_, find(key), key), key); }

float GgufMeta::f32(Key key, float fallback) const {
    const int64_t id = find(key);
    return id < 0 ? fallback : as_f32(ctx_, id, key);
}

bool GgufMeta::boolean(Key key, bool fallback) const {
    const int64_t id = find(key);
    if (id < 0) {
        return fallback;
    }
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_BOOL) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has type %s, expected bool", key_name(key).c_str(),
              type_label(gguf_get_kv_type(ctx_, id)));
    }
    return gguf_get_val_bool(ctx_, id);
}

std::string GgufMeta::str(Key key) const {
    const int64_t id = require(ctx_, find(key), key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_STRING) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has type %s, expected a string", key_name(key).c_str(),
              type_label(gguf_get_kv_type(ctx_, id)));
    }
    return gguf_get_val_str(ctx_, id);
}

std::vector<int32_t> GgufMeta::per_layer_ints(Key key, int n) const {
    const int64_t id = require(ctx_, find(key), key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY) {
        return std::vector<int32_t>(static_cast<size_t>(n), static_cast<int32_t>(as_u32(ctx_, id, key)));
    }
    const enum gguf_type et = gguf_get_arr_type(ctx_, id);
    const size_t len = gguf_get_arr_n(ctx_, id);
    if (len != static_cast<size_t>(n)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has %zu entries, expected one per layer (%d)",
              key_name(key).c_str(), len, n);
    }
    if (et != GGUF_TYPE_INT32 && et != GGUF_TYPE_UINT32) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' is an array of %s, expected int32", key_name(key).c_str(),
              type_label(et));
    }
    const auto * data = static_cast<const int32_t *>(gguf_get_arr_data(ctx_, id));
    std::vector<int32_t> out(data, data + len);
    for (size_t i = 0; i < len; ++i) {
        if (out[i] < 0) {
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s'[%zu] is negative", key_name(key).c_str(), i);
        }
    }
    return out;
}

std::vector<bool> GgufMeta::per_layer_bools(Key key, int n) const {
    const int64_t id = require(ctx_, find(key), key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_BOOL) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' must be an array of bool (one per layer)", key_name(key).c_str());
    }
    const size_t len = gguf_get_arr_n(ctx_, id);
    if (len != static_cast<size_t>(n)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' has %zu entries, expected one per layer (%d)",
              key_name(key).c_str(), len, n);
    }
    const auto * data = static_cast<const int8_t *>(gguf_get_arr_data(ctx_, id));
    std::vector<bool> out(len);
    for (size_t i = 0; i < len; ++i) {
        out[i] = data[i] != 0;
    }
    return out;
}

}  // namespace dg
