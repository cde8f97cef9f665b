#!/usr/bin/env bash
# Run part of the test suite against an AddressSanitizer + UndefinedBehaviorSanitizer build of the C library.
#
#   scripts/sanitize_tests.sh [pytest args...]     default: the subset in SANITIZE_TESTS below
#
# Builds the package with -DDIFFGEMMA_SANITIZE=ON into its own overlay venv (build/san-venv, layered over the
# env of $PYTHON, default python3, which must have the test dependencies, e.g. CI's .venv/bin/python), then runs
# pytest with libasan preloaded (the Python interpreter is not instrumented, so the runtime must come first).
# Leak detection is off: CPython itself keeps memory until exit; the loader is leak-checked by the fuzzer
# (scripts/fuzz_gguf.sh) and the engine by tests/test_runtime_hardening.py's RSS cycle test.
# Every sanitizer report, also from child processes the tests start, goes to build/san-logs; any report fails
# the run. Exit status: 0 clean, else the tests' or 1 for a report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base_py=${PYTHON:-python3}
venv=${DG_SAN_VENV:-$root/build/san-venv}
build=${DG_SAN_BUILD:-$root/build/san}
logs=${DG_SAN_LOGS:-$root/build/san-logs}

if [ ! -x "$venv/bin/python" ]; then
  "$base_py" -m venv "$venv"
  # Installed before the overlay .pth, or pip would see the base env's copies and skip them; libggml must sit
  # next to our package (its rpath is $ORIGIN/../libggml/lib64).
  "$venv/bin/pip" install -q libggml-python==0.20.2.post1 scikit-build-core cffi
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path line) so .pth files of the base are honoured too: the base may itself be an
  # overlay (scripts/dev_venv.sh).
  "$base_py" -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_paths()["purelib"])' \
    > "$site/_dg_base_venv.pth"
fi
"$venv/bin/pip" install -q --no-deps --no-build-isolation -C build-dir="$build" -C cmake.build-type=RelWithDebInfo \
  -C cmake.define.DIFFGEMMA_SANITIZE=ON "$root"

SANITIZE_TESTS=(
  tests/test_foundation.py
  tests/test_malformed_gguf.py
  tests/test_runtime_hardening.py
  tests/test_tokenizer_c.py
  # The image processor: resize passes and bands on every fixture, the argument checks (csrc/image/).
  tests/test_image_preprocess.py
  "tests/test_fuzz_gguf.py::test_seed_corpus_loads"
  "tests/test_fuzz_gguf.py::test_mutation_fuzzer_smoke"
  "tests/test_engine_parity.py::test_f32_decoder_logits_match_hf"
  # Every weight type on the default kernels: the bf16 panels and the experts' row tiles (gemm_bf16*.cpp).
  "tests/test_engine_parity.py::test_every_weight_type_on_the_default_path_matches_hf_on_its_weights"
  # The expert kernels on odd shapes, in an instrumented driver with exact-size tensors (tests/c/test_gemm.cpp).
  "tests/test_gemm.py::test_expert_row_tiles_odd_shapes"
  "tests/test_gemm.py::test_row_tiles_token_limit"
  "tests/test_gemm.py::test_bf16_dequantizers_match_ggml"
  tests/test_sc_topk.py
  tests/test_kv_ring.py
  tests/test_attention_op.py
  "tests/test_engine_parity.py::test_generate_replay_matches_hf_token_for_token"
  tests/test_offload.py
  tests/test_offload_parity.py
  # The persistent threadpool and the adaptive thread count (compute_threads.cpp), through the engine.
  "tests/test_threads.py::test_more_threads_than_cpus_are_capped_with_one_warning"
  "tests/test_threads.py::test_tokens_do_not_depend_on_the_threads_that_ran"
  # Tools the tests start inherit LD_PRELOAD; nvcc crashes with libasan preloaded.
  --deselect "tests/test_foundation.py::test_cuda_sources_compile"
)
[ $# -gt 0 ] && SANITIZE_TESTS=("$@")

rm -rf "$logs" && mkdir -p "$logs"
# libstdc++ is preloaded right after libasan: otherwise ASan resolves its __cxa_throw interceptor before any
# C++ library is loaded and aborts at our first exception ("real___cxa_throw != 0").
asan=$(${CC:-gcc} -print-file-name=libasan.so)
stdcxx=$(readlink -f "$(${CC:-gcc} -print-file-name=libstdc++.so)")
export LD_PRELOAD="$asan $stdcxx"
# allocator_may_return_null: a too-large request returns NULL as glibc does, so the tests of allocation failure
# exercise our error path instead of ASan aborting on the request itself.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:log_path=$logs/asan:${DG_ASAN_EXTRA:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export DG_SANITIZED=1  # tests that measure speed or memory skip themselves
status=0
(cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "${SANITIZE_TESTS[@]}") || status=$?
unset LD_PRELOAD
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitizer output:" >&2
  head -c 20000 "$logs"/* >&2
  # Findings fail the run; warnings (e.g. "failed to allocate" under allocator_may_return_null) do not.
  if grep -qE "ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:|CHECK failed" "$logs"/*; then
    [ $status -ne 0 ] || status=1
  fi
fi
[ $status -eq 0 ] && echo "sanitize_tests.sh: clean (no sanitizer findings)"
exit $status
