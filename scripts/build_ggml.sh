#!/usr/bin/env bash
# Builds the pinned ggml (pyproject.toml's libggml-python==VERSION) from its sdist with a non-default backend and installs it
# into the current Python environment; then reinstall diffgemma-cpp (`pip install --no-deps --force-reinstall .`).
#
#   scripts/build_ggml.sh rpc      # ggml RPC (remote devices, `diffgemma-cpp rpc-server`): ~3 min on 2 cores
#   scripts/build_ggml.sh vulkan   # Vulkan (+ RPC); needs libvulkan-dev glslc spirv-headers (Debian/Ubuntu)
#   scripts/build_ggml.sh cuda     # CUDA (+ RPC); needs the CUDA toolkit (nvcc)
#
# Environment: PYTHON (default: python3), GGML_WHEEL_DIR (default: ~/.cache/diffgemma/ggml-wheels): a wheel
# built before for the same variant is reused instead of rebuilt.
#
# Two source patches of ours (scripts/ggml_patches.py) go into the unpacked sdist first: the RPC client's graphs
# for several servers (always), and, where the installed Vulkan headers lack VK_EXT_layer_settings (Debian 12),
# a guard around ggml-vulkan's use of it.
set -euo pipefail

variant="${1:-}"
case "$variant" in
  rpc) flags=(--config-settings=cmake.define.GGML_RPC=ON); envs=() ;;
  vulkan) flags=(--config-settings=cmake.define.GGML_RPC=ON); envs=(USE_VULKAN=1) ;;
  cuda) flags=(--config-settings=cmake.define.GGML_RPC=ON); envs=(USE_CUDA=1) ;;
  *) echo "usage: $0 rpc|vulkan|cuda" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "$0")" && pwd)"
# The pin has one home, pyproject.toml's build requires.
version="$(sed -n 's/^requires = .*libggml-python==\([^"]*\)".*/\1/p' "$here/../pyproject.toml")"
[ -n "$version" ] || { echo "build_ggml: no libggml-python==VERSION pin in pyproject.toml" >&2; exit 1; }
wheel_dir="${GGML_WHEEL_DIR:-$HOME/.cache/diffgemma/ggml-wheels}/$variant"
mkdir -p "$wheel_dir"
wheel="$(ls "$wheel_dir"/libggml_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)"

if [ -z "$wheel" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "libggml-python==$version" -d "$work"
  tar -xzf "$work"/libggml_python-"$version".tar.gz -C "$work"
  src="$work/libggml_python-$version"
  "$PYTHON" "$here/ggml_patches.py" rpc "$src"
  if [ "$variant" = vulkan ]; then
    header="$(echo '#include <vulkan/vulkan_core.h>' | ${CC:-cc} -M -x c - 2>/dev/null | tr ' \\' '\n\n' | grep vulkan_core.h | head -n 1 || true)"
    if [ -n "$header" ] && ! grep -q "VK_EXT_layer_settings" "$header"; then
      echo "build_ggml: $header lacks VK_EXT_layer_settings: guarding ggml-vulkan's use of it" >&2
      "$PYTHON" "$here/ggml_patches.py" vulkan "$src"
    fi
  fi
  env ${envs[@]+"${envs[@]}"} CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PYTHON" -m pip wheel --quiet --no-deps "${flags[@]}" -w "$wheel_dir" "$src"
  wheel="$(ls "$wheel_dir"/libggml_python-"$version"-*.whl | head -n 1)"
fi

"$PYTHON" -m pip install --quiet --no-deps --force-reinstall "$wheel"
echo "build_ggml: installed $wheel ($variant); now reinstall diffgemma-cpp: pip install --no-deps --force-reinstall ." >&2
