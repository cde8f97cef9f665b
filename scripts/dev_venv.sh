#!/usr/bin/env bash
# Create a developer overlay venv /work/venv-NAME on top of the shared /work/venv (torch, transformers, ...),
# so several developers can install the package from one working tree without racing each other.
set -euo pipefail
name=${1:?usage: dev_venv.sh NAME}
base=${DG_BASE_VENV:-/work/venv}
venv=/work/venv-$name
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # libggml must sit next to our package (its rpath is $ORIGIN/../libggml/lib64), so install it here too,
  # before the overlay .pth makes pip believe it is already installed.
  "$venv/bin/pip" install -q libggml-python==0.20.2.post1 2>&1 | grep -v '^WARNING: Location' || true
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/_dg_base_venv.pth"
fi
echo "$venv"
