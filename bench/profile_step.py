"""Per-op profile of denoising steps: where the time of one decoder pass goes, by op kind and weight.

    python bench/profile_step.py M.gguf [--threads 2] [--steps 2] [--prompt-tokens 512] [--encode]

Uses the context's per-node timer (diffgemma_timings_enable mode 2: every graph node is computed and timed
separately, so the total is a little above a normal step). For instruction-level detail use
`perf record -g python bench/profile_step.py ...` and `perf report --no-children --sort symbol`.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from diffgemma_cpp import Model
from diffgemma_cpp._native import check, ffi, lib


def op_report(model) -> list:
    n = ffi.new("size_t *")
    lib.diffgemma_timings_op_report(model._c, ffi.NULL, 0, n)
    buf = ffi.new("char[]", n[0] + 1)
    check(lib.diffgemma_timings_op_report(model._c, buf, n[0] + 1, n))
    rows = []
    for line in ffi.string(buf, n[0]).decode().splitlines():
        ms, count, kind = line.split("\t", 2)
        rows.append((float(ms), int(count), kind))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="decoder passes with self-conditioning to profile")
    ap.add_argument("-p", "--prompt-tokens", type=int, default=512)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--encode", action="store_true", help="profile the prompt's encoder pass instead")
    args = ap.parse_args(argv)
    m = Model(args.model, n_threads=args.threads, n_ctx=args.prompt_tokens + 2 * 256 + 64)
    rng = np.random.default_rng(0)
    prompt = rng.integers(5, m.n_vocab, args.prompt_tokens).tolist()
    if args.encode:
        m.encode(prompt[:8])  # warm-up
        m.reset()
        check(lib.diffgemma_timings_enable(m._c, 2))
        lib.diffgemma_timings_reset(m._c)
        m.encode(prompt)
        print_report(f"{args.model}: {args.threads} threads, encoder pass of {args.prompt_tokens} tokens", op_report(m), 1,
                     args.top)
        return 0
    m.encode(prompt)
    canvas = rng.integers(5, m.n_vocab, m.canvas_length).tolist()
    logits = m.decoder_logits(canvas)  # warm-up (and the first SC input)
    check(lib.diffgemma_timings_enable(m._c, 2))
    lib.diffgemma_timings_reset(m._c)
    for _ in range(args.steps):
        logits = m.decoder_logits(canvas, logits / 0.8)
    print_report(f"{args.model}: {args.threads} threads, {args.steps} decoder passes", op_report(m), args.steps, args.top)
    return 0


def print_report(title: str, rows: list, n_passes: int, top: int) -> None:
    total = sum(r[0] for r in rows)
    print(f"{title}, {total / n_passes:.1f} ms per pass")
    print(f"{'ms/pass':>9} {'share':>6} {'nodes':>6}  op")
    for ms, count, kind in rows[:top]:
        print(f"{ms / n_passes:9.1f} {100 * ms / total:5.1f}% {count // n_passes:6d}  {kind}")


if __name__ == "__main__":
    sys.exit(main())
