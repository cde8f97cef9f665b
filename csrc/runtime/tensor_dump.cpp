// See tensor_dump.h.
#include "runtime/tensor_dump.h"

#include "ggml-backend.h"

#include <cstring>

namespace dg {

bool TensorDump::wants(const char * name) const {
    for (const std::string & p : patterns) {
        if (!p.empty() && p.back() == '*' ? std::strncmp(name, p.data(), p.size() - 1) == 0 : p == name) {
            return true;
        }
    }
    return false;
}

void TensorDump::hand_over(const ggml_tensor * t) const {
    if (!ggml_is_contiguous(t)) {
        return;
    }
    const int64_t n = ggml_nelements(t);
    std::vector<float> values(static_cast<size_t>(n));
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_get(t, values.data(), 0, ggml_nbytes(t));
    } else {
        std::vector<char> raw(ggml_nbytes(t));
        ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
        if (t->type == GGML_TYPE_I32) {  // expert ids and the like
            const int32_t * ids = reinterpret_cast<const int32_t *>(raw.data());
            for (int64_t i = 0; i < n; ++i) {
                values[static_cast<size_t>(i)] = static_cast<float>(ids[i]);
            }
        } else if (const ggml_type_traits * tt = ggml_get_type_traits(t->type); tt->to_float != nullptr) {
            tt->to_float(raw.data(), values.data(), n);
        } else {
            return;
        }
    }
    callback(t->name, ggml_n_dims(t), t->ne, values.data(), user_data);
}

}  // namespace dg
