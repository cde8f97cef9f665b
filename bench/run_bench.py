"""The engine against HF transformers 5.23.0 and the machine's GEMM peak, interleaved in one process.

    python bench/make_bench_model.py --scale mid
    python bench/run_bench.py --scale mid --threads 2 --steps 2 --repetitions 3 [-o md|json]

Each repetition measures, back to back: torch's dense float32 GEMM peak; our denoising step and prompt
encoding for every GGUF type; HF's denoising step (decoder forward with self-conditioning plus HF's own
sampler math: temperature, softmax, multinomial, argmax, entropy-bound acceptance, renoise, the confidence
entropy) and HF's prompt encoding in float32 and bfloat16, all with the same thread count, weights and
token ids. Ratios are taken within a repetition, then the median and spread (min..max) over repetitions, so
load from other processes on a shared machine moves both sides of a ratio alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_bench_model  # noqa: E402

from diffgemma_cpp.bench import EngineRunner, fmt, summarize  # noqa: E402
from diffgemma_cpp.bench_flops import encode_flops, step_flops  # noqa: E402


def gemm_peak_gflop_s(n: int = 2048, tries: int = 3) -> float:
    """Best-of-`tries` float32 GEMM throughput of torch (n x n x n)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


class HFRunner:
    """HF DiffusionGemmaForBlockDiffusion on the same checkpoint; one encode or `steps` denoising steps per call."""

    def __init__(self, hf_dir, dtype, prompt, canvas):
        import torch
        from transformers import DiffusionGemmaForBlockDiffusion

        self.torch = torch
        self.model = DiffusionGemmaForBlockDiffusion.from_pretrained(hf_dir, dtype=dtype).eval()
        self.prompt = torch.tensor([prompt])
        self.canvas = torch.tensor([canvas])
        self.cache = None

    def _encode(self):
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        self.model.model.encoder(input_ids=self.prompt, past_key_values=self.cache)

    def encode(self) -> dict:
        with self.torch.no_grad():
            t0 = time.perf_counter()
            self._encode()
            wall = time.perf_counter() - t0
        return {"encode_tok_s": self.prompt.shape[1] / wall}

    def denoise(self, steps: int) -> dict:
        """`steps` denoising steps after a warm-up step (whose logits become the first SC input)."""
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
            EntropyBoundSampler, EntropyBoundSamplerConfig, LinearTemperatureScheduleLogitsProcessor,
            StableAndConfidentStoppingCriteria)

        torch = self.torch
        cfg = self.model.config
        V, C = cfg.text_config.vocab_size, cfg.canvas_length
        processor = LinearTemperatureScheduleLogitsProcessor(0.4, 0.8, steps + 1)
        sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.1), C, V, steps + 1)
        stopping = StableAndConfidentStoppingCriteria(1, 0.0)
        emb_dtype = self.model.model.decoder.embed_tokens.weight.dtype
        with torch.no_grad():
            self._encode()
            canvas = self.canvas
            sc = None

            def step(n, canvas, sc):
                raw = self.model(decoder_input_ids=canvas, past_key_values=self.cache, self_conditioning_logits=sc).logits
                lg = processor(None, raw, cur_step=n)
                probs = torch.softmax(lg, dim=-1, dtype=torch.float32)
                sampled = torch.multinomial(probs.view(-1, V), num_samples=1).view(1, C)
                argmax = torch.argmax(lg, dim=-1)
                accepted = sampler.accept_canvas(canvas, sampled, lg, n)
                canvas = sampler.renoise_canvas(accepted, n)
                stopping(argmax, lg)
                return canvas, lg.to(emb_dtype)

            canvas, sc = step(steps + 1, canvas, sc)  # warm-up
            t0 = time.perf_counter()
            for n in range(steps, 0, -1):
                canvas, sc = step(n, canvas, sc)
            wall = time.perf_counter() - t0
        return {"step_ms": wall * 1e3 / steps}


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    paths = make_bench_model.make(args.scale, args.types, quiet=True)
    engines = {t: EngineRunner(paths[t], args.threads, args.prompt_tokens, split=True) for t in args.types}
    ggml_mulmat = None  # the F32 file with ggml's own f32 mul_mat (gemm_f32.h off), for --ab-gemm
    if args.ab_gemm and "f32" in engines:
        os.environ["DIFFGEMMA_NO_GEMM"] = "1"  # read when the context is made (csrc/core/kernel_config.h)
        try:
            ggml_mulmat = EngineRunner(paths["f32"], args.threads, args.prompt_tokens, split=True)
        finally:
            del os.environ["DIFFGEMMA_NO_GEMM"]
    first = next(iter(engines.values()))
    hf = {}
    for name in args.hf:
        hf[name] = HFRunner(paths["hf"], {"f32": torch.float32, "bf16": torch.bfloat16}[name], first.prompt,
                            first.canvas)
    shape = first.shape
    flops = step_flops(shape, args.prompt_tokens)
    reps = []
    for r in range(args.repetitions):
        rep = {"gemm_peak_gflop_s": gemm_peak_gflop_s()}
        for t, e in engines.items():
            for k, v in {**e.encode(), **e.denoise(args.steps, seed=r)}.items():
                rep[f"ours_{t}_{k}"] = v
            if ggml_mulmat is not None and t == "f32":
                for k, v in {**ggml_mulmat.encode(), **ggml_mulmat.denoise(args.steps, seed=r)}.items():
                    rep[f"ours_f32-ggml-mulmat_{k}"] = v
        for name, h in hf.items():
            rep[f"hf_{name}_step_ms"] = h.denoise(args.steps)["step_ms"]
            rep[f"hf_{name}_encode_tok_s"] = h.encode()["encode_tok_s"]
        step_gflop = sum(flops.values()) / 1e9
        arms = list(engines) + (["f32-ggml-mulmat"] if args.ab_gemm and "f32" in engines else [])
        for side in [f"ours_{t}" for t in arms] + [f"hf_{n}" for n in hf]:
            rep[f"{side}_step_gflop_s"] = step_gflop / (rep[f"{side}_step_ms"] / 1e3)
            rep[f"{side}_step_peak_frac"] = rep[f"{side}_step_gflop_s"] / rep["gemm_peak_gflop_s"]
        if "f32" in hf:
            for t in arms:
                rep[f"speedup_{t}_step_vs_hf_f32"] = rep["hf_f32_step_ms"] / rep[f"ours_{t}_step_ms"]
                rep[f"speedup_{t}_encode_vs_hf_f32"] = rep[f"ours_{t}_encode_tok_s"] / rep["hf_f32_encode_tok_s"]
        reps.append(rep)
        print(f"repetition {r + 1}/{args.repetitions} done", file=sys.stderr, flush=True)
    for e in engines.values():
        e.close()
    return {"scale": args.scale, "threads": args.threads, "steps": args.steps, "prompt_tokens": args.prompt_tokens,
            "repetitions": args.repetitions, "machine": machine(), "step_gflop": {k: v / 1e9 for k, v in flops.items()},
            "encode_gflop": encode_flops(shape, args.prompt_tokens) / 1e9, "summary": summarize(reps), "runs": reps}


# The matrix ISAs that decide which kernels can run (ours and the baselines'), named as /proc/cpuinfo does.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def machine() -> str:
    """The CPU's model, its matrix ISA flags, the load and our system info (kernel tier, threads)."""
    cpu, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from diffgemma_cpp import system_info

    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + "/".join(ISA_FLAGS)
    return (f"{cpu} (ISA: {isa}), {os.cpu_count()} hardware threads, load average {os.getloadavg()[0]:.1f}; "
            f"{system_info()}")


def markdown(res: dict) -> str:
    s = res["summary"]
    g = res["step_gflop"]
    out = [f"Scale `{res['scale']}`, {res['threads']} threads, prompt {res['prompt_tokens']} tokens, "
           f"{res['steps']} timed steps per run, {res['repetitions']} repetitions: median [min..max].",
           f"Machine: {res['machine']}",
           f"FLOPs per step: backbone {g['backbone']:.1f} G, head {g['head']:.1f} G, self-conditioning {g['sc']:.1f} G; "
           f"prompt encode {res['encode_gflop']:.1f} G.", "",
           f"torch float32 GEMM peak: {fmt(s['gemm_peak_gflop_s'])} GFLOP/s", "",
           "| implementation | step ms | step GFLOP/s | of GEMM peak | step vs HF f32 | encode tok/s | encode vs HF f32 |",
           "|---|---|---|---|---|---|---|"]
    sides = sorted({k.split("_step_ms")[0] for k in s if k.endswith("_step_ms")})
    for side in sides:
        t = side.split("_", 1)[1]
        sp = s.get(f"speedup_{t}_step_vs_hf_f32") if side.startswith("ours") else None
        ep = s.get(f"speedup_{t}_encode_vs_hf_f32") if side.startswith("ours") else None
        out.append(f"| {side} | {fmt(s[f'{side}_step_ms'])} | {fmt(s[f'{side}_step_gflop_s'])} | "
                   f"{fmt(s[f'{side}_step_peak_frac'], 2)} | {fmt(sp, 2) + 'x' if sp else '-'} | "
                   f"{fmt(s[f'{side}_encode_tok_s'])} | {fmt(ep, 2) + 'x' if ep else '-'} |")
    parts = [p for p in ("setup", "sc", "backbone", "head", "readback", "sampler")]
    out += ["", "Our step, split (ms): " + ", ".join(parts), ""]
    out += ["| type | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for side in [x for x in sides if x.startswith("ours")]:
        out.append(f"| {side[5:]} | " + " | ".join(fmt(s[f'{side}_{p}_ms'], 1) if f'{side}_{p}_ms' in s else "-"
                                                     for p in parts) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="mid", choices=sorted(make_bench_model.SCALES))
    ap.add_argument("--types", nargs="+", default=list(make_bench_model.TYPES))
    ap.add_argument("--hf", nargs="*", default=["f32", "bf16"], choices=["f32", "bf16"], help="HF dtypes to time")
    ap.add_argument("-t", "--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=2, help="steps per canvas; >= 2 so ours times self-conditioned steps")
    ap.add_argument("-p", "--prompt-tokens", type=int, default=512)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--ab-gemm", action="store_true",
                    help="also time the F32 engine with ggml's own f32 mul_mat (DIFFGEMMA_NO_GEMM=1)")
    ap.add_argument("-o", "--output", choices=("md", "json"), default="md")
    ap.add_argument("--from-json", metavar="FILE", help="print the tables of a saved `-o json` result and exit")
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    res = run(args)
    print(json.dumps(res, indent=2) if args.output == "json" else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
