"""Load model files in a child process, so a crash (abort, segfault) fails a test instead of killing pytest.

    results = probe([path1, path2, ...])   # one dict per path, in order:
    # {"path": ..., "outcome": "loaded" | "raised" | "crashed", "exc": "ModelLoadError", "msg": "..."}

One child loads the paths one after another and reports a JSON line per file; if it dies, the file it was
on is recorded as crashed (with the signal and the tail of its stderr) and a fresh child goes on with the
rest. As a script: python load_probe.py < paths (one per line) prints the JSON lines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _serve() -> None:
    from diffgemma_cpp import Model

    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        try:
            with Model(path, n_threads=1, n_ctx=int(os.environ.get("DG_PROBE_N_CTX", "64"))):
                pass
            result = {"path": path, "outcome": "loaded"}
        except Exception as exc:  # the tests judge the class and message
            result = {"path": path, "outcome": "raised", "exc": type(exc).__name__, "msg": str(exc)}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def probe(paths, timeout: float = 120.0) -> list:
    paths = [str(p) for p in paths]
    results: list = []
    while len(results) < len(paths):
        todo = paths[len(results):]
        proc = subprocess.run([sys.executable, __file__], input="".join(p + "\n" for p in todo), capture_output=True,
                              text=True, errors="replace", timeout=timeout, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        results.extend(done)
        if len(done) < len(todo):  # the child died on todo[len(done)]
            results.append({"path": todo[len(done)], "outcome": "crashed", "returncode": proc.returncode,
                            "stderr": proc.stderr[-3000:]})
    return results


if __name__ == "__main__":
    _serve()
