"""The C library under AddressSanitizer + UndefinedBehaviorSanitizer: scripts/sanitize_tests.sh builds it with
-DDIFFGEMMA_SANITIZE=ON into build/san-venv and runs its test subset there (a few minutes the first time, about
one minute once the build is cached). Any sanitizer finding, in any process, fails this test. It is marked
`long`: .ci/run runs it as its own step (`pytest -m long tests`), not the default suite."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _have_asan() -> bool:
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        return False
    lib = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return os.path.isabs(lib) and os.path.exists(lib)


@pytest.mark.long
@pytest.mark.skipif(os.environ.get("DG_SANITIZED") == "1", reason="this is the sanitized run itself")
@pytest.mark.skipif(not _have_asan(), reason="no gcc with libasan on this machine")
def test_subset_is_clean_under_asan_and_ubsan():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "sanitize_tests.sh")], capture_output=True, text=True,
                          errors="replace", env=dict(os.environ, PYTHON=sys.executable), timeout=1800)
    out = proc.stdout + proc.stderr
    print(out[-1500:])
    assert proc.returncode == 0, f"sanitized run failed (logs in build/san-logs):\n{out[-8000:]}"
    assert "clean (no sanitizer findings)" in out
