"""Layers on ggml RPC servers (issue 15's acceptance), with nothing but our package: no torch, no transformers.

    python bench/rpc_bench.py --out DIR [--model EXTRA.gguf ...]

Needs a ggml built with RPC (scripts/build_ggml.sh rpc). Starts two `diffgemma-cpp rpc-server` processes on
127.0.0.1 (each serving this machine's CPU), then, on the bundled sudoku model (F32, F16, Q8_0) and any
--model file:
  * decoder logits, all-host vs every placement over one server (everything; the last layer; experts in host
    memory, all or the first layer's) and over two (tensor_split 1,1 and 3,1, by free memory, host + both,
    with experts in host memory): NMSE per case (plain, self-conditioned, block 2). Bound 1e-4.
  * generation: the same seed on 6 puzzles commits the same tokens all-host, over one server and split over two.
  * per denoising step: bytes over the RPC link (TCP_INFO of this process's connections to the servers) and ms
    per step, against all-host (one thread on the host and on each server).
Writes DIR/rpc_bench.json, prints a summary and the memory plans; exits 1 when a bound is missed. tests/test_rpc.py
runs it.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench_parity as gbp  # noqa: E402
import rpc_servers  # noqa: E402

NMSE_BOUND = 1e-4
N_PUZZLES = 6
SEED = 11


def placements(e0: str, e1: str) -> list:
    """The RPC devices are named in registration order: e0's is RPC0, e1's RPC1 (one device per server)."""
    one = dict(rpc_servers=[e0], devices="RPC0")
    two = dict(rpc_servers=[e0, e1])
    return [
        dict(one, n_gpu_layers=-1),                                # everything, head included, on the server
        dict(one, n_gpu_layers=1),                                 # the last layer only, head on the host
        dict(one, n_gpu_layers=-1, cpu_moe=True),                  # experts in host memory
        dict(one, n_gpu_layers=-1, n_cpu_moe=1),                   # experts of the first layer in host memory
        dict(two, n_gpu_layers=-1, tensor_split=[1, 1]),           # half the layers on each server
        dict(two, n_gpu_layers=-1, tensor_split=[3, 1]),
        dict(two, n_gpu_layers=-1),                                # by free memory
        dict(two, n_gpu_layers=2, tensor_split=[1, 1]),            # host, then one layer on each server
        dict(two, n_gpu_layers=-1, tensor_split=[1, 1], cpu_moe=True),
        dict(two, n_gpu_layers=-1, tensor_split=[1, 1], n_cpu_moe=1),
    ]


def label(p: dict) -> str:
    servers = len(p["rpc_servers"])
    rest = ",".join(f"{k}={v}" for k, v in p.items() if k not in ("rpc_servers", "devices"))
    return f"{servers} server{'s' if servers > 1 else ''}: {rest}"


def model_files(workdir: Path, extra: list) -> dict:
    from diffgemma_cpp.convert.pipeline import requantize_gguf
    from diffgemma_cpp.demo import DEFAULT_MODEL

    files = {"sudoku f32": Path(DEFAULT_MODEL)}
    for t in ("f16", "q8_0"):
        out = workdir / f"sudoku-{t}.gguf"
        requantize_gguf(DEFAULT_MODEL, out, t, progress=False, quiet=True)
        files[f"sudoku {t}"] = out
    for path in extra:
        files[Path(path).stem] = Path(path)
    return files


def inputs_for(path, sudoku_inputs):
    """The sudoku task for sudoku-shaped models; for another model a prompt and two canvases of its own length."""
    from diffgemma_cpp import Model

    with Model(path, n_threads=1) as m:
        C, V = m.canvas_length, m.n_vocab
    if C == len(sudoku_inputs[1]):
        return sudoku_inputs
    rng = random.Random(7)
    ids = lambda n: [rng.randrange(min(V, 4096)) for _ in range(n)]  # noqa: E731
    return ids(6), ids(C), ids(C)


def generation(path, prompts, endpoints, **placement) -> dict:
    """One thread on the host as on each server (rpc_servers.servers): the comparison is then the link's cost,
    not the thread count's, on a machine shared with other work."""
    from diffgemma_cpp import Model
    from diffgemma_cpp._native import ffi, lib

    with Model(path, n_threads=1, **placement) as m:
        m.generate_ids(prompts[0], max_new_tokens=m.canvas_length, seed=0)  # warm: uploads, first graphs
        t = ffi.new("diffgemma_timings *")
        lib.diffgemma_timings_get(m._c, t)
        steps0 = int(t.n_steps)
        b0 = rpc_servers.link_bytes(endpoints)
        t0 = time.perf_counter()
        ids = [m.generate_ids(p, max_new_tokens=m.canvas_length, seed=SEED + i) for i, p in enumerate(prompts)]
        wall = time.perf_counter() - t0
        b1 = rpc_servers.link_bytes(endpoints)
        lib.diffgemma_timings_get(m._c, t)
        steps = int(t.n_steps) - steps0
        plan = m.memory_plan
    return {"ids": ids, "steps": steps, "ms_per_step": 1000 * wall / steps, "link_bytes_per_step": (b1 - b0) / steps,
            "plan": plan}


def measure(workdir: Path, extra=(), log=print) -> dict:
    from diffgemma_cpp import demo, sudoku

    result = {"logits": [], "generation": {}, "plans": {}, "failures": []}
    with rpc_servers.servers(2) as (endpoints, _):
        e0, e1 = endpoints
        sudoku_inputs = gbp.task_inputs()
        for name, path in model_files(workdir, list(extra)).items():
            inputs = inputs_for(path, sudoku_inputs)
            ref = gbp.decoder_cases(path, inputs)
            sc = ref["plain"] / 0.6
            for p in placements(e0, e1):
                ours = gbp.decoder_cases(path, inputs, sc, **p)
                row = {"model": name, "placement": label(p), **{c: gbp.nmse(ours[c], ref[c]) for c in ref}}
                result["logits"].append(row)
                log(f"{name} {label(p)}: NMSE " + ", ".join(f"{c} {row[c]:.2e}" for c in ref))
                for c in ref:
                    if not row[c] <= NMSE_BOUND:
                        result["failures"].append(f"{name} {label(p)} {c}: NMSE {row[c]:.2e} > {NMSE_BOUND}")
        rng = random.Random(7)
        puzzles = [sudoku.generate(demo.DEFAULT_GIVENS, rng) for _ in range(N_PUZZLES)]
        prompts = [sudoku.prompt_ids(p) for p, _ in puzzles]
        path = workdir / "sudoku-f16.gguf"
        runs = {"all-host": {}, "1 server, all layers and head": dict(rpc_servers=[e0], devices="RPC0", n_gpu_layers=-1),
                "2 servers, tensor_split 1,1": dict(rpc_servers=[e0, e1], n_gpu_layers=-1, tensor_split=[1, 1])}
        gen = {name: generation(path, prompts, endpoints, **p) for name, p in runs.items()}
        host = gen["all-host"]
        for name, g in gen.items():
            same = sum(a == b for a, b in zip(g["ids"], host["ids"]))
            result["generation"][name] = {"identical": same, "steps": g["steps"], "ms_per_step": g["ms_per_step"],
                                          "link_bytes_per_step": g["link_bytes_per_step"]}
            result["plans"][name] = g["plan"]
            log(f"generation f16 {name}: identical {same}/{N_PUZZLES}, {g['ms_per_step']:.2f} ms/step, "
                f"{g['link_bytes_per_step'] / 1024:.1f} KiB over the RPC link per step")
            if g["plan"]:
                log(g["plan"])
            if same != N_PUZZLES:
                result["failures"].append(f"generation {name}: {N_PUZZLES - same} puzzles committed other tokens")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("rpc_out"))
    ap.add_argument("--model", action="append", default=[], help="another GGUF to compare (repeatable)")
    args = ap.parse_args(argv)
    return gbp.run_and_report(args.out / "rpc_bench.json", lambda workdir: measure(workdir, args.model))


if __name__ == "__main__":
    sys.exit(main())
