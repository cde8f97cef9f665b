"""`diffgemma-cpp bench -m M.gguf`: prompt encoding and denoising-step speed of the engine.

One run = encode a random prompt (tokens/s), then denoise `--blocks` canvases at exactly `--steps` steps each
(the confidence stop is disabled: random-weight models never converge) and re-encode each committed canvas.
Per step the time is split into setup (graph build + allocation), self-conditioning, backbone, head,
logits read-back and the host sampler, using the context's diffgemma_timings. Several runs give a median
and the spread (min..max); the machine is usually shared, so read ratios from one run, not absolute times.

The FLOPs of each part (bench_flops) turn times into GFLOP/s. bench/run_bench.py adds the HF transformers
baseline and the measured GEMM peak in the same process.
"""
from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from . import errors
from ._native import check, ffi, lib
from .bench_flops import encode_flops, read_shape, step_flops
from .cli_text import add_offload_options, offload_options

PARTS = ("setup", "sc", "backbone", "head", "readback", "sampler")


def _timings(ctx) -> dict:
    t = ffi.new("diffgemma_timings *")
    check(lib.diffgemma_timings_get(ctx, t))
    return {name: getattr(t, name) for name in dir(t)}


class EngineRunner:
    """A loaded GGUF with a fixed random prompt; each call measures one thing and returns a dict of numbers."""

    def __init__(self, path, n_threads: int, prompt_tokens: int = 512, split: bool = True, seed: int = 0,
                 sc_top_k: int = 0, n_gpu_layers: int = 0, **offload):
        """offload: main_gpu, cpu_moe, n_cpu_moe, fit, as for Model."""
        from .model import Model

        self.path = Path(path)
        self.shape = read_shape(path)
        t0 = time.perf_counter()
        C = self.shape.canvas
        self.model = Model(path, n_threads=n_threads, n_ctx=prompt_tokens + 4 * C, kv_type="f32",
                           sc_top_k=sc_top_k, n_gpu_layers=n_gpu_layers, **offload)
        self.load_s = time.perf_counter() - t0
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads
        self.sc_top_k = sc_top_k
        check(lib.diffgemma_timings_enable(self.model._c, int(split)))
        rng = np.random.default_rng(seed)
        V = self.model.n_vocab
        self.prompt = rng.integers(5, V, size=prompt_tokens).tolist()
        self.canvas = rng.integers(5, V, size=C).tolist()
        # Warm-up: page the weights in and let the scheduler size its buffers.
        self.model.encode(self.prompt[:8])
        self.model.decoder_logits(self.canvas)
        self.model.reset()
        self.warmup_s = time.perf_counter() - t0 - self.load_s

    def close(self):
        self.model.close()

    def encode(self) -> dict:
        """Prompt encoding from an empty cache."""
        m = self.model
        m.reset()
        lib.diffgemma_timings_reset(m._c)
        t0 = time.perf_counter()
        m.encode(self.prompt)
        wall = time.perf_counter() - t0
        n = len(self.prompt)
        return {"encode_tok_s": n / wall, "encode_gflop_s": encode_flops(self.shape, n) / wall / 1e9}

    def denoise(self, steps: int, blocks: int = 1, seed: int = 0) -> dict:
        """`blocks` canvases of exactly `steps` steps after the prompt (encoded first, outside the timing).

        A canvas's first step has no self-conditioning input yet; with steps >= 2 the per-step figures
        (step_ms and its parts) cover only the later steps, which all run the self-conditioning product."""
        m = self.model
        C = self.shape.canvas
        m.reset()
        m.encode(self.prompt)
        lib.diffgemma_timings_reset(m._c)
        marks = []

        def on_step(step, n_steps, canvas):
            marks.append(time.perf_counter())
            if step == 1 and n_steps >= 2 and len(marks) == 1:
                lib.diffgemma_timings_reset(m._c)  # per-step parts: self-conditioned steps only

        t0 = time.perf_counter()
        produced = 0
        n_blocks = 0
        for block in m.generate_blocks(self.prompt, max_new_tokens=blocks * C, steps=steps, seed=seed,
                                       confidence_threshold=0.0, on_step=on_step):
            produced += C
            n_blocks += 1
        wall = time.perf_counter() - t0
        t = _timings(m._c)
        n = max(1, t["n_steps"])
        sc_steps = [b - a for a, b in zip(marks[:steps], marks[1:steps])]  # steps 2..N of the first canvas
        out = {
            "steps": len(marks), "blocks": n_blocks, "steps_per_block": len(marks) / max(1, n_blocks),
            "step_ms": 1e3 * (statistics.fmean(sc_steps) if sc_steps else (wall - t["encode_ms"] / 1e3) / len(marks)),
            "setup_ms": t["decoder_setup_ms"] / n, "readback_ms": t["readback_ms"] / n, "sampler_ms": t["sampler_ms"] / n,
            "decoder_ms": t["decoder_compute_ms"] / n,
            "effective_tok_s": produced / wall,
        }
        if t["n_split"] == t["n_decoder"] and t["n_split"] > 0:
            for part in ("sc", "backbone", "head"):
                out[f"{part}_ms"] = t[f"{part}_ms"] / t["n_split"]
        flops = step_flops(self.shape, len(self.prompt), self.sc_top_k)
        out["step_gflop"] = sum(flops.values()) / 1e9
        out["step_gflop_s"] = out["step_gflop"] / (out["step_ms"] / 1e3)
        if "sc_ms" in out:
            for part in ("sc", "backbone", "head"):
                out[f"{part}_gflop_s"] = flops[part] / 1e9 / (out[f"{part}_ms"] / 1e3)
        return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def summarize(runs: list) -> dict:
    """{key: {"median", "min", "max"}} over the numeric keys present in every run."""
    keys = [k for k in runs[0] if all(k in r for r in runs) and isinstance(runs[0][k], (int, float))]
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys}


def fmt(stat: dict, digits: int = 1) -> str:
    """median [min..max]"""
    return f"{stat['median']:.{digits}f} [{stat['min']:.{digits}f}..{stat['max']:.{digits}f}]"


def run_bench(model, n_threads: int, prompt_tokens: int, steps: int, blocks: int, repetitions: int,
              split: bool = True, sc_top_k: int = 0, n_gpu_layers: int = 0, **offload) -> dict:
    runner = EngineRunner(model, n_threads, prompt_tokens, split, sc_top_k=sc_top_k, n_gpu_layers=n_gpu_layers,
                          **offload)
    try:
        runs = []
        for r in range(repetitions):
            runs.append({**runner.encode(), **runner.denoise(steps, blocks, seed=r)})
        return {"model": str(model), "threads": n_threads, "prompt_tokens": prompt_tokens, "steps": steps,
                "blocks": blocks, "repetitions": repetitions, "sc_top_k": sc_top_k, "n_gpu_layers": n_gpu_layers,
                "offload": offload, "memory_plan": runner.model.memory_plan, "load_s": runner.load_s,
                "canvas": runner.shape.canvas, "summary": summarize(runs), "runs": runs,
                "peak_rss_mib": peak_rss_mib()}
    finally:
        runner.close()


ROWS = [  # (label, key, digits)
    ("prompt encode, tokens/s", "encode_tok_s", 1), ("prompt encode, GFLOP/s", "encode_gflop_s", 1),
    ("denoising step, ms", "step_ms", 1), ("  graph setup, ms", "setup_ms", 2),
    ("  self-conditioning, ms", "sc_ms", 1), ("  backbone, ms", "backbone_ms", 1), ("  head, ms", "head_ms", 1),
    ("  logits read-back, ms", "readback_ms", 2), ("  host sampler, ms", "sampler_ms", 2),
    ("step GFLOP/s", "step_gflop_s", 1), ("  self-conditioning GFLOP/s", "sc_gflop_s", 1),
    ("  backbone GFLOP/s", "backbone_gflop_s", 1), ("  head GFLOP/s", "head_gflop_s", 1),
    ("steps per block", "steps_per_block", 0), ("effective tokens/s", "effective_tok_s", 1),
]


def format_markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"model `{result['model']}`, {result['threads']} threads, prompt {result['prompt_tokens']} tokens, "
             f"{result['blocks']} block(s) x {result['steps']} steps, canvas {result['canvas']}, "
             f"self-conditioning {'top-' + str(result['sc_top_k']) if result.get('sc_top_k') else 'exact'}, "
             f"{result['repetitions']} runs (median [min..max])", "", "| metric | value |", "|---|---|"]
    for label, key, digits in ROWS:
        if key in s:
            lines.append(f"| {label} | {fmt(s[key], digits)} |")
    lines.append(f"| step GFLOP | {s['step_gflop']['median']:.1f} |")
    lines.append(f"| peak RSS, MiB | {result['peak_rss_mib']:.0f} |")
    lines.append(f"| load, s | {result['load_s']:.2f} |")
    if result.get("memory_plan"):
        lines += ["", "```", result["memory_plan"], "```"]
    return "\n".join(lines)


def _cmd_bench(args) -> int:
    if args.steps <= 0 or args.repetitions <= 0 or args.blocks <= 0 or args.prompt_tokens <= 0:
        raise errors.InvalidArgumentError("--steps, --repetitions, --blocks and --prompt-tokens must be positive")
    threads = args.threads or lib.diffgemma_default_n_threads()
    if args.sc_top_k < 0:
        raise errors.InvalidArgumentError(f"--sc-top-k must be 0 (exact) or positive, got {args.sc_top_k}")
    offload = offload_options(args)
    result = run_bench(args.model, threads, args.prompt_tokens, args.steps, args.blocks, args.repetitions,
                       split=not args.no_split, sc_top_k=args.sc_top_k, n_gpu_layers=offload.pop("n_gpu_layers", 0),
                       **offload)
    print(json.dumps(result, indent=2) if args.output == "json" else format_markdown(result))
    return 0


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure prompt encoding and denoising-step speed of a GGUF")
    p.add_argument("-m", "--model", required=True, help="GGUF file (bench/make_bench_model.py makes random ones)")
    p.add_argument("-t", "--threads", type=int, default=0, help="compute threads (default: all cores)")
    p.add_argument("-p", "--prompt-tokens", type=int, default=512, help="random prompt length (default 512)")
    p.add_argument("--steps", type=int, default=8,
                   help="denoising steps per canvas, fixed (default 8); step figures exclude each canvas's first step")
    p.add_argument("--blocks", type=int, default=1, help="canvases per run (default 1)")
    p.add_argument("-r", "--repetitions", type=int, default=3, help="runs; the median and spread are shown")
    p.add_argument("--no-split", action="store_true",
                   help="do not split decoder passes into self-conditioning / backbone / head")
    p.add_argument("--sc-top-k", type=int, default=0, metavar="K",
                   help="top-k self-conditioning (default 0 = the exact product over the whole vocabulary)")
    add_offload_options(p)
    p.add_argument("-o", "--output", choices=("md", "json"), default="md")
    p.set_defaults(func=_cmd_bench)
