// Randomised robustness check of the tokenizer under AddressSanitizer + UBSan: random bytes in, random ids
// out, streaming in random chunks; every call must return a status, never crash, and round-trip exactly.
//
//   g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -Icsrc -Icsrc/include \
//       -I$GGML/include tests/c/fuzz_tokenizer.cpp csrc/core/errors.cpp csrc/tokenizer/tokenizer_*.cpp \
//       -L$GGML/lib64 -lggml-base -lggml -Wl,-rpath,$GGML/lib64 -o /tmp/fuzz_tokenizer
//   /tmp/fuzz_tokenizer VOCAB.gguf [iterations]
#include "tokenizer/tokenizer.h"
#include "core/errors.h"

#include <cstdio>
#include <cstdlib>
#include <random>

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s VOCAB.gguf [iterations]\n", argv[0]);
        return 2;
    }
    const long iterations = argc > 2 ? std::atol(argv[2]) : 20000;
    std::unique_ptr<diffgemma_vocab> vocab;
    try {
        vocab = dg::load_vocab_file(argv[1]);
    } catch (const dg::Error & e) {
        std::fprintf(stderr, "load: %s\n", e.message.c_str());
        return 1;
    }
    std::mt19937_64 rng(42);
    const std::string alphabet[] = {"<", "|", ">", "<|turn>", "<turn|>", "<|channel>", " ", "\n", "\xE2\x96\x81",
                                    "a", "e", "th", "\xC3\xA9", "\xF0\x9F\x98\x80", "\xE2", "\x82", "\xFF", "\x80"};
    long n_tokens = 0;
    for (long it = 0; it < iterations; ++it) {
        std::string text;
        const int len = static_cast<int>(rng() % 64);
        for (int i = 0; i < len; ++i) {
            if (rng() % 3 == 0) {
                text.push_back(static_cast<char>(rng() & 0xFF));
            } else {
                text += alphabet[rng() % (sizeof alphabet / sizeof alphabet[0])];
            }
        }
        std::vector<int32_t> ids;
        vocab->tokenize(text, rng() & 1, rng() & 1, ids);
        n_tokens += static_cast<long>(ids.size());
        std::vector<int32_t> plain;
        vocab->tokenize(text, false, true, plain);
        const std::string back = vocab->detokenize(plain.data(), plain.size(), true);
        if (text.find("\xE2\x96\x81") == std::string::npos && back != text) {
            std::fprintf(stderr, "round trip failed at iteration %ld\n", it);
            return 1;
        }
        // Random ids (valid and not) through the streaming path; no chunk may end inside a character.
        dg::Detokenizer stream(*vocab, rng() & 1);
        std::string out;
        std::vector<size_t> cuts;
        for (int i = 0; i < 8; ++i) {
            int32_t id = static_cast<int32_t>(rng() % (vocab->n_tokens() + 4)) - 2;
            try {
                stream.push(&id, 1, out);
            } catch (const dg::Error & e) {
                if (e.status != DIFFGEMMA_ERR_INVALID_ARGUMENT || vocab->valid_id(id)) return 1;
            }
            cuts.push_back(out.size());
        }
        stream.flush(out);
        std::vector<bool> inside(out.size() + 1, false);
        for (size_t p = 0; p < out.size();) {
            const size_t n = dg::utf8_char_len(out.data() + p, out.size() - p);
            for (size_t k = 1; k < n; ++k) inside[p + k] = true;
            p += n > 0 ? n : 1;
        }
        for (const size_t c : cuts) {
            if (inside[c]) {
                std::fprintf(stderr, "stream split a character at iteration %ld\n", it);
                return 1;
            }
        }
    }
    std::printf("ok: %ld iterations, %ld tokens\n", iterations, n_tokens);
    return 0;
}
