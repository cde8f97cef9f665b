"""CPU vs GPU agreement (issue 8's acceptance), with nothing but our package: no torch, no transformers.

    python bench/gpu_bench_parity.py --out DIR        # on a machine with a GPU (bench/gpu_session.sh runs it)
    DIFFGEMMA_TEST_GPU_MIB=4096 python bench/gpu_bench_parity.py --out DIR   # the CPU stand-in GPU (a dry run)

On the bundled, trained sudoku model (F32 as shipped, and requantized to F16):
  * decoder logits, CPU vs every placement (everything; layers only; the last layer; experts in host memory):
    NMSE per case (plain, self-conditioned, after re-encoding a canvas as block 2). Bound: 1e-4 for F16.
  * generation: the same seed on 6 puzzles commits the same tokens on the CPU and fully offloaded (the device
    sampler), and no logits are read back there.
Writes DIR/gpu_parity.json and prints a summary; exits 1 when a bound is missed. tests/test_offload.py runs the
same `measure` (on the stand-in in the default suite, on a real GPU when there is one).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NMSE_BOUND = {"f16": 1e-4, "f32": 1e-4}
PLACEMENTS = [
    dict(n_gpu_layers=-1),                 # everything, head included: logits and sampler on the GPU
    dict(n_gpu_layers=1000),               # every layer and the head (more than n_layer)
    dict(n_gpu_layers=1),                  # the last layer only: head and sampler on the CPU
    dict(n_gpu_layers=-1, cpu_moe=True),   # experts in host memory
    dict(n_gpu_layers=-1, n_cpu_moe=1),    # experts of the first layer in host memory
]
N_PUZZLES = 6
GENERATION_SEED = 11


def nmse(a, b) -> float:
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def task_inputs(seed: int = 7):
    """A real puzzle prompt, its solution with 17 cells redrawn (a canvas as the model sees it mid-generation),
    and a second canvas of random digits for block 2."""
    from diffgemma_cpp import sudoku

    rng = random.Random(seed)
    puzzle, solution = sudoku.generate(64, rng)
    c1 = sudoku.solution_ids(solution)
    for i in rng.sample(range(sudoku.N_CELLS), 17):
        c1[i] = sudoku.TOKEN_ID[rng.choice(sudoku.DIGITS)]
    c2 = [sudoku.TOKEN_ID[rng.choice(sudoku.DIGITS)] for _ in c1]
    return sudoku.prompt_ids(puzzle), c1, c2


def decoder_cases(path, inputs, sc=None, **placement) -> dict:
    from diffgemma_cpp import Model

    prompt, c1, c2 = inputs
    with Model(path, n_threads=None, **placement) as m:
        m.encode(prompt)
        out = {"plain": m.decoder_logits(c1)}
        out["sc"] = m.decoder_logits(c1, out["plain"] / 0.6 if sc is None else sc)
        m.encode(c1)
        out["block2"] = m.decoder_logits(c2)
    return out


def generate(path, prompts, seed, **placement):
    """Committed ids per prompt, logits read-back ms, steps and wall time."""
    from diffgemma_cpp import Model
    from diffgemma_cpp._native import ffi, lib

    with Model(path, n_threads=None, **placement) as m:
        t0 = time.perf_counter()
        ids = [m.generate_ids(p, max_new_tokens=m.canvas_length, seed=seed + i) for i, p in enumerate(prompts)]
        wall = time.perf_counter() - t0
        t = ffi.new("diffgemma_timings *")
        lib.diffgemma_timings_get(m._c, t)
        return ids, float(t.readback_ms), int(t.n_steps), wall


def identical_without_tf32(path, prompts, cpu_ids, log) -> int | None:
    """Diagnosis for a token mismatch: ggml-cuda lets cuBLAS round f32 GEMM inputs to TF32 (10-bit mantissa);
    NVIDIA_TF32_OVERRIDE=0 turns that off for a whole process, so the GPU generation is rerun in a child process
    with it. Identical there means TF32 rounding alone moved a decision. None when it could not be run."""
    import os
    import subprocess

    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return None
    child = subprocess.run([sys.executable, __file__, "--generate", str(path), "--prompts", json.dumps(prompts)],
                           env={**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}, capture_output=True, text=True,
                           timeout=120)
    if child.returncode != 0:
        log(f"generation without TF32 failed: {child.stderr.strip()[-500:]}")
        return None
    same = sum(a == b for a, b in zip(cpu_ids, json.loads(child.stdout)))
    log(f"generation f16 without TF32 (NVIDIA_TF32_OVERRIDE=0): identical {same}/{len(prompts)}")
    return same


def model_files(workdir: Path) -> dict:
    """The shipped F32 sudoku GGUF and an F16 requantization of it."""
    from diffgemma_cpp.convert.pipeline import requantize_gguf
    from diffgemma_cpp.demo import DEFAULT_MODEL

    files = {"f32": Path(DEFAULT_MODEL)}
    f16 = workdir / "sudoku-f16.gguf"
    if not f16.exists():
        requantize_gguf(DEFAULT_MODEL, f16, "f16", progress=False, quiet=True)
    files["f16"] = f16
    return files


def measure(workdir: Path, log=print) -> dict:
    from diffgemma_cpp import demo, sudoku
    from diffgemma_cpp._native import ffi, lib

    result = {"gpus": [ffi.string(lib.diffgemma_gpu_description(i)).decode() for i in range(lib.diffgemma_gpu_count())],
              "logits": [], "generation": {}, "failures": []}
    inputs = task_inputs()
    files = model_files(workdir)
    for outtype, path in files.items():
        ref = decoder_cases(path, inputs)  # its SC case used plain / 0.6 ...
        sc = ref["plain"] / 0.6            # ... which every placement then gets too
        for placement in PLACEMENTS:
            ours = decoder_cases(path, inputs, sc, **placement)
            row = {"type": outtype, "placement": placement, **{case: nmse(ours[case], ref[case]) for case in ref}}
            result["logits"].append(row)
            log(f"{outtype} {placement}: NMSE " + ", ".join(f"{c} {row[c]:.2e}" for c in ref))
            for case in ref:
                if not row[case] <= NMSE_BOUND[outtype]:
                    result["failures"].append(f"{outtype} {placement} {case}: NMSE {row[case]:.2e} > {NMSE_BOUND[outtype]}")
    rng = random.Random(7)
    puzzles = [sudoku.generate(demo.DEFAULT_GIVENS, rng) for _ in range(N_PUZZLES)]
    prompts = [sudoku.prompt_ids(p) for p, _ in puzzles]
    path = files["f16"]
    cpu_ids, _, cpu_steps, cpu_wall = generate(path, prompts, seed=GENERATION_SEED)
    gpu_ids, readback, gpu_steps, gpu_wall = generate(path, prompts, seed=GENERATION_SEED, n_gpu_layers=-1)
    same = sum(a == b for a, b in zip(cpu_ids, gpu_ids))
    solved = sum(sudoku.is_valid_solution(sudoku.canvas_to_grid(ids[len(p):]), puz)
                 for ids, p, (puz, _) in zip(gpu_ids, prompts, puzzles))
    result["generation"] = {"puzzles": N_PUZZLES, "identical": same, "gpu_readback_ms": readback, "cpu_steps": cpu_steps,
                            "gpu_steps": gpu_steps, "cpu_wall_s": cpu_wall, "gpu_wall_s": gpu_wall, "gpu_solved": solved}
    log(f"generation f16, seed {GENERATION_SEED}, {N_PUZZLES} puzzles: identical {same}/{N_PUZZLES}, GPU read-back {readback:.1f} ms, "
        f"solved on the GPU {solved}, steps CPU {cpu_steps} / GPU {gpu_steps}, wall CPU {cpu_wall:.2f} s / GPU {gpu_wall:.2f} s")
    if same != N_PUZZLES:
        result["failures"].append(f"generation: {N_PUZZLES - same} of {N_PUZZLES} puzzles committed other tokens on the GPU")
        result["generation"]["identical_without_tf32"] = identical_without_tf32(path, prompts, cpu_ids, log)
    if readback != 0.0:
        result["failures"].append(f"generation: {readback:.1f} ms of logits read back with the head on the GPU")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_out"))
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # child of identical_without_tf32
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate:
        print(json.dumps(generate(args.generate, json.loads(args.prompts), seed=GENERATION_SEED, n_gpu_layers=-1)[0]))
        return 0
    return run_and_report(args.out / "gpu_parity.json", measure)


def run_and_report(json_path: Path, measure_in) -> int:
    """Runs measure_in(workdir) in a temporary folder, writes its result (or the reason it did not complete) to
    json_path, prints the failures; exit status 1 when there are any. Shared with rpc_bench.py."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        try:
            result = measure_in(Path(tmp))
        except Exception as exc:  # report the reason in the json, not only on stderr
            result = {"error": f"{type(exc).__name__}: {exc}", "failures": ["did not complete"]}
            print(result["error"], file=sys.stderr)
    json_path.write_text(json.dumps(result, indent=2))
    print("failures:", result["failures"] or "none")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
