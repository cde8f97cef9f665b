// Element-wise kernels we run as ggml custom ops on the CPU backend, where one fused node replaces a chain
// of ggml nodes: every node costs the CPU backend a barrier of all its threads, which on a busy machine
// (threads descheduled while others wait) costs more than the arithmetic.
#pragma once

#include "ggml.h"

namespace dg {

// dst = gelu_tanh(a) * b element-wise, with a, b f32 of the same shape (any strides, e.g. the two halves
// of a fused gate_up product); dst contiguous. Same operation order as the unfused ggml chain it replaces
// (x*x*x, + 0.044715 x^3, * sqrt(2/pi), tanh, (0.5 x) * (t + 1), * b), with a vectorised tanh whose
// absolute error is a few 1e-8.
void geglu_tanh_kernel(ggml_tensor * dst, const ggml_tensor * a, const ggml_tensor * b, int ith, int nth, void * userdata);

// dst = cap * tanh(a / cap) (the final logit softcap), a contiguous f32; userdata points to cap (a float that
// outlives the graph). One node instead of scale, tanh, scale; the same vectorised tanh.
void softcap_kernel(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * userdata);

}  // namespace dg
