"""Which graph nodes ggml's scheduler leaves on the CPU when the whole model is offloaded (issue 8's first GPU run).

    python bench/gpu_sched_report.py          # on a machine with a GPU (bench/gpu_session.sh runs it)

A node the CUDA backend cannot run (an op, type or layout its supports_op refuses, or one of our CPU custom ops)
does not fail: the scheduler runs it on the CPU and copies its inputs over each pass, which shows only as slow
steps. This reads ggml's own assignment log (GGML_SCHED_DEBUG=2, routed through the library's log callback) for
the encoder, a decoder pass with host self-conditioning logits and a few device-sampler steps, on the sudoku
model as F32 with an f32 KV cache and as F16 with an f16 one, and lists every node placed on the CPU. Expected:
only the token-embedding lookup (GET_ROWS of token_embd, kept in host memory by design). Exit status 1 when
anything else is there; on the stand-in GPU (one backend) the list is meaningless and only the parsing is run.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["GGML_SCHED_DEBUG"] = "2"  # read when a context creates its scheduler

# ggml_backend_sched_print_assignments: "node #%3d (%10.10s): %20.20s (%5.5s) [%5.5s %8.8s] use=..:" + the sources
NODE = re.compile(r"node #\s*\d+ \(\s*([^)]*?)\): (.{20}) \(.{5}\) \[\s*(\S*)\s*[^\]]*\] use=\S*:([^\n]*)")
SRC = re.compile(r" (.{20}) \(.{5}\) \[.{14}\]")  # each source: " %20.20s (%5.5s) [%5.5s %8.8s]"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.parts = []

    def emit(self, record):
        self.parts.append(record.getMessage())


def cpu_nodes(log_text: str) -> list:
    """(op, its sources' names) of every node assigned to the CPU backend, one entry per assignment logged."""
    return [(op.strip(), ", ".join(name.strip() for name in SRC.findall(srcs)))
            for op, _, backend, srcs in NODE.findall(log_text) if backend == "CPU"]


def run_cases(workdir: Path) -> str:
    from diffgemma_cpp import Model, _native
    from diffgemma_cpp.convert.pipeline import requantize_gguf
    from diffgemma_cpp.demo import DEFAULT_MODEL

    f16 = workdir / "sudoku-f16.gguf"
    requantize_gguf(DEFAULT_MODEL, f16, "f16", progress=False, quiet=True)
    handler = _Collect()
    logger = logging.getLogger("diffgemma_cpp")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    _native.route_logs_to_python()
    try:
        for path, kv_type in ((DEFAULT_MODEL, "f32"), (f16, "f16")):
            with Model(path, n_gpu_layers=-1, kv_type=kv_type) as m:
                canvas = [i % m.n_vocab for i in range(m.canvas_length)]
                m.encode([1, 2, 3])
                m.decoder_logits(canvas)
                m.generate_ids([1, 2, 3], max_new_tokens=m.canvas_length, steps=2, seed=0)
    finally:
        logger.removeHandler(handler)
    # ggml logs a line in fragments and ends it with "\n", which the callback turns into an empty message.
    return "".join(p if p else "\n" for p in handler.parts)


def main() -> int:
    from diffgemma_cpp._native import lib

    with tempfile.TemporaryDirectory(prefix="dg-sched-") as tmp:
        text = run_cases(Path(tmp))
    n_nodes = len(NODE.findall(text))
    backends = collections.Counter(b for _, _, b, _ in NODE.findall(text))
    splits = collections.Counter(re.findall(r"## SPLIT #\d+: (\S+)", text))
    print(f"{n_nodes} node assignments logged; nodes per backend {dict(backends)}; splits per backend {dict(splits)}")
    found = cpu_nodes(text)
    unexpected = [(op, srcs) for op, srcs in found if not (op == "GET_ROWS" and srcs.startswith("token_embd.weight"))]
    print(f"on the CPU: {dict(collections.Counter(op for op, _ in found))}; expected: the GET_ROWS of token_embd")
    for (op, srcs), count in collections.Counter(unexpected).most_common(20):
        print(f"  unexpected: {op} <- {srcs} x{count}")
    if n_nodes == 0:
        print("no assignment was logged: GGML_SCHED_DEBUG or the log routing did not work")
        return 1
    if os.environ.get("DIFFGEMMA_TEST_GPU_MIB") or lib.diffgemma_gpu_count() == 0:
        print("stand-in GPU or none: one backend, nothing to judge")
        return 0
    print("unexpected CPU nodes:", len(unexpected) or "none")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
