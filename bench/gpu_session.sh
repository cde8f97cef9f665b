#!/usr/bin/env bash
# One-shot GPU session (issue 8): everything a lent H100/H200 should run, in priority order. The device machine
# has no network, so the inputs travel with the tree.
#
#   1. here (CPU machine with PyPI), once:   bash bench/gpu_session.sh prepare
#        fills .gpu_carry/ (ignored through .git/info/exclude): the libggml-python sdist and the wheels the
#        device image may lack (scikit-build-core 1.0, setuptools-scm + vcs-versioning + packaging, cffi,
#        pycparser, gguf, tqdm). About 8 MiB.
#   2. on the device:   bash bench/gpu_session.sh run      (build + measure in one command of <= 10 minutes)
#      or, when one command is too short for both:   `... build` then, while the machine is warm, `... measure`
#        with carry [".gpu_carry"] and timeout_s 600. Packages go to .gpu_site/ in the tree (kept between warm
#        calls). Results land in $OUT (./gpu_out without one): summary.txt (one line per step: status,
#        seconds), session.log (every step's output), gpu_parity.json, gpu_step_bench.json, kernel_bench.txt,
#        junit XML; at most 8 files, as the device tool returns no more.
#
# Steps, each bounded by what is left of GPU_SESSION_BUDGET_S (default 570 s per command), most valuable first:
#   build:   env; wheels; ggml_cuda (USE_CUDA=1 pip install of the libggml-python sdist for sm_90 only: the sdist is
#            scikit-build-core, its pyproject turns USE_CUDA=1 into GGML_CUDA=1 and appends $CMAKE_ARGS); package
#            (ours with -DDIFFGEMMA_CUDA=ON -DDIFFGEMMA_CUDA_ARCHITECTURES=90)
#   measure: bench_gpu_bench_parity (CPU vs GPU logits and tokens: the acceptance check, needs no torch),
#            bench_gpu_bench_step (ms per step at the release shapes), sched_report (the graph nodes ggml's
#            scheduler leaves on the CPU with everything offloaded: expected only the token-embedding lookup;
#            bench/gpu_sched_report.py), tests (every test marked gpu: the fused
#            sampler kernels against the NumPy reference and the host twin, the offload tests), kernel_bench
#            (sampler kernels on a 256 x 262144 canvas)
set -uo pipefail

mode=${1:-}
root=$(cd "$(dirname "$0")/.." && pwd)
carry=$root/.gpu_carry
GGML_SDIST=libggml_python-0.20.2.post1.tar.gz
GGML_VERSION=0.20.2.post1

prepare() {
    mkdir -p "$carry" "$root/.git/info"
    grep -qx '/.gpu_carry/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu_carry/' >>"$root/.git/info/exclude"
    local pip="${PIP:-python3 -m pip}"
    $pip download -q --no-deps --no-binary :all: -d "$carry" "libggml-python==$GGML_VERSION" || return 1
    # The device runs Python 3.12 (the image's PyTorch interpreter).
    $pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$carry" \
        "scikit-build-core~=1.0.0" "setuptools-scm~=10.2" "vcs-versioning>=2.5,<3" "packaging>=26.2" \
        "cffi>=1.17" pycparser "gguf==0.19.0" tqdm || return 1
    ls -la "$carry"
    du -sh "$carry"
}

setup() {
    out=${OUT:-$root/gpu_out}
    mkdir -p "$out"
    budget=${GPU_SESSION_BUDGET_S:-570}
    site=$root/.gpu_site
    summary=$out/summary.txt
    touch "$summary"
    export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    cd "$root" || return 1
    # ggml-cuda links cuBLAS. When the system toolkit lacks it, use the pip nvidia-cublas package of the
    # image (library by full path: the wheel has only the versioned .so; its headers through the CUDA flags).
    cublas_args=""
    if ! ls /usr/local/cuda/lib64/libcublas.so* /usr/local/cuda/targets/x86_64-linux/lib/libcublas.so* >/dev/null 2>&1; then
        local cublas_dir
        cublas_dir=$(python3 -c 'import nvidia.cublas as m, os; print(os.path.dirname(m.__file__) if m.__file__ else list(m.__path__)[0])' 2>/dev/null)
        if [ -n "$cublas_dir" ] && ls "$cublas_dir"/lib/libcublas.so* >/dev/null 2>&1; then
            cublas_args="-DCUDA_cublas_LIBRARY=$(ls "$cublas_dir"/lib/libcublas.so.* | head -1)"
            cublas_args+=" -DCUDA_cublasLt_LIBRARY=$(ls "$cublas_dir"/lib/libcublasLt.so.* | head -1)"
            cublas_args+=" -DCMAKE_CUDA_FLAGS=-I$cublas_dir/include -DCMAKE_CXX_FLAGS=-I$cublas_dir/include"
            export LD_LIBRARY_PATH=$cublas_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        fi
        echo "cuBLAS not in the system toolkit; using: ${cublas_args:-nothing found}" | tee -a "$summary"
    fi
}

# step NAME MAX_SECONDS COMMAND...: runs with the smaller of MAX_SECONDS and the budget left, appends its
# output to $out/session.log (only 8 files come back from $OUT), records "NAME rc=.. s=.." in summary.txt.
step() {
    local name=$1 max=$2
    shift 2
    local left=$((budget - SECONDS - 5))
    local limit=$((max < left ? max : left))
    if ((limit < 10)); then
        echo "$name skipped: budget spent" | tee -a "$summary"
        return 99
    fi
    local t0=$SECONDS log=/tmp/dg-step-$name.log
    # gpu_bench_step.py's watchdog writes its json and exits cleanly before the step's own limit.
    export DG_GPU_BENCH_TIMEOUT_S=$((limit - 10))
    timeout --kill-after=5 "$limit" bash -c "$*" >"$log" 2>&1
    local rc=$?
    { echo "=================== $name (rc=$rc, $((SECONDS - t0)) s)"; cat "$log"; } >>"$out/session.log"
    echo "$name rc=$rc s=$((SECONDS - t0)) limit=$limit" | tee -a "$summary"
    tail -n 8 "$log"
    return $rc
}

build() {
    step env 30 'nvidia-smi; nvcc --version; python3 -V; which python3 cmake ninja;
        cmake --version | head -1; python3 -m pip list 2>/dev/null | grep -iE "^(scikit.build.core|cmake|ninja|numpy|pytest|torch|transformers|cffi|packaging|tqdm) "'

    # Python packages the image lacks (or has in other versions), then the CUDA ggml and our package.
    step wheels 60 "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site $carry/*.whl" ||
        return 1

    # GGML_CUDA_FA=OFF compiles ggml's ~90 flash-attention kernel files empty, about half the CUDA build: the
    # engine's graphs (csrc/graph/graph.cpp) use soft_max_ext, not ggml_flash_attn_ext. Override if that changes.
    local ggml_extra=${GGML_EXTRA_CMAKE_ARGS--DGGML_CUDA_FA=OFF}
    if ! ls "$site"/libggml/lib*/libggml-cuda.so >/dev/null 2>&1; then
        step ggml_cuda 420 "USE_CUDA=1 SETUPTOOLS_SCM_PRETEND_VERSION=$GGML_VERSION \
            CMAKE_ARGS='-DCMAKE_CUDA_ARCHITECTURES=90 $cublas_args $ggml_extra' \
            python3 -m pip install -v --no-index --no-deps --no-build-isolation --no-cache-dir --target $site $carry/$GGML_SDIST &&
            ls -la $site/libggml/lib*/ && ls $site/libggml/lib*/libggml-cuda.so" || return 1
    fi

    local ggml_dir
    ggml_dir=$(dirname "$(ls "$site"/libggml/lib*/cmake/ggml/ggml-config.cmake | head -1)")
    step package 240 "CMAKE_ARGS='-DDIFFGEMMA_CUDA=ON -DDIFFGEMMA_CUDA_ARCHITECTURES=90 -Dggml_DIR=$ggml_dir $cublas_args' \
        python3 -m pip install -v --no-index --no-deps --no-build-isolation --no-cache-dir --target $site --upgrade \
        -C build-dir=/tmp/dg-build . && python3 -c 'import diffgemma_cpp; print(diffgemma_cpp.system_info())'" || return 1
}

measure() {
    # The acceptance check first (CPU vs GPU), then the step bench; each writes its json into $out.
    local bench
    for bench in "$root"/bench/gpu_bench_*.py; do
        [ -e "$bench" ] || continue
        step "$(basename "$bench" .py)" 300 "python3 $bench --out $out"
    done
    # After the two acceptance measurements (~15 s): any node the scheduler left on the CPU (in session.log).
    step sched_report 60 "python3 $root/bench/gpu_sched_report.py"
    # Every test marked gpu (the fused kernels in tests/gpu, built by nvcc directly, and the offload tests),
    # against the installed CUDA build. Not the CLI tests: pip --target puts console scripts in $site/bin.
    step tests 180 "export DIFFGEMMA_CUDA_ARCH=sm_90; python3 -m pytest tests -m gpu -v -p no:cacheprovider \
        --continue-on-collection-errors --junitxml=$out/gpu_tests.xml"
    step kernel_bench 90 "nvcc -std=c++17 -O3 -arch=sm_90 -I csrc -I csrc/include -Xcompiler -ffp-contract=off,-fno-trapping-math \
        tests/gpu/sampler_cuda_driver.cu csrc/offload/cuda/sampler.cu csrc/kernels/sampler_math.cpp -o /tmp/sampler_cuda_driver && \
        /tmp/sampler_cuda_driver --probe && /tmp/sampler_cuda_driver --bench 262144 256 20 | tee $out/kernel_bench.txt"
    echo "done in ${SECONDS}s" | tee -a "$summary"
    cat "$summary"
}

case "$mode" in
    prepare) prepare ;;
    build) setup && build ;;
    measure) setup && measure ;;
    run) setup && build && measure ;;
    *)
        echo "usage: bash bench/gpu_session.sh prepare|run|build|measure   (see the comment at the top)" >&2
        exit 2
        ;;
esac
