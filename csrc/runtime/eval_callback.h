// The context's one scheduler eval callback: the timing split (timing.h) and the tensor dump (tensor_dump.h)
// share it, since ggml's scheduler takes a single callback.
#pragma once

struct diffgemma_context;

namespace dg {

// Points the context's scheduler at the eval callback that serves the timing split and the tensor dump, or at
// none when both are off.
void update_eval_callback(diffgemma_context * ctx);

}  // namespace dg
