/*
 * diffgemma.h - the one public header of diffgemma_cpp.
 *
 * Runs Google's DiffusionGemma (a block-diffusion Gemma-4 MoE) from a GGUF file on ggml.
 *
 * Usage sketch:
 *
 *     diffgemma_model_params mp;
 *     diffgemma_model_default_params(&mp);
 *     diffgemma_model * model = NULL;
 *     if (diffgemma_model_load("model.gguf", &mp, &model) != DIFFGEMMA_OK) {
 *         fprintf(stderr, "%s\n", diffgemma_last_error());
 *     }
 *     ... diffgemma_context_new(model, &cp, &ctx);
 *     // with images (mp.mmproj_path set): the prompt holds one run of diffgemma_image_n_tokens(model, w, h)
 *     // image tokens per image; diffgemma_image img = {rgb, w, h}; diffgemma_set_images(ctx, &img, 1);
 *     diffgemma_generate_begin(ctx, prompt, n_prompt, &sp, NULL);       // or diffgemma_generate(...): the whole loop
 *     for (diffgemma_canvas_info info = {0}; !info.done;) {
 *         if (diffgemma_generate_next(ctx, NULL, NULL, canvas, &info) != DIFFGEMMA_OK) break;
 *         ... use canvas[0 .. info.n_content) ...
 *     }
 *     diffgemma_context_free(ctx);
 *     diffgemma_model_free(model);
 *
 * Conventions:
 *   - Every fallible call returns an int32_t status (DIFFGEMMA_OK or a negative DIFFGEMMA_ERR_*); the
 *     reason, with a hint, is in diffgemma_last_error() (thread-local, valid until the next failing call
 *     on the same thread). Nothing in this library exits or aborts on bad input.
 *   - Handles are opaque. Every *_new and *_load has a matching *_free; frees accept NULL.
 *   - Parameter structs are filled by *_default_params() and passed by pointer.
 *
 * Thread contract:
 *   - A diffgemma_model holds read-only weights and may be shared by several threads.
 *   - A diffgemma_context (KV cache, canvas, scratch) is used by one thread at a time. A second thread
 *     entering a busy context gets DIFFGEMMA_ERR_BUSY instead of undefined behaviour. While a generation is
 *     open (diffgemma_generate_begin until its last canvas or diffgemma_generate_end) the calls that change
 *     the cache (prefill, encode, decoder_logits, kv_truncate, set_images, image_embed, another begin) get
 *     DIFFGEMMA_ERR_BUSY too.
 *   - diffgemma_cancel() is the one call that may be made from any thread at any time.
 *
 * The part between cffi-begin and cffi-end is also fed verbatim (minus DIFFGEMMA_API) to cffi to build the
 * Python bindings: keep it to plain declarations, enums and integer #defines.
 */
#ifndef DIFFGEMMA_H
#define DIFFGEMMA_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && !defined(__MINGW32__)
#  ifdef DIFFGEMMA_BUILD
#    define DIFFGEMMA_API __declspec(dllexport)
#  else
#    define DIFFGEMMA_API __declspec(dllimport)
#  endif
#else
#  define DIFFGEMMA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// cffi-begin

/* Bumped on every incompatible change of this header. */
#define DIFFGEMMA_API_VERSION 8

/* ---- status codes ---- */
enum diffgemma_status {
    DIFFGEMMA_OK                    =   0,
    DIFFGEMMA_ERR_INVALID_ARGUMENT  =  -1,  /* a NULL handle, a value out of range */
    DIFFGEMMA_ERR_IO                =  -2,  /* file missing, unreadable, unwritable, disk full */
    DIFFGEMMA_ERR_BAD_FORMAT        =  -3,  /* corrupt or truncated file, not a GGUF */
    DIFFGEMMA_ERR_UNSUPPORTED_MODEL =  -4,  /* a valid GGUF of another architecture, or bad hparams / tensors */
    DIFFGEMMA_ERR_UNSUPPORTED_TYPE  =  -5,  /* a tensor or quantization type we cannot run */
    DIFFGEMMA_ERR_OUT_OF_MEMORY     =  -6,  /* an allocation failed */
    DIFFGEMMA_ERR_CONTEXT_OVERFLOW  =  -7,  /* prompt + canvases do not fit n_ctx */
    DIFFGEMMA_ERR_CANCELLED         =  -8,  /* diffgemma_cancel() stopped the call */
    DIFFGEMMA_ERR_BACKEND           =  -9,  /* a compute backend failed or is missing */
    DIFFGEMMA_ERR_BUSY              = -10,  /* the context is in use by another thread */
    DIFFGEMMA_ERR_BUFFER_TOO_SMALL  = -11,  /* an output buffer is too small; the needed size is reported */
    DIFFGEMMA_ERR_INTERNAL          = -12   /* a bug: please report it */
};

/* ---- log levels (same order as ggml's) ---- */
enum diffgemma_log_level {
    DIFFGEMMA_LOG_DEBUG = 1,
    DIFFGEMMA_LOG_INFO  = 2,
    DIFFGEMMA_LOG_WARN  = 3,
    DIFFGEMMA_LOG_ERROR = 4
};

/* Receives every log line of this library and of ggml. `text` ends with a newline. */
typedef void (*diffgemma_log_callback)(int32_t level, const char * text, void * user_data);

/* ---- library ---- */

/* Version of this library, e.g. "0.1.0". */
DIFFGEMMA_API const char * diffgemma_version(void);

/* DIFFGEMMA_API_VERSION the library was built with (compare with the header's to detect a mismatch). */
DIFFGEMMA_API int32_t diffgemma_api_version(void);

/* One line: our version, ggml version and commit, backends compiled in, CPU features, and which of our CPU kernels a
 * context gets (the CPU capped by the A/B switches as the environment sets them at the first call). Static storage. */
DIFFGEMMA_API const char * diffgemma_system_info(void);

/* Devices this build can offload to (0 on a CPU-only build): ggml's GPUs, then the devices of registered RPC
 * servers ("RPC0 (127.0.0.1:50052)"); and a description of device i ("NAME (DESCRIPTION), FREE of TOTAL MiB
 * free"), or NULL for an index out of range. The text stays valid until the next call. */
DIFFGEMMA_API int32_t diffgemma_gpu_count(void);
DIFFGEMMA_API const char * diffgemma_gpu_description(int32_t i);

/* ---- ggml RPC: devices of other machines (or processes) ----
 * ggml RPC has NO authentication and NO encryption: a peer that reaches a server's port can read and write
 * that machine's device memory. Serve on 127.0.0.1 and reach it through an SSH tunnel, or on a private network.
 * A client's faults (server unreachable, wrong protocol on the port, server lost mid-call) come back as
 * DIFFGEMMA_ERR_BACKEND within seconds instead of ggml's abort() or an endless wait; after a server was lost,
 * the models using it fail every call and must be freed and loaded again. Registering a server sets SIGPIPE to
 * ignored if it was at its default (a write to a lost server would otherwise kill the process). */

/* 1 when the installed ggml has the RPC backend (built with GGML_RPC=ON), else 0. */
DIFFGEMMA_API int32_t diffgemma_rpc_available(void);

/* Registers the devices of the RPC servers in `endpoints` ("host:port,host:port"), each probed first (a TCP
 * connect and the ggml RPC hello within 5 s). Idempotent per endpoint. They then count among the offload
 * devices (diffgemma_gpu_count). diffgemma_model_params.rpc_servers does the same at load. */
DIFFGEMMA_API int32_t diffgemma_rpc_add_servers(const char * endpoints);

/* Serves this machine's devices (`devices`: ggml device names, "CUDA0,CUDA1"; NULL or "": every GPU, else the
 * CPU) to RPC clients on host:port, with n_threads CPU threads (<= 0: the default). Blocks while serving; returns
 * only on an error (port in use, no RPC in this ggml, a bad device). A host outside 127.0.0.0/8 is refused unless
 * allow_remote is 1 (see the warning above). ggml's server takes one client at a time. */
DIFFGEMMA_API int32_t diffgemma_rpc_serve(const char * host, int32_t port, const char * devices, int32_t n_threads,
                                          int32_t allow_remote);

/* Compute threads used when a params struct leaves n_threads <= 0: one per physical core among the CPUs this
 * process may run on (affinity mask), capped by a cgroup v2 CPU quota. */
DIFFGEMMA_API int32_t diffgemma_default_n_threads(void);

/* Reason of the last failure on this thread ("" if none). */
DIFFGEMMA_API const char * diffgemma_last_error(void);

/* Status code of the last failure on this thread (DIFFGEMMA_OK if none). */
DIFFGEMMA_API int32_t diffgemma_last_status(void);

/* Human-readable name of a status code, e.g. "DIFFGEMMA_ERR_IO". Static storage. */
DIFFGEMMA_API const char * diffgemma_status_name(int32_t status);

/* Route log output (ours and ggml's) to `callback`; NULL restores the default (stderr, WARN and above). */
DIFFGEMMA_API void diffgemma_log_set(diffgemma_log_callback callback, void * user_data);

/* ---- tensor types and quantization (used by the converter) ---- */

/* Name of a ggml tensor type ("q4_K", ...), or NULL if the id is not a known type. */
DIFFGEMMA_API const char * diffgemma_type_name(int32_t ggml_type);

/* Bytes of one row of `n_per_row` elements of `ggml_type`; 0 if the type is unknown or the row length is
 * not a multiple of the type's block size. */
DIFFGEMMA_API size_t diffgemma_type_row_size(int32_t ggml_type, int64_t n_per_row);

/* Quantize `n_rows` rows of `n_per_row` float32 values with ggml's own quantizer for `ggml_type` (any type
 * ggml can quantize without an importance matrix, plus F32/F16/BF16). `dst` must hold
 * n_rows * diffgemma_type_row_size(type, n_per_row) bytes (`dst_capacity`). Writes the byte count to
 * *out_bytes. Thread-safe. */
DIFFGEMMA_API int32_t diffgemma_quantize_rows(int32_t ggml_type, const float * src, void * dst,
                                              int64_t n_rows, int64_t n_per_row,
                                              size_t dst_capacity, size_t * out_bytes);

/* ---- tokenizer ---- */
/*
 * The Gemma-4 tokenizer of a GGUF (tokenizer.ggml.model = "gemma4"): byte-fallback BPE, equal to Hugging
 * Face `tokenizers` on the tokenizer.json the GGUF came from. A vocab is read-only and thread-safe; a
 * diffgemma_detokenizer (streaming state) is used by one thread at a time.
 * Detokenized text is raw bytes: byte-exact (a <0xNN> token is that byte; invalid UTF-8 is not replaced).
 */
typedef struct diffgemma_vocab diffgemma_vocab;
typedef struct diffgemma_detokenizer diffgemma_detokenizer;

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum diffgemma_token_type {
    DIFFGEMMA_TOKEN_TYPE_UNDEFINED    = 0,
    DIFFGEMMA_TOKEN_TYPE_NORMAL       = 1,
    DIFFGEMMA_TOKEN_TYPE_UNKNOWN      = 2,
    DIFFGEMMA_TOKEN_TYPE_CONTROL      = 3,  /* special: matched whole only with parse_special, hidden unless render_special */
    DIFFGEMMA_TOKEN_TYPE_USER_DEFINED = 4,  /* matched whole and rendered always (<|channel>, <|"|>, ...) */
    DIFFGEMMA_TOKEN_TYPE_UNUSED       = 5,
    DIFFGEMMA_TOKEN_TYPE_BYTE         = 6   /* <0xNN> byte-fallback token */
};

/* Loads only the vocabulary of a GGUF (no weights) into *out. A model's own vocab comes from
 * diffgemma_model_get_vocab() instead and must not be freed. */
DIFFGEMMA_API int32_t diffgemma_vocab_load(const char * gguf_path, diffgemma_vocab ** out);

/* Frees a vocab from diffgemma_vocab_load (NULL is fine). */
DIFFGEMMA_API void diffgemma_vocab_free(diffgemma_vocab * vocab);

/* Number of tokens (ids are 0 .. n-1); 0 for NULL. */
DIFFGEMMA_API int32_t diffgemma_vocab_n_tokens(const diffgemma_vocab * vocab);

/* Special token ids, or -1 if the vocab has none (or vocab is NULL). */
DIFFGEMMA_API int32_t diffgemma_vocab_bos(const diffgemma_vocab * vocab);
DIFFGEMMA_API int32_t diffgemma_vocab_eos(const diffgemma_vocab * vocab);
DIFFGEMMA_API int32_t diffgemma_vocab_pad(const diffgemma_vocab * vocab);
DIFFGEMMA_API int32_t diffgemma_vocab_unk(const diffgemma_vocab * vocab);
DIFFGEMMA_API int32_t diffgemma_vocab_mask(const diffgemma_vocab * vocab);

/* 1 if the GGUF asks for BOS at the start of a prompt (tokenizer.ggml.add_bos_token), else 0. */
DIFFGEMMA_API int32_t diffgemma_vocab_add_bos(const diffgemma_vocab * vocab);

/* The end-of-generation ids (tokenizer.ggml.eos_token_ids, else eos + <turn|> + <|tool_response>), sorted.
 * Writes up to `capacity` ids to `out` and the total count to *n_out; DIFFGEMMA_ERR_BUFFER_TOO_SMALL if
 * capacity < *n_out. */
DIFFGEMMA_API int32_t diffgemma_vocab_eog_ids(const diffgemma_vocab * vocab, int32_t * out, size_t capacity,
                                              size_t * n_out);

/* 1 if `token` ends generation, else 0. */
DIFFGEMMA_API int32_t diffgemma_vocab_is_eog(const diffgemma_vocab * vocab, int32_t token);

/* A token's diffgemma_token_type, or -1 for an id out of range. */
DIFFGEMMA_API int32_t diffgemma_vocab_token_type(const diffgemma_vocab * vocab, int32_t token);

/* A token's raw text as stored in the vocab ("▁the", "<0x0A>", "<|turn>"), NUL-terminated, owned by the
 * vocab; NULL for an id out of range. Use diffgemma_token_to_piece for the bytes it decodes to. */
DIFFGEMMA_API const char * diffgemma_vocab_token_text(const diffgemma_vocab * vocab, int32_t token);

/* Id of the token whose text is exactly text[0..text_len), or -1. */
DIFFGEMMA_API int32_t diffgemma_vocab_find(const diffgemma_vocab * vocab, const char * text, size_t text_len);

/* Tokenizes text[0..text_len) (any bytes; not NUL-terminated). add_bos: prepend BOS (if the vocab has one).
 * parse_special: match CONTROL tokens written in the text (e.g. "<|turn>") as single tokens; USER_DEFINED
 * tokens are always matched. Writes the tokens to `out` and their count to *n_out. If `out_capacity` is too
 * small returns DIFFGEMMA_ERR_BUFFER_TOO_SMALL with the needed count in *n_out (text_len + 1 always fits). */
DIFFGEMMA_API int32_t diffgemma_tokenize(const diffgemma_vocab * vocab, const char * text, size_t text_len,
                                         int32_t add_bos, int32_t parse_special,
                                         int32_t * out, size_t out_capacity, size_t * n_out);

/* The bytes one token stands for (may be part of a UTF-8 character, e.g. <0xE2>). CONTROL tokens give ""
 * unless render_special. Writes *n_out bytes (no NUL); DIFFGEMMA_ERR_BUFFER_TOO_SMALL with the needed size in
 * *n_out if `capacity` is too small. */
DIFFGEMMA_API int32_t diffgemma_token_to_piece(const diffgemma_vocab * vocab, int32_t token, int32_t render_special,
                                               char * out, size_t capacity, size_t * n_out);

/* The bytes of `n_tokens` tokens, concatenated (no NUL). Same buffer contract as diffgemma_token_to_piece. */
DIFFGEMMA_API int32_t diffgemma_detokenize(const diffgemma_vocab * vocab, const int32_t * tokens, size_t n_tokens,
                                           int32_t render_special, char * out, size_t capacity, size_t * n_out);

/* Streaming detokenizer: each push returns only complete UTF-8 characters and holds back the bytes of a
 * character still waiting for its next token. The vocab must outlive it. */
DIFFGEMMA_API int32_t diffgemma_detokenizer_new(const diffgemma_vocab * vocab, int32_t render_special,
                                                diffgemma_detokenizer ** out);
DIFFGEMMA_API void diffgemma_detokenizer_free(diffgemma_detokenizer * detok);

/* Adds `n_tokens` tokens and writes the text that is now complete to `out` (*n_out bytes). On
 * DIFFGEMMA_ERR_BUFFER_TOO_SMALL the tokens are kept and *n_out is the needed size: call again with
 * n_tokens = 0 and a larger buffer. An invalid id is rejected before anything is added. */
DIFFGEMMA_API int32_t diffgemma_detokenizer_push(diffgemma_detokenizer * detok, const int32_t * tokens,
                                                 size_t n_tokens, char * out, size_t capacity, size_t * n_out);

/* Writes the held-back bytes (an unfinished character at the end of the stream) and resets the state.
 * Same buffer contract as push. */
DIFFGEMMA_API int32_t diffgemma_detokenizer_flush(diffgemma_detokenizer * detok, char * out, size_t capacity,
                                                  size_t * n_out);

/* Number of bytes at the end of s[0..n) that begin a UTF-8 character not yet complete (0..3): print
 * s[0 .. n - result) now and keep the rest for later. */
DIFFGEMMA_API size_t diffgemma_utf8_incomplete_tail(const char * s, size_t n);

/* ---- model and context ---- */
/*
 * A diffgemma_model holds the read-only weights (memory-mapped GGUF) and may be shared across threads.
 * A diffgemma_context holds the KV cache and scratch of one generation stream; one thread at a time.
 */
typedef struct diffgemma_model diffgemma_model;
typedef struct diffgemma_context diffgemma_context;

/* KV cache element types. */
enum diffgemma_kv_type {
    DIFFGEMMA_KV_F32 = 0,  /* exact (parity tests) */
    DIFFGEMMA_KV_F16 = 1   /* half the memory */
};

typedef struct diffgemma_model_params {
    int32_t n_gpu_layers;   /* layers offloaded, counted from the last one: 0 = CPU only; k = the last k layers;
                               -1 or more than n_layer = every layer plus the head (output norm, tied LM head,
                               self-conditioning), which keeps the logits and the sampler on the last layer's device */
    int32_t main_gpu;       /* -1 (default) = share the offloaded layers over the devices (below); k >= 0 = every
                               offloaded layer on device k (diffgemma_gpu_description(k)), like llama.cpp's
                               --split-mode none --main-gpu k */
    int32_t n_threads;      /* threads for load-time work (<= 0: one per physical core we may use; at most the CPUs
                               we may use) */
    int32_t cpu_moe;        /* 1 = the expert weights of every layer stay in host memory (the MoE runs on the CPU) */
    int32_t n_cpu_moe;      /* the expert weights of the first k layers stay in host memory (llama.cpp's --n-cpu-moe) */
    int32_t fit;            /* 1 = when the offload asked for does not fit the GPU, take the least reduction that
                               fits with the default n_ctx (more expert weights in host memory, then fewer layers),
                               log it and load; 0 (default) = fail with DIFFGEMMA_ERR_OUT_OF_MEMORY naming it. Over
                               several devices, another tensor_split is tried first */
    const float * tensor_split;  /* with main_gpu -1: each device's share of the offloaded layers, in device order
                               (e.g. {3, 1}: three quarters on the first); earlier layers go to earlier devices.
                               NULL = by each device's free memory. Copied during the load */
    int32_t n_tensor_split; /* values in tensor_split (at most the number of devices; missing ones are 0) */
    const char * devices;   /* with main_gpu -1: the devices to share the layers over, by ggml name in layer order
                               ("RPC0,CUDA0"); NULL or "" = every device */
    const char * rpc_servers;  /* "host:port,host:port": RPC servers whose devices are registered before placing
                               (diffgemma_rpc_add_servers); NULL or "" = none */
    const char * mmproj_path;  /* the vision projector GGUF (`convert --mmproj`, llama.cpp's mmproj-*.gguf layout):
                               NULL or "" = text only. It must match the model (projection width = n_embd) */
} diffgemma_model_params;

typedef struct diffgemma_context_params {
    int32_t n_ctx;          /* positions of prompt + committed canvases + one canvas (<= 0: min(4096, trained)) */
    int32_t n_batch;        /* encoder chunk length for long prompts (<= 0: 512) */
    int32_t n_threads;      /* compute threads at most (<= 0: one per physical core in our affinity mask and cgroup
                               quota). More than the CPUs this process may use is capped there, with a warning.
                               Each pass runs only as many as the machine has CPUs free just then (at least one):
                               ggml's barriers spin, so threads that take turns on a busy CPU slow every pass */
    int32_t fixed_threads;  /* 1 = every pass runs exactly n_threads threads, however busy the machine and however
                               many CPUs we may use (scaling studies); 0 (default) = the adaptive rule above */
    int32_t kv_type;        /* a diffgemma_kv_type */
    int32_t sc_top_k;       /* self-conditioning: 0 = exact softmax(S) @ E (default); k in 1..n_vocab = an
                               approximation summing only each canvas row's k most probable embedding rows */
    int32_t sc_top_k_renormalize;  /* with sc_top_k > 0: 1 = rescale the kept probabilities to sum to 1, 0 = keep
                                      them as the full-vocabulary softmax gives them (default) */
} diffgemma_context_params;

/* Sampler settings of one generation; diffgemma_sampler_default_params fills them from the GGUF's
 * diffusion.eb_* keys, falling back to the release defaults (48 steps, t 0.4..0.8, bound 0.1, stability 1,
 * confidence 0.005). */
typedef struct diffgemma_sampler_params {
    int32_t max_new_tokens;        /* rounded up to whole canvases */
    int32_t steps;                 /* maximum denoising steps per canvas */
    float t_min;                   /* temperature at the (never reached) last+1 step */
    float t_max;                   /* temperature of the first step */
    float entropy_bound;           /* accept sorted positions while the sum of earlier entropies <= bound */
    int32_t stability_threshold;   /* argmax unchanged for this many steps ... */
    float confidence_threshold;    /* ... and mean entropy below this: stop the canvas early */
    uint64_t seed;                 /* RNG seed of the canvas init, samples and renoise draws */
} diffgemma_sampler_params;

/* Caller-supplied random draws, replacing the RNG (to reproduce another implementation token for token).
 * For block b and step s (0-based, in execution order), with C = canvas length:
 *   init[b*C + i], sampled[(b*n_steps + s)*C + i], renoise[(b*n_steps + s)*C + i]. */
typedef struct diffgemma_replay {
    const int32_t * init;
    const int32_t * sampled;
    const int32_t * renoise;
    int32_t n_blocks;   /* blocks covered */
    int32_t n_steps;    /* steps covered per block */
} diffgemma_replay;

/* Called after every denoising step with the current argmax canvas. Return non-zero to cancel. */
typedef int32_t (*diffgemma_step_callback)(int32_t block, int32_t step, int32_t n_steps, const int32_t * canvas,
                                           int32_t canvas_length, void * user_data);

DIFFGEMMA_API void diffgemma_model_default_params(diffgemma_model_params * params);
DIFFGEMMA_API void diffgemma_context_default_params(diffgemma_context_params * params);

/* Loads a DiffusionGemma GGUF. A wrong file fails with a specific status and reason. */
DIFFGEMMA_API int32_t diffgemma_model_load(const char * path, const diffgemma_model_params * params,
                                           diffgemma_model ** out);
DIFFGEMMA_API void diffgemma_model_free(diffgemma_model * model);

/* The GPU memory plan of a model loaded with n_gpu_layers != 0 (also logged, at INFO, before the weights were
 * uploaded; to stderr when no log callback is set): per device the weights, compute buffers and KV cache.
 * "" when nothing is offloaded. Valid while the model lives. */
DIFFGEMMA_API const char * diffgemma_model_memory_plan(const diffgemma_model * model);

/* Hyper-parameters (0 for a NULL model). */
DIFFGEMMA_API int32_t diffgemma_model_n_vocab(const diffgemma_model * model);
DIFFGEMMA_API int32_t diffgemma_model_n_embd(const diffgemma_model * model);
DIFFGEMMA_API int32_t diffgemma_model_n_layer(const diffgemma_model * model);
DIFFGEMMA_API int32_t diffgemma_model_canvas_length(const diffgemma_model * model);
DIFFGEMMA_API int32_t diffgemma_model_n_ctx_train(const diffgemma_model * model);

/* The model's tokenizer, or NULL if the GGUF has none. Owned by the model. */
DIFFGEMMA_API const diffgemma_vocab * diffgemma_model_get_vocab(const diffgemma_model * model);

/* GGUF metadata as strings (arrays summarised as "[n x type]" when long). */
DIFFGEMMA_API int32_t diffgemma_model_meta_count(const diffgemma_model * model);
DIFFGEMMA_API const char * diffgemma_model_meta_key(const diffgemma_model * model, int32_t index);
DIFFGEMMA_API const char * diffgemma_model_meta_value(const diffgemma_model * model, int32_t index);

DIFFGEMMA_API void diffgemma_sampler_default_params(const diffgemma_model * model, diffgemma_sampler_params * params);

DIFFGEMMA_API int32_t diffgemma_context_new(diffgemma_model * model, const diffgemma_context_params * params,
                                            diffgemma_context ** out);
DIFFGEMMA_API void diffgemma_context_free(diffgemma_context * ctx);

/* Positions currently in the KV cache. */
DIFFGEMMA_API int32_t diffgemma_n_past(const diffgemma_context * ctx);
DIFFGEMMA_API int32_t diffgemma_n_ctx(const diffgemma_context * ctx);

/* Bytes of the KV cache (full layers hold n_ctx positions; sliding layers a ring of n_swa-1 plus
 * max(n_batch, canvas_length) positions). */
DIFFGEMMA_API size_t diffgemma_kv_cache_bytes(const diffgemma_context * ctx);

/* Drops cached positions >= n_keep (0 clears the cache). When that rewinds the cache by more than a sliding
 * layer's ring can undo (more than max(n_batch, canvas_length) positions), the kept tokens are encoded again. */
DIFFGEMMA_API int32_t diffgemma_kv_truncate(diffgemma_context * ctx, int32_t n_keep);

/* Encoder pass: appends the K/V of n_tokens clean tokens at positions [n_past, n_past + n_tokens). */
DIFFGEMMA_API int32_t diffgemma_encode(diffgemma_context * ctx, const int32_t * tokens, int32_t n_tokens);

/* Decoder pass over one canvas (canvas_length ids) at positions [n_past, n_past + C); the cache is unchanged.
 * sc_logits: NULL, or the previous step's processed logits [C x n_vocab] (HF's self_conditioning_logits).
 * out_logits receives the softcapped logits [C x n_vocab]. */
DIFFGEMMA_API int32_t diffgemma_decoder_logits(diffgemma_context * ctx, const int32_t * canvas, const float * sc_logits,
                                               float * out_logits);

/* Makes the KV cache hold exactly `prompt`: keeps the longest prefix it shares with the cached tokens (so a
 * multi-turn chat does not re-encode its history) and encodes the rest. diffgemma_generate_begin does this
 * itself; call it alone to warm the cache for a prompt. */
DIFFGEMMA_API int32_t diffgemma_prefill(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt);

/* ---- images ---- */
/*
 * A prompt takes images as runs of the model's image soft token (diffgemma_model_image_token), one run of
 * diffgemma_image_n_tokens(w, h) tokens per image, as HF's processor writes them (between the begin- and
 * end-of-image tokens). diffgemma_set_images gives the context the images of the prompts that follow: image i
 * fills the i-th run. The projector (model params mmproj_path) encodes each image once; a cached prefix is kept
 * only where its images are the same pixels.
 */

/* Decoded pixels: height rows of width RGB triples, 8 bits each, no row padding. The C API never decodes files. */
typedef struct diffgemma_image {
    const uint8_t * rgb;
    int32_t width;
    int32_t height;
} diffgemma_image;

/* Largest image accepted (width * height): a guard against decompression bombs. */
#define DIFFGEMMA_IMAGE_MAX_PIXELS 33554432  /* 2^25 */

/* 1 when a projector is loaded, 0 otherwise. */
DIFFGEMMA_API int32_t diffgemma_model_has_vision(const diffgemma_model * model);

/* The image soft-token id (HF image_token_id; 258880 for the release), or -1 when the model has none. */
DIFFGEMMA_API int32_t diffgemma_model_image_token(const diffgemma_model * model);

/* Soft tokens an image of width x height becomes (> 0), or a negative status (no projector; a bad size). */
DIFFGEMMA_API int32_t diffgemma_image_n_tokens(const diffgemma_model * model, int32_t width, int32_t height);

/* HF Gemma4ImageProcessor alone, for any projector settings: resize keeping the aspect ratio (bicubic,
 * antialiased, as torchvision on 8-bit pixels) to the largest size whose sides are multiples of
 * patch_size * pooling and which has at most max_soft_tokens * pooling^2 patches; rescale to [0, 1]; cut into
 * patches. Writes n_patches rows of patch_size^2 * 3 floats in HF's order (row, column, channel) to `pixels`,
 * n_patches (x, y) pairs to `positions`, the resized size to *out_width / *out_height (any may be NULL to ask
 * for the count only). Returns n_patches, or a negative status (DIFFGEMMA_ERR_BUFFER_TOO_SMALL when
 * capacity_patches is short). */
DIFFGEMMA_API int32_t diffgemma_image_preprocess(const diffgemma_image * image, int32_t patch_size, int32_t pooling,
                                                 int32_t max_soft_tokens, float * pixels, int32_t * positions,
                                                 int32_t capacity_patches, int32_t * out_width, int32_t * out_height);

/* The images of the prompts that follow (copied; n_images 0 clears them). Checks each image (size, pixel cap,
 * a projector loaded) now; the tower runs when a prompt needs it. */
DIFFGEMMA_API int32_t diffgemma_set_images(diffgemma_context * ctx, const diffgemma_image * images, int32_t n_images);

/* The projector's output for one image: n_tokens rows of n_embd floats (what replaces the soft tokens' input
 * embeddings). *n_tokens receives the row count (also on DIFFGEMMA_ERR_BUFFER_TOO_SMALL). */
DIFFGEMMA_API int32_t diffgemma_image_embed(diffgemma_context * ctx, const diffgemma_image * image, float * out,
                                            size_t capacity, int32_t * n_tokens);

/* ---- generation ---- */
/*
 * Block-diffusion generation (HF DiffusionGemmaForBlockDiffusion.generate semantics), one canvas per call:
 *
 *   diffgemma_generate_begin   checks the settings and that prompt + canvases fit n_ctx, seeds the RNG with
 *                              params->seed and prefills the prompt (reusing the cached prefix).
 *   diffgemma_generate_next    re-encodes the previous canvas (KV reuse), denoises the next one and writes its
 *                              committed (argmax) ids. After the first end-of-generation token the rest of that
 *                              canvas is the pad id and the generation is done; it is also done after the last
 *                              canvas max_new_tokens asks for (rounded up to whole canvases).
 *   diffgemma_generate_end     ends an open generation early (a consumer that stops reading); a generation that
 *                              is done, failed or was cancelled has already ended. Safe to call at any time.
 *
 * A failing or cancelled diffgemma_generate_next ends the generation and leaves the context usable; the cache
 * then holds the prompt and the canvases committed before. `replay` (or NULL: the context's RNG) must stay valid
 * until the generation ends.
 */

/* One committed canvas. */
typedef struct diffgemma_canvas_info {
    int32_t block;      /* its index in this generation, from 0 */
    int32_t steps;      /* denoising steps it took */
    int32_t n_content;  /* ids before its first end-of-generation token (canvas_length when it has none) */
    int32_t eos;        /* 1 = an end-of-generation token ended the generation in this canvas */
    int32_t done;       /* 1 = the generation has ended (eos, or the last canvas asked for) */
} diffgemma_canvas_info;

/* The checks diffgemma_generate_begin makes before it touches the cache: the sampler settings
 * (DIFFGEMMA_ERR_INVALID_ARGUMENT) and whether a prompt of n_prompt tokens plus the canvases fit n_ctx
 * (DIFFGEMMA_ERR_CONTEXT_OVERFLOW, with the arithmetic). Reads the context only; callable at any time. */
DIFFGEMMA_API int32_t diffgemma_generate_check(const diffgemma_context * ctx, int32_t n_prompt,
                                               const diffgemma_sampler_params * params);

DIFFGEMMA_API int32_t diffgemma_generate_begin(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt,
                                               const diffgemma_sampler_params * params, const diffgemma_replay * replay);

/* Writes canvas_length ids to out_canvas and fills *info. on_step (may be NULL) sees every denoising step. */
DIFFGEMMA_API int32_t diffgemma_generate_next(diffgemma_context * ctx, diffgemma_step_callback on_step, void * user_data,
                                              int32_t * out_canvas, diffgemma_canvas_info * info);

DIFFGEMMA_API int32_t diffgemma_generate_end(diffgemma_context * ctx);

/* The whole generation in one call (a loop over the three above): writes the committed canvases (whole
 * canvases, padded after the first end-of-generation token) to out_tokens, their count to *n_out and the
 * denoising steps to *out_steps_total (may be NULL). out_capacity must hold max_new_tokens rounded up to whole
 * canvases (DIFFGEMMA_ERR_BUFFER_TOO_SMALL with that count in *n_out). */
DIFFGEMMA_API int32_t diffgemma_generate(diffgemma_context * ctx, const int32_t * prompt, int32_t n_prompt,
                                         const diffgemma_sampler_params * params, const diffgemma_replay * replay,
                                         diffgemma_step_callback on_step, void * user_data,
                                         int32_t * out_tokens, size_t out_capacity, size_t * n_out,
                                         int32_t * out_steps_total);

/* Asks a running call on ctx to stop (returns DIFFGEMMA_ERR_CANCELLED there) within one denoising step or
 * encoder graph; asked between two canvases of an open generation, the next diffgemma_generate_next stops.
 * Safe from any thread. */
DIFFGEMMA_API void diffgemma_cancel(diffgemma_context * ctx);

/* ---- timing ---- */
/*
 * Wall-clock accounting of a context's work since it was created or last reset (benchmarks, profiling).
 * The counters are always kept; diffgemma_timings_enable(ctx, 1) also splits each decoder pass into
 * self-conditioning / backbone / head (the graph is then computed in three pieces, which costs a few
 * thread wake-ups per pass).
 */
typedef struct diffgemma_timings {
    int64_t n_encode_tokens;    /* tokens through the encoder */
    int32_t n_encode_passes;    /* encoder graphs (one per n_batch chunk) */
    double encode_ms;           /* encoder passes, whole (build + compute) */
    int32_t n_decoder;          /* decoder passes */
    double decoder_setup_ms;    /* graph build, allocation and input upload of the decoder passes */
    double decoder_compute_ms;  /* decoder graph compute */
    double readback_ms;         /* copy of the logits to the host */
    int32_t n_split;            /* decoder passes timed per part (split mode) */
    double sc_ms;               /* self-conditioning: softmax(sc) @ E, the MLP, the input embeddings */
    double backbone_ms;         /* the layers and the final norm */
    double head_ms;             /* tied LM head, softcap */
    int32_t n_steps;            /* denoising steps */
    double sampler_ms;          /* host sampler: lg = raw / T, per-row statistics, acceptance, renoise */
    int32_t n_threads_last;     /* compute threads the last pass ran on (fewer than n_threads while other programs
                                   keep CPUs busy; 0 before the first pass) */
} diffgemma_timings;

/* mode 0: counters only; 1: also time the three parts of each decoder pass (sc_ms, backbone_ms, head_ms);
 * 2: also time every graph node of decoder passes (a profile, see diffgemma_timings_op_report; slower). */
DIFFGEMMA_API int32_t diffgemma_timings_enable(diffgemma_context * ctx, int32_t mode);

/* Per-node profile (mode 2) since the last reset, as text: one line per op kind, "ms<TAB>nodes<TAB>kind\n",
 * slowest first. Same buffer contract as diffgemma_token_to_piece. */
DIFFGEMMA_API int32_t diffgemma_timings_op_report(const diffgemma_context * ctx, char * out, size_t capacity,
                                                  size_t * n_out);

/* Copies the totals accumulated so far. */
DIFFGEMMA_API int32_t diffgemma_timings_get(const diffgemma_context * ctx, diffgemma_timings * out);

/* Zeroes the totals (NULL is fine). */
DIFFGEMMA_API void diffgemma_timings_reset(diffgemma_context * ctx);

/* ---- tensor dump (debugging) ---- */
/*
 * The graph builders name the intermediate tensors of every block after the layer they belong to, as llama.cpp
 * does: "inp_embd", per layer il "attn_norm-il", "q-il", "k-il", "v-il" (after their norms and RoPE), "kqv-il"
 * (attention before the output projection), "attn_out-il", "ffn_inp-il" (the residual after attention),
 * "ffn_out-il" (dense MLP), "ffn_moe_probs-il" (router), "ffn_moe_out-il", "l_out-il" (the layer's output, after
 * its scale); the decoder also "sc_soft", "sc_out" (self-conditioning), "result_norm" and "logits"
 * (ARCHITECTURE.md, "Named graph nodes"). The encoder's last layer stops after its K/V.
 */

/* Receives one tensor of a pass as it is computed: its name, n_dims (1-4) and shape ne[0..3] (ne[0] varies
 * fastest, unused dimensions 1), and its ne[0]*ne[1]*ne[2]*ne[3] values as float32 in that order (a copy, valid
 * during the call only). Called on the thread that runs the pass. */
typedef void (*diffgemma_tensor_callback)(const char * name, int32_t n_dims, const int64_t * ne, const float * data,
                                          void * user_data);

/* From the next pass on, hands each computed tensor whose name matches `names` to `callback`: a comma-separated
 * list of names ("l_out-0,logits"), each may end in '*' to match a prefix ("l_out-*"); "*" matches every node,
 * ggml's unnamed ones too. callback NULL switches the dump off. Passes run slower while it is on (the scheduler
 * stops after each wanted node). Tensors that are not contiguous are skipped. */
DIFFGEMMA_API int32_t diffgemma_set_tensor_callback(diffgemma_context * ctx, const char * names,
                                                    diffgemma_tensor_callback callback, void * user_data);

// cffi-end

#ifdef __cplusplus
}
#endif

#endif /* DIFFGEMMA_H */
