#!/usr/bin/env bash
# Coverage-guided fuzzing of the GGUF model loader (libFuzzer + ASan + UBSan), seeded with valid tiny GGUFs.
#
#   scripts/fuzz_gguf.sh [SECONDS] [extra libFuzzer flags...]     default 60 s; e.g. 3600 for a long run
#
# Builds build/fuzz/fuzz_gguf_loader from csrc/*.cpp + tests/fuzz/fuzz_gguf_loader.cpp with clang (objects
# are reused while their sources are unchanged), then fuzzes with the corpus in build/fuzz/corpus (grown across
# runs) plus the seeds in tests/fuzz/corpus. A crashing input is written to build/fuzz/artifacts/; reproduce
# it with build/fuzz/fuzz_gguf_loader FILE. Exit status: 0 clean, 77 no clang/libFuzzer here, else a finding.
# Needs clang++ with compiler-rt (Debian: apt-get install clang libclang-rt-14-dev) and the Python env that
# has libggml-python (PYTHON, default python3) for ggml's headers and libraries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}; shift || true
cxx=${CXX_FUZZ:-clang++}
py=${PYTHON:-python3}
out=${DG_FUZZ_DIR:-$root/build/fuzz}
if ! command -v "$cxx" >/dev/null; then
  echo "fuzz_gguf.sh: $cxx not found (install clang to fuzz)" >&2; exit 77
fi
ggml=$("$py" -c 'import libggml, os; print(os.path.dirname(libggml.__file__))')
mkdir -p "$out/obj" "$out/corpus" "$out/artifacts"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, long){return 0;}' |
     "$cxx" -x c++ -fsanitize=fuzzer - -o "$out/probe" 2>/dev/null; then
  echo "fuzz_gguf.sh: $cxx cannot link libFuzzer (Debian: apt-get install libclang-rt-14-dev)" >&2; exit 77
fi

flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -DDIFFGEMMA_BUILD '-DDIFFGEMMA_VERSION_STRING="fuzz"'
       -I"$root/csrc/include" -I"$root/csrc" -I"$ggml/include")
objs=()
pids=()
# Exactly the library's sources, as CMakeLists.txt lists them (a glob would pick up half-written files).
mapfile -t lib_sources < <(sed -n '/^set(DIFFGEMMA_SOURCES/,/^)/{s/^ *\(csrc\/[^ ]*\.cpp\).*/\1/p}' "$root/CMakeLists.txt")
[ ${#lib_sources[@]} -gt 0 ] || { echo "fuzz_gguf.sh: no DIFFGEMMA_SOURCES in CMakeLists.txt" >&2; exit 2; }
for src in "${lib_sources[@]/#/$root/}" "$root"/tests/fuzz/fuzz_gguf_loader.cpp; do
  obj="$out/obj/$(basename "${src%.cpp}").o"
  objs+=("$obj")
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find "$root/csrc" -name '*.h' -newer "$obj" -print -quit)" ]; then
    "$cxx" "${flags[@]}" -c "$src" -o "$obj" &
    pids+=($!)
    # Two compilers at a time: the machines this runs on are small and shared.
    if [ ${#pids[@]} -ge "${DG_FUZZ_JOBS:-2}" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" -fsanitize=fuzzer,address,undefined "${objs[@]}" -L"$ggml/lib64" -lggml -lggml-base -lggml-cpu \
  -Wl,-rpath,"$ggml/lib64" -o "$out/fuzz_gguf_loader"

# Leaks are bugs in our code too; ggml's one-time backend registry is freed at exit, so LSan stays on.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$out"
exec ./fuzz_gguf_loader -max_total_time="$seconds" -dict="$root/tests/fuzz/gguf.dict" -max_len=65536 \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$out/artifacts/" "$@" \
  "$out/corpus" "$root/tests/fuzz/corpus"
