#!/usr/bin/env bash
# Incrementally rebuild the package from this working tree and install it into /work/venv-NAME
# (see dev_venv.sh). The CMake build tree is kept per developer, so rebuilds only recompile what changed.
set -euo pipefail
name=${1:?usage: dev_install.sh NAME}; shift
venv=/work/venv-$name
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$venv/bin/python" ] || bash "$root/scripts/dev_venv.sh" "$name" >/dev/null
"$venv/bin/pip" install -q --no-deps --no-build-isolation \
  -C build-dir="/tmp/dg-build-$name" -C cmake.build-type=Release "$root" "$@"
