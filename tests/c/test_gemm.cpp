// Driver for tests/test_gemm.py: runs our CPU GEMM (csrc/kernels/gemm_f32.cpp, with its bf16 path csrc/kernels/gemm_bf16.cpp)
// on random weights of a ggml type, quantized by ggml, and writes what the test compares with NumPy; or times
// the bf16 path against the f32 path (--bench).
//
//   test_gemm check TYPE N K T OUT
//       w [N][K] random, quantized to TYPE; x [T][K] random. OUT: int64 N, K, T, then float32 arrays
//       w_dequantized [N*K], x [T*K], y [T*N] (default path), y_f32 [T*N] (KernelConfig::bf16 off),
//       y_split [T*N] (default path run as two threads' shares, one after the other).
//   test_gemm check-id TYPE N K T N_EXPERT N_USED OUT
//       the MoE kernel: experts w [N_EXPERT][N][K], x [T][K] shared by a token's experts, ids [T][N_USED]
//       (distinct experts per token; drawn with repetition when N_USED > N_EXPERT).
//       OUT: int64 N, K, T, N_EXPERT, N_USED, then float32 w_dequantized [N_EXPERT*N*K], x [T*K],
//       int32 ids [T*N_USED], then float32 [T*N_USED*N] each: y (default, 2 threads), y_f32 (f32 path), y_one
//       (default, 1 thread), y_panels (bf16 transposed panels only: KernelConfig::row_gemm off).
//   test_gemm bench-id TYPE N K T N_EXPERT N_USED REPS
//       the expert kernel, 1 thread: "path=rows ms=..." and "path=panels ms=..." (median thread-CPU time).
//   test_gemm bench TYPE N K T REPS
//       prints "path=bf16 ms=..." and "path=f32 ms=...": the median thread-CPU time of one 1-thread call
//       (CPU time, not wall time, so other processes on a shared machine move it less).
//   test_gemm check-dequant TYPE
//       exit 0 when dg::fast_to_float(TYPE) gives ggml's to_float values bit for bit on random rows, else 1.
//   test_gemm check-dequant-bf16 TYPE
//       exit 0 when dg::fast_to_bf16(TYPE) gives ggml's to_float values rounded to bf16 bit for bit, 3 when it
//       has none for TYPE on this CPU, else 1.
//   test_gemm has-bf16
//       prints 1 when the bf16 path is taken on this CPU for a q8_0 weight, else 0.
//
// The kernel config starts as a context would get it (kernel_config_from_env: DIFFGEMMA_CPU_ISA=avx2 selects the
// AVX2 tier); the modes then switch its bf16 path and row tiles themselves, between kernel calls.
#include "core/cpu_isa.h"
#include "kernels/dequant_avx512.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_f32.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

namespace {

ggml_type parse_type(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * tn = ggml_type_name(static_cast<ggml_type>(t));
        if (tn != nullptr && std::strcmp(tn, name) == 0) {
            return static_cast<ggml_type>(t);
        }
    }
    std::fprintf(stderr, "unknown ggml type %s\n", name);
    std::exit(2);
}

std::vector<float> random_values(size_t n, float scale, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float & x : v) {
        x = dist(rng);
    }
    return v;
}

// rows x K random values (std 0.02, like the bench models), quantized into t (rows contiguous), and the
// dequantized values the GEMM multiplies.
std::vector<float> fill_weights(ggml_tensor * t, int64_t rows, int64_t K, uint32_t seed) {
    const std::vector<float> src = random_values(static_cast<size_t>(rows * K), 0.02f, seed);
    ggml_quantize_chunk(t->type, src.data(), t->data, 0, rows, K, nullptr);
    std::vector<float> deq(static_cast<size_t>(rows * K));
    if (t->type == GGML_TYPE_F32) {
        std::memcpy(deq.data(), t->data, deq.size() * sizeof(float));
    } else {
        ggml_get_type_traits(t->type)->to_float(t->data, deq.data(), rows * K);
    }
    return deq;
}

// Moves t's data out of the context's pool into a heap block of exactly ggml_nbytes(t): under AddressSanitizer
// a kernel's read or write past the tensor then faults instead of landing in the pool's next tensor.
void own_exact_buffer(ggml_tensor * t, std::vector<void *> & owned) {
    void * data = std::malloc(ggml_nbytes(t));
    std::memcpy(data, t->data, ggml_nbytes(t));
    t->data = data;
    owned.push_back(data);
}

void free_owned(std::vector<void *> & owned) {
    for (void * p : owned) {
        std::free(p);
    }
    owned.clear();
}

dg::KernelConfig g_kernels;  // what the next kernel call runs (main reads it from the environment)

void set_bf16(bool on) { g_kernels.bf16 = on && g_kernels.isa == dg::CpuIsa::kAvx512 && dg::cpu_has_avx512_bf16(); }

void set_row_gemm(bool on) { g_kernels.row_gemm = on; }

// The userdata of a GEMM node under g_kernels.
void * gemm_node() { return const_cast<dg::GemmOp *>(dg::gemm_op(g_kernels, dg::GemmActivations::kAuto)); }

struct Dense {
    ggml_context * ctx;
    ggml_tensor * w;
    ggml_tensor * x;
    ggml_tensor * y;
    std::vector<float> w_deq;
    std::vector<void *> owned;  // the tensors' exact-size data blocks (own_exact_buffer)
};

Dense make_dense(ggml_type type, int64_t N, int64_t K, int64_t T) {
    const size_t bytes = ggml_row_size(type, K) * N + sizeof(float) * (K * T + N * T) + 8 * ggml_tensor_overhead() + 4096;
    ggml_init_params params = {bytes, nullptr, false};
    Dense d{};
    d.ctx = ggml_init(params);
    d.w = ggml_new_tensor_2d(d.ctx, type, K, N);
    d.x = ggml_new_tensor_2d(d.ctx, GGML_TYPE_F32, K, T);
    d.y = ggml_new_tensor_2d(d.ctx, GGML_TYPE_F32, N, T);
    d.y->src[0] = d.w;
    d.y->src[1] = d.x;
    d.w_deq = fill_weights(d.w, N, K, 1234);
    const std::vector<float> x = random_values(static_cast<size_t>(K * T), 1.0f, 5678);
    std::memcpy(d.x->data, x.data(), x.size() * sizeof(float));
    if (!dg::gemm_f32_applies(g_kernels, d.w, d.x)) {
        std::fprintf(stderr, "the GEMM does not apply to %s [%lld x %lld] x %lld tokens on this CPU\n", ggml_type_name(type),
                     (long long) N, (long long) K, (long long) T);
        std::exit(3);
    }
    for (ggml_tensor * t : {d.w, d.x, d.y}) {
        own_exact_buffer(t, d.owned);
    }
    return d;
}

std::vector<float> run_dense(Dense & d, int nth) {
    std::memset(d.y->data, 0xFF, ggml_nbytes(d.y));  // NaN: a feature the kernel skips shows
    for (int ith = 0; ith < nth; ++ith) {
        dg::gemm_f32_kernel(d.y, ith, nth, gemm_node());
    }
    const float * y = static_cast<const float *>(d.y->data);
    return std::vector<float>(y, y + ggml_nelements(d.y));
}

void write_floats(FILE * f, const float * v, size_t n) { std::fwrite(v, sizeof(float), n, f); }

int check_dense(ggml_type type, int64_t N, int64_t K, int64_t T, const char * out) {
    Dense d = make_dense(type, N, K, T);
    set_bf16(true);
    const std::vector<float> y = run_dense(d, 1);
    const std::vector<float> y_split = run_dense(d, 2);
    set_bf16(false);
    const std::vector<float> y_f32 = run_dense(d, 1);
    FILE * f = std::fopen(out, "wb");
    const int64_t head[3] = {N, K, T};
    std::fwrite(head, sizeof(int64_t), 3, f);
    write_floats(f, d.w_deq.data(), d.w_deq.size());
    write_floats(f, static_cast<const float *>(d.x->data), static_cast<size_t>(K * T));
    write_floats(f, y.data(), y.size());
    write_floats(f, y_f32.data(), y_f32.size());
    write_floats(f, y_split.data(), y_split.size());
    std::fclose(f);
    free_owned(d.owned);
    ggml_free(d.ctx);
    return 0;
}

struct Experts {
    ggml_context * ctx;
    ggml_tensor * y;  // the mul_mat_id node: src[0] experts [K, N, n_expert], src[1] x [K, 1, T], src[2] ids
    std::vector<float> w_deq;  // empty unless asked for
    std::vector<float> x;
    std::vector<void *> owned;  // the tensors' exact-size data blocks (own_exact_buffer)
};

// Random experts quantized to TYPE, random x, and ids giving each token n_used distinct experts (a shuffled
// prefix, so the experts' loads are uneven and some may get no token), or, when n_used > n_expert, n_used
// experts drawn with repetition; exit 3 when the kernel does not apply.
Experts make_experts(ggml_type type, int64_t N, int64_t K, int64_t T, int64_t n_expert, int64_t n_used, bool dequantized) {
    const size_t bytes = ggml_row_size(type, K) * N * n_expert + sizeof(float) * (K * T + N * n_used * T) +
                         sizeof(int32_t) * n_used * T + 8 * ggml_tensor_overhead() + 4096;
    ggml_init_params params = {bytes, nullptr, false};
    Experts ex{};
    ex.ctx = ggml_init(params);
    ggml_tensor * as = ggml_new_tensor_3d(ex.ctx, type, K, N, n_expert);
    ggml_tensor * b = ggml_new_tensor_3d(ex.ctx, GGML_TYPE_F32, K, 1, T);
    ggml_tensor * ids = ggml_new_tensor_2d(ex.ctx, GGML_TYPE_I32, n_used, T);
    ex.y = ggml_new_tensor_3d(ex.ctx, GGML_TYPE_F32, N, n_used, T);
    ex.y->src[0] = as;
    ex.y->src[1] = b;
    ex.y->src[2] = ids;
    if (dequantized) {
        ex.w_deq = fill_weights(as, N * n_expert, K, 4321);
    } else {
        const std::vector<float> src = random_values(static_cast<size_t>(N * K), 0.02f, 4321);
        ggml_quantize_chunk(type, src.data(), as->data, 0, N, K, nullptr);
        for (int64_t e = 1; e < n_expert; ++e) {  // one expert's values for all: quantizing is slow
            std::memcpy(static_cast<char *>(as->data) + e * as->nb[2], as->data, as->nb[2]);
        }
    }
    ex.x = random_values(static_cast<size_t>(K * T), 1.0f, 8765);
    std::memcpy(b->data, ex.x.data(), ex.x.size() * sizeof(float));
    std::mt19937 rng(99);
    std::vector<int32_t> perm(static_cast<size_t>(n_expert));
    int32_t * idv = static_cast<int32_t *>(ids->data);
    for (int64_t t = 0; t < T; ++t) {
        if (n_used > n_expert) {  // more slots than experts: drawn with repetition (one token, one expert twice)
            for (int64_t j = 0; j < n_used; ++j) {
                idv[t * n_used + j] = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_expert));
            }
            continue;
        }
        for (int64_t e = 0; e < n_expert; ++e) {
            perm[e] = static_cast<int32_t>(e);
        }
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int64_t j = 0; j < n_used; ++j) {
            idv[t * n_used + j] = perm[j];
        }
    }
    if (!dg::gemm_f32_id_applies(g_kernels, as, b, ids)) {
        std::fprintf(stderr, "the expert GEMM does not apply\n");
        std::exit(3);
    }
    for (ggml_tensor * t : {as, b, ids, ex.y}) {
        own_exact_buffer(t, ex.owned);
    }
    return ex;
}

std::vector<float> run_id(Experts & ex, int nth) {
    std::memset(ex.y->data, 0xFF, ggml_nbytes(ex.y));  // NaN: a feature the kernel skips shows
    for (int ith = 0; ith < nth; ++ith) {
        dg::gemm_f32_id_kernel(ex.y, ith, nth, gemm_node());
    }
    const float * v = static_cast<const float *>(ex.y->data);
    return std::vector<float>(v, v + ggml_nelements(ex.y));
}

int check_id(ggml_type type, int64_t N, int64_t K, int64_t T, int64_t n_expert, int64_t n_used, const char * out) {
    Experts ex = make_experts(type, N, K, T, n_expert, n_used, true);
    set_bf16(true);
    set_row_gemm(true);
    const std::vector<float> y_def = run_id(ex, 2);
    const std::vector<float> y_one = run_id(ex, 1);
    set_row_gemm(false);
    const std::vector<float> y_panels = run_id(ex, 2);
    set_row_gemm(true);
    set_bf16(false);
    const std::vector<float> y_f32 = run_id(ex, 1);
    FILE * f = std::fopen(out, "wb");
    const int64_t head[5] = {N, K, T, n_expert, n_used};
    std::fwrite(head, sizeof(int64_t), 5, f);
    write_floats(f, ex.w_deq.data(), ex.w_deq.size());
    write_floats(f, ex.x.data(), ex.x.size());
    std::fwrite(ex.y->src[2]->data, sizeof(int32_t), static_cast<size_t>(n_used * T), f);
    write_floats(f, y_def.data(), y_def.size());
    write_floats(f, y_f32.data(), y_f32.size());
    write_floats(f, y_one.data(), y_one.size());
    write_floats(f, y_panels.data(), y_panels.size());
    std::fclose(f);
    free_owned(ex.owned);
    ggml_free(ex.ctx);
    return 0;
}

// exit 0 when dg::fast_to_bf16(TYPE) gives bf16(ggml's to_float) bit for bit (round to nearest even), 3 when
// there is none for TYPE on this CPU, else 1.
int check_dequant_bf16(ggml_type type) {
    const dg::to_bf16_t to_bf16 = dg::fast_to_bf16(type);
    if (to_bf16 == nullptr) {
        std::fprintf(stderr, "no bf16 dequantizer for %s on this CPU\n", ggml_type_name(type));
        return 3;
    }
    const int64_t rows = 64;
    const int64_t K = 1024;
    std::vector<char> q(ggml_row_size(type, K) * rows);
    std::vector<float> src = random_values(static_cast<size_t>(rows * K), 0.02f, 78);
    src[5] = 0.0f;
    src[700] = 3.0f;
    src[900] = -7.5f;
    ggml_quantize_chunk(type, src.data(), q.data(), 0, rows, K, nullptr);
    std::vector<float> ref(src.size());
    ggml_get_type_traits(type)->to_float(q.data(), ref.data(), rows * K);
    std::vector<uint16_t> ours(src.size());
    for (int64_t r = 0; r < rows; ++r) {  // a row at a time, as the GEMM calls it
        to_bf16(q.data() + r * ggml_row_size(type, K), ours.data() + r * K, K);
    }
    for (size_t i = 0; i < ref.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &ref[i], sizeof(u));
        const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
        if (ours[i] != rounded) {
            std::fprintf(stderr, "fast_to_bf16(%s) value %zu: 0x%04x, bf16(to_float) 0x%04x\n", ggml_type_name(type), i,
                         ours[i], rounded);
            return 1;
        }
    }
    return 0;
}

int check_dequant(ggml_type type) {
    const int64_t rows = 64;
    const int64_t K = 1024;
    std::vector<char> q(ggml_row_size(type, K) * rows);
    std::vector<float> src = random_values(static_cast<size_t>(rows * K), 0.02f, 77);
    src[5] = 0.0f;  // a zero and outliers in the data
    src[700] = 3.0f;
    src[900] = -7.5f;
    ggml_quantize_chunk(type, src.data(), q.data(), 0, rows, K, nullptr);
    std::vector<float> ref(src.size()), ours(src.size());
    ggml_get_type_traits(type)->to_float(q.data(), ref.data(), rows * K);
    dg::fast_to_float(type)(q.data(), ours.data(), rows * K);
    if (std::memcmp(ref.data(), ours.data(), ref.size() * sizeof(float)) != 0) {
        std::fprintf(stderr, "fast_to_float(%s) differs from ggml's to_float\n", ggml_type_name(type));
        return 1;
    }
    return 0;
}

double thread_cpu_ms() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

int bench(ggml_type type, int64_t N, int64_t K, int64_t T, int reps) {
    Dense d = make_dense(type, N, K, T);
    for (const bool bf16 : {true, false}) {
        set_bf16(bf16);
        std::vector<double> ms;
        run_dense(d, 1);  // warm-up
        for (int r = 0; r < reps; ++r) {
            const double t0 = thread_cpu_ms();
            dg::gemm_f32_kernel(d.y, 0, 1, gemm_node());
            ms.push_back(thread_cpu_ms() - t0);
        }
        std::sort(ms.begin(), ms.end());
        const double med = ms[ms.size() / 2];
        std::printf("path=%s ms=%.3f gflops=%.1f\n", bf16 && dg::gemm_bf16_wanted(g_kernels, d.w) ? "bf16" : "f32", med,
                    2.0 * N * K * T / med * 1e-6);
    }
    free_owned(d.owned);
    ggml_free(d.ctx);
    return 0;
}

// The expert kernel, 1 thread: the row tiles (default) against the transposed panels (row_gemm off),
// alternating, REPS times each; prints each path's median thread-CPU ms.
int bench_id(ggml_type type, int64_t N, int64_t K, int64_t T, int64_t n_expert, int64_t n_used, int reps) {
    Experts ex = make_experts(type, N, K, T, n_expert, n_used, false);
    set_bf16(true);
    std::vector<double> ms[2];
    for (int r = -1; r < reps; ++r) {  // r = -1: warm-up
        for (int path = 0; path < 2; ++path) {
            set_row_gemm(path == 0);
            const double t0 = thread_cpu_ms();
            dg::gemm_f32_id_kernel(ex.y, 0, 1, gemm_node());
            if (r >= 0) {
                ms[path].push_back(thread_cpu_ms() - t0);
            }
        }
    }
    for (int path = 0; path < 2; ++path) {
        std::sort(ms[path].begin(), ms[path].end());
        const double med = ms[path][ms[path].size() / 2];
        std::printf("path=%s ms=%.3f gflops=%.1f\n", path == 0 ? "rows" : "panels", med, 2.0 * N * K * T * n_used / med * 1e-6);
    }
    set_row_gemm(true);
    free_owned(ex.owned);
    ggml_free(ex.ctx);
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    g_kernels = dg::kernel_config_from_env();
    if (mode == "check" && argc == 7) {
        return check_dense(parse_type(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]), argv[6]);
    }
    if (mode == "check-id" && argc == 9) {
        return check_id(parse_type(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]),
                        std::atoll(argv[6]), std::atoll(argv[7]), argv[8]);
    }
    if (mode == "bench" && argc == 7) {
        return bench(parse_type(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]), std::atoi(argv[6]));
    }
    if (mode == "bench-id" && argc == 9) {
        return bench_id(parse_type(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]),
                        std::atoll(argv[6]), std::atoll(argv[7]), std::atoi(argv[8]));
    }
    if (mode == "check-dequant-bf16" && argc == 3) {
        return check_dequant_bf16(parse_type(argv[2]));
    }
    if (mode == "check-dequant" && argc == 3) {
        return check_dequant(parse_type(argv[2]));
    }
    if (mode == "has-bf16") {
        ggml_init_params params = {ggml_tensor_overhead() + 64, nullptr, true};
        ggml_context * ctx = ggml_init(params);
        std::printf("%d\n", dg::gemm_bf16_wanted(g_kernels, ggml_new_tensor_2d(ctx, GGML_TYPE_Q8_0, 256, 32)) ? 1 : 0);
        ggml_free(ctx);
        return 0;
    }
    std::fprintf(stderr, "usage: see the comment at the top of tests/c/test_gemm.cpp\n");
    return 2;
}
