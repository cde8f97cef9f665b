// libFuzzer harness for the model loader: arbitrary bytes -> diffgemma_model_load must return a status (and,
// for a file it accepts, expose consistent metadata and run an encoder and a decoder pass), never crash, leak
// or read outside the file.
//
// The bytes go to an in-memory file (memfd), so the real entry point runs as an app calls it: stat, ggml's
// GGUF parser, hparams, tokenizer tables, tensor binding against the mmap. Built by scripts/fuzz_gguf.sh with
// clang -fsanitize=fuzzer,address,undefined over our sources (ggml itself is the prebuilt library).
#include "diffgemma.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

namespace {

void quiet(int32_t /*level*/, const char * /*text*/, void * /*user_data*/) {}

// A file the loader accepts must also compute: one encoder and one decoder pass over whatever hyper-parameters
// the mutation produced (graph building asserts in ggml would abort here). Small canvases only, to keep each
// input fast; every failure must still be a status.
void run_one_pass(diffgemma_model * model) {
    const int32_t canvas = diffgemma_model_canvas_length(model);
    const int32_t n_vocab = diffgemma_model_n_vocab(model);
    if (canvas > 64 || static_cast<int64_t>(canvas) * n_vocab > (1 << 20)) {
        return;
    }
    diffgemma_context_params cp;
    diffgemma_context_default_params(&cp);
    cp.n_ctx = 2 * canvas + 8;
    cp.n_threads = 1;
    diffgemma_context * ctx = nullptr;
    if (diffgemma_context_new(model, &cp, &ctx) != DIFFGEMMA_OK) {
        return;
    }
    std::vector<int32_t> ids(static_cast<size_t>(canvas), n_vocab - 1);
    std::vector<float> logits(static_cast<size_t>(canvas) * static_cast<size_t>(n_vocab));
    if (diffgemma_encode(ctx, ids.data(), 3 < canvas ? 3 : canvas) == DIFFGEMMA_OK) {
        diffgemma_decoder_logits(ctx, ids.data(), nullptr, logits.data());
    }
    diffgemma_context_free(ctx);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int * /*argc*/, char *** /*argv*/) {
    diffgemma_log_set(quiet, nullptr);  // "unused tensor" warnings on every input would drown the fuzzer's output
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const int fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
    if (fd < 0) {
        std::perror("memfd_create");
        std::abort();
    }
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            std::perror("write");
            std::abort();
        }
        done += static_cast<size_t>(n);
    }
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    diffgemma_model_params params;
    diffgemma_model_default_params(&params);
    params.n_threads = 1;
    diffgemma_model * model = nullptr;
    const int32_t status = diffgemma_model_load(path, &params, &model);
    if (status == DIFFGEMMA_OK) {
        // Touch what an app reads right after loading.
        size_t total = 0;
        for (int32_t i = 0; i < diffgemma_model_meta_count(model); ++i) {
            total += std::strlen(diffgemma_model_meta_key(model, i)) + std::strlen(diffgemma_model_meta_value(model, i));
        }
        if (diffgemma_model_n_vocab(model) <= 0 || diffgemma_model_canvas_length(model) <= 0 || total == 0) {
            std::fprintf(stderr, "loaded model with inconsistent facts\n");
            std::abort();
        }
        run_one_pass(model);
        diffgemma_model_free(model);
    } else if (model != nullptr || diffgemma_last_error()[0] == '\0') {
        std::fprintf(stderr, "status %d without a reason or with a model\n", status);
        std::abort();
    }
    close(fd);
    return 0;
}
