/* A C99 caller of the tokenizer API, with no Python involved: tokenize a file, detokenize it whole and
 * streamed token by token, and report. Usage: test_tokenizer VOCAB.gguf TEXT_FILE
 * Prints "ids=<id> <id> ...", then "roundtrip=ok|bad" and "stream=ok|bad". */
#include "diffgemma.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char * read_file(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    char * buf;
    long size;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (char *) malloc((size_t) size + 1);
    *n = fread(buf, 1, (size_t) size, f);
    fclose(f);
    return buf;
}

int main(int argc, char ** argv) {
    diffgemma_vocab * vocab = NULL;
    diffgemma_detokenizer * detok = NULL;
    char * text, * whole, * streamed, piece[64];
    int32_t * ids;
    size_t text_len = 0, n_ids = 0, n = 0, streamed_len = 0, i;
    int32_t status;

    if (argc != 3) {
        fprintf(stderr, "usage: %s VOCAB.gguf TEXT_FILE\n", argv[0]);
        return 2;
    }
    if (diffgemma_vocab_load(argv[1], &vocab) != DIFFGEMMA_OK) {
        fprintf(stderr, "load failed: %s\n", diffgemma_last_error());
        return 1;
    }
    text = read_file(argv[2], &text_len);
    if (text == NULL) return 1;

    /* Size query first (capacity 0), then the real call. */
    status = diffgemma_tokenize(vocab, text, text_len, 0, 1, NULL, 0, &n_ids);
    if (status != DIFFGEMMA_ERR_BUFFER_TOO_SMALL && !(status == DIFFGEMMA_OK && n_ids == 0)) {
        fprintf(stderr, "size query: %s\n", diffgemma_last_error());
        return 1;
    }
    ids = (int32_t *) malloc((n_ids + 1) * sizeof *ids);
    if (diffgemma_tokenize(vocab, text, text_len, 0, 1, ids, n_ids, &n_ids) != DIFFGEMMA_OK) {
        fprintf(stderr, "tokenize: %s\n", diffgemma_last_error());
        return 1;
    }
    printf("ids=");
    for (i = 0; i < n_ids; ++i) printf(i ? " %d" : "%d", (int) ids[i]);
    printf("\n");

    whole = (char *) malloc(text_len + 1);
    status = diffgemma_detokenize(vocab, ids, n_ids, 1, whole, text_len + 1, &n);
    printf("roundtrip=%s\n", status == DIFFGEMMA_OK && n == text_len && memcmp(whole, text, n) == 0 ? "ok" : "bad");

    /* Streamed one token at a time: every chunk must end on a UTF-8 character boundary. */
    streamed = (char *) malloc(text_len + 64);
    if (diffgemma_detokenizer_new(vocab, 1, &detok) != DIFFGEMMA_OK) return 1;
    for (i = 0; i < n_ids; ++i) {
        if (diffgemma_detokenizer_push(detok, &ids[i], 1, piece, sizeof piece, &n) != DIFFGEMMA_OK) return 1;
        if (diffgemma_utf8_incomplete_tail(piece, n) != 0) {
            printf("stream=split\n");
            return 1;
        }
        memcpy(streamed + streamed_len, piece, n);
        streamed_len += n;
    }
    if (diffgemma_detokenizer_flush(detok, piece, sizeof piece, &n) != DIFFGEMMA_OK) return 1;
    memcpy(streamed + streamed_len, piece, n);
    streamed_len += n;
    printf("stream=%s\n", streamed_len == text_len && memcmp(streamed, text, text_len) == 0 ? "ok" : "bad");
    printf("eog=%d bos=%d n_tokens=%d\n", (int) diffgemma_vocab_is_eog(vocab, diffgemma_vocab_eos(vocab)),
           (int) diffgemma_vocab_bos(vocab), (int) diffgemma_vocab_n_tokens(vocab));

    diffgemma_detokenizer_free(detok);
    diffgemma_vocab_free(vocab);
    free(streamed);
    free(whole);
    free(ids);
    free(text);
    return 0;
}
