"""The sampler where the head is (issue 15, item 5): a head on a ggml RPC server samples with ggml ops there
(csrc/offload/ggml_step_sampler.h) instead of reading its logits back to the host.

    python bench/rpc_sampler_bench.py --out DIR [--puzzles 6] [--model EXTRA.gguf ... [--steps N]]

Needs a ggml built with RPC (scripts/build_ggml.sh rpc). One `diffgemma-cpp rpc-server -t 1` on 127.0.0.1; the
bundled sudoku model in F16 (its logits are small: 17 x 81 floats) and any --model file (6 random prompts);
per prompt the same seed
  * all-host,
  * all layers and the head on the server, host sampler (DIFFGEMMA_HOST_SAMPLER=1: the logits read back, the
    self-conditioning logits sent up again: the "before"),
  * the same placement with the device sampler (the "after"),
and per denoising step: bytes received from and sent to the server (TCP_INFO of this process's connections)
and ms. Fails (exit 1) when the device sampler commits other tokens than the host sampler on the same placement,
when the sudoku model's tokens differ from all-host, or when, for logits above 64 KiB, the device sampler
receives a quarter of their size or more per step. Writes DIR/rpc_sampler_bench.json; tests/test_rpc.py runs it.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench_parity as gbp  # noqa: E402
import rpc_servers  # noqa: E402

SEED = 11


def run(path, prompts, endpoint, host_sampler: bool, steps=None, **placement) -> dict:
    """One thread on the host as on the server: the comparison is the link's cost, not the thread count's."""
    from diffgemma_cpp import Model
    from diffgemma_cpp._native import ffi, lib

    os.environ["DIFFGEMMA_HOST_SAMPLER"] = "1" if host_sampler else "0"  # read when the context is made
    try:
        with Model(path, n_threads=1, **placement) as m:
            kw = dict(max_new_tokens=m.canvas_length) | ({"steps": steps} if steps else {})
            m.generate_ids(prompts[0], seed=0, **kw)  # warm: uploads, first graphs
            t = ffi.new("diffgemma_timings *")
            lib.diffgemma_timings_get(m._c, t)
            steps0 = int(t.n_steps)
            r0 = rpc_servers.link_bytes([endpoint], received=True)
            s0 = rpc_servers.link_bytes([endpoint], sent=True)
            t0 = time.perf_counter()
            ids = [m.generate_ids(p, seed=SEED + i, **kw) for i, p in enumerate(prompts)]
            wall = time.perf_counter() - t0
            r1 = rpc_servers.link_bytes([endpoint], received=True)
            s1 = rpc_servers.link_bytes([endpoint], sent=True)
            lib.diffgemma_timings_get(m._c, t)
            steps = int(t.n_steps) - steps0
            logits_bytes = 4 * m.canvas_length * m.n_vocab
    finally:
        os.environ.pop("DIFFGEMMA_HOST_SAMPLER", None)
    return {"ids": ids, "steps": steps, "ms_per_step": 1000 * wall / steps, "received_per_step": (r1 - r0) / steps,
            "sent_per_step": (s1 - s0) / steps, "logits_bytes": logits_bytes}


def prompts_for(path, n: int) -> list:
    """Sudoku puzzles for the sudoku model, else n prompts of random ids."""
    from diffgemma_cpp import Model, demo, sudoku

    rng = random.Random(7)
    with Model(path, n_threads=1) as m:
        V = m.n_vocab
    if "sudoku" in Path(path).name:
        return [sudoku.prompt_ids(sudoku.generate(demo.DEFAULT_GIVENS, rng)[0]) for _ in range(n)]
    return [[2] + [rng.randrange(3, V) for _ in range(5 + i)] for i in range(n)]


def compare(name: str, path, n: int, endpoint: str, log, steps=None) -> tuple[dict, list]:
    prompts = prompts_for(path, n)
    on_server = dict(rpc_servers=[endpoint], devices="RPC0", n_gpu_layers=-1)
    runs = {"all-host": run(path, prompts, endpoint, False, steps),
            "1 server, host sampler (before)": run(path, prompts, endpoint, True, steps, **on_server),
            "1 server, device sampler (after)": run(path, prompts, endpoint, False, steps, **on_server)}
    host, before = runs["all-host"], runs["1 server, host sampler (before)"]
    out, failures = {}, []
    for label, r in runs.items():
        same = sum(a == b for a, b in zip(r["ids"], host["ids"]))
        same_before = sum(a == b for a, b in zip(r["ids"], before["ids"]))
        out[label] = {k: v for k, v in r.items() if k != "ids"} | {"identical": same, "identical_to_before": same_before}
        log(f"{name}, {label}: identical to all-host {same}/{n} (to the host sampler {same_before}/{n}), "
            f"{r['steps']} steps, {r['ms_per_step']:.2f} ms/step ({r['ms_per_step'] / host['ms_per_step']:.2f}x "
            f"all-host), received {r['received_per_step'] / 1024:.1f} KiB/step, sent {r['sent_per_step'] / 1024:.1f} "
            f"KiB/step (the logits: {r['logits_bytes'] / 1024:.1f} KiB)")
        # The sampler's own parity: the same logits (same placement) must commit the same tokens. Against all-host
        # only the trained sudoku model is held to identity: random weights amplify the placements' rounding.
        if same_before != n and label != "all-host":
            failures.append(f"{name}, {label}: {n - same_before} prompts committed other tokens than the host sampler")
        if same != n and "sudoku" in name:
            failures.append(f"{name}, {label}: {n - same} prompts committed other tokens than all-host")
    after = runs["1 server, device sampler (after)"]
    if not after["received_per_step"] < after["logits_bytes"] / 4 and after["logits_bytes"] > 64 * 1024:
        failures.append(f"{name}: the device sampler received {after['received_per_step']:.0f} bytes per step, "
                        f"not far below the logits' {after['logits_bytes']}")
    return out, failures


def measure(workdir: Path, n: int, extra=(), extra_steps=None, log=print) -> dict:
    from diffgemma_cpp import demo
    from diffgemma_cpp.convert.pipeline import requantize_gguf

    sudoku_f16 = workdir / "sudoku-f16.gguf"
    requantize_gguf(demo.DEFAULT_MODEL, sudoku_f16, "f16", progress=False, quiet=True)
    result = {"models": {}, "failures": []}
    with rpc_servers.servers(1) as (endpoints, _):
        for path in [sudoku_f16, *map(Path, extra)]:
            out, failures = compare(path.stem, path, n, endpoints[0], log, None if path == sudoku_f16 else extra_steps)
            result["models"][path.stem] = out
            result["failures"] += failures
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("rpc_out"))
    ap.add_argument("--puzzles", type=int, default=6, help="prompts per model")
    ap.add_argument("--model", action="append", default=[], help="another GGUF (repeatable)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per canvas for the --model files "
                    "(default: the model's; random weights never converge, so all of them run)")
    args = ap.parse_args(argv)
    return gbp.run_and_report(args.out / "rpc_sampler_bench.json",
                              lambda workdir: measure(workdir, args.puzzles, args.model, args.steps))


if __name__ == "__main__":
    sys.exit(main())
