"""Our speed on a CPU we share: 1, 2, 4, 8 and the default number of threads, with 0, 1 and 2 busy programs
beside us, as ratios against 1 thread in the same setting.

    python bench/make_bench_model.py --scale tiny --types f32
    python bench/make_bench_model.py --scale mid --types q4_k_m
    python bench/contention_bench.py [--models tiny,sudoku,mid] [--threads 1,2,4,8,0] [--competitors 0,1,2] [-r 3]

Workloads: tiny, a 12-token completion in 4 steps (bench/make_bench_model.py's tiny f32); sudoku, one puzzle of
the bundled model (81 cells, its default steps); mid, one 256-token canvas of 2 denoising steps after a
64-token prompt (bench/make_bench_model.py's mid; its KV prefix is reused, so the steps dominate). Each
competitor is a Python busy loop in its own process, started before and killed after its setting (and
bounded by --competitor-seconds whatever happens). Threads 0 is the default (one per physical core we may use).
Times are the median of -r runs after one warm-up run; ratio = time / time at 1 thread, same competitors.

Goals (issue 16, on a 2-core machine): with competitors, every thread count within 1.3x of 1 thread; idle, the
mid model at 2 threads at least 1.7x faster than at 1 (ratio <= 0.59).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_bench_model  # noqa: E402
from run_bench import machine  # noqa: E402

from diffgemma_cpp import Model, sudoku  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUDOKU = REPO / "python" / "diffgemma_cpp" / "models" / "sudoku.gguf"
BUSY_LOOP = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def model_path(name: str, mid_type: str) -> Path:
    if name == "sudoku":
        return SUDOKU
    wtype = "f32" if name == "tiny" else mid_type
    path = make_bench_model.gguf_path(name, wtype)
    if not path.exists():
        sys.exit(f"{path} is missing: python bench/make_bench_model.py --scale {name} --types {wtype}")
    return path


def workload(name: str, m: Model):
    """A callable doing one unit of the model's work (see the module docstring)."""
    if name == "tiny":
        return lambda: m.create_completion("Once upon a time", max_tokens=12, steps=4, seed=1)
    if name == "sudoku":
        puzzle, _ = sudoku.generate(60, random.Random(7))
        prompt = sudoku.prompt_ids(puzzle)
        return lambda: list(m.generate_blocks(prompt, max_new_tokens=sudoku.N_CELLS, seed=1))
    prompt = random.Random(3).sample(range(5, m.n_vocab), 64)
    return lambda: list(m.generate_blocks(prompt, max_new_tokens=m.canvas_length, steps=2, seed=1,
                                          confidence_threshold=0.0))


def time_setting(path: Path, name: str, threads: int, repetitions: int) -> float:
    with Model(path, n_threads=threads or None) as m:
        work = workload(name, m)
        work()  # warm-up: page the weights in, size the buffers, fill the prompt's KV prefix
        runs = []
        for _ in range(repetitions):
            t0 = time.perf_counter()
            work()
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def start_competitors(n: int, seconds: float) -> list:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(seconds)]) for _ in range(n)]


def stop(procs: list) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,sudoku,mid")
    ap.add_argument("--mid-type", default="q4_k_m", choices=make_bench_model.TYPES)
    ap.add_argument("--threads", default="1,2,4,8,0", help="thread counts; 0 = the default")
    ap.add_argument("--competitors", default="0,1,2", help="busy processes beside us")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--competitor-seconds", type=float, default=900.0, help="hard bound on each competitor's life")
    ap.add_argument("-o", "--output", choices=("md", "json"), default="md")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if threads[0] != 1:
        sys.exit("--threads must start with 1 (the baseline of every ratio)")
    rows = []
    for name in args.models.split(","):
        path = model_path(name, args.mid_type)
        for n_comp in (int(c) for c in args.competitors.split(",")):
            procs = start_competitors(n_comp, args.competitor_seconds)
            try:
                time.sleep(0.5 if n_comp else 0.0)  # let the competitors reach their loops
                secs = {t: time_setting(path, name, t, args.repetitions) for t in threads}
            finally:
                stop(procs)
            rows.append({"model": name, "competitors": n_comp, "seconds": secs,
                         "ratio": {t: secs[t] / secs[1] for t in threads}})
            print(f"{name} competitors={n_comp}: " + ", ".join(f"t={t or 'default'} {secs[t]:.3f}s" for t in threads),
                  file=sys.stderr, flush=True)
    result = {"machine": machine(), "repetitions": args.repetitions, "mid_type": args.mid_type, "rows": rows}
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"Machine: {result['machine']}\n")
    print("| model | busy programs | " + " | ".join(f"{t or 'default'} thr" for t in threads) + " |")
    print("|---|---|" + "---|" * len(threads))
    for r in rows:
        cells = [f"{r['seconds'][t]:.3f} s (x{r['ratio'][t]:.2f})" for t in threads]
        print(f"| {r['model']} | {r['competitors']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
