"""Solve rate of the bundled sudoku model against the denoising-step budget (and other sampler settings).

    python bench/sudoku_solve_rate.py [--givens 64,62,60] [-n 200] [--steps 1,2,4,8,16,32] [--seed 2026]
                                      [--t-min X] [--t-max X] [--entropy-bound X] [--stability K]
                                      [--confidence X] [-m GGUF] [-t THREADS] [-o md|json]

For every difficulty and step budget: the fraction of fresh puzzles fully solved, the cells right, the
mean steps actually used (the adaptive stop ends most canvases early) and the mean time per puzzle. The
puzzles and sampler seeds are the same for every row, so rows differ only by the setting. Sampler options
left out keep the GGUF's defaults; "default" in --steps is the GGUF's own step budget. Puzzle seed 2026 is
the one examples/sudoku/README.md reports (training uses other seeds).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from diffgemma_cpp import Model, sudoku
from diffgemma_cpp.demo import DEFAULT_MODEL

SAMPLER_OPTIONS = ("t_min", "t_max", "entropy_bound", "stability_threshold", "confidence_threshold")


def measure(model: Model, puzzles: list, seed: int, steps: int | None, sampler: dict) -> dict:
    solved, cells, used = 0, 0, 0
    t0 = time.perf_counter()
    for i, (puzzle, solution) in enumerate(puzzles):
        block = next(iter(model.generate_blocks(sudoku.prompt_ids(puzzle), max_new_tokens=sudoku.N_CELLS,
                                                steps=steps, seed=seed + i, **sampler)))
        grid = sudoku.canvas_to_grid(block.ids)
        solved += sudoku.is_valid_solution(grid, puzzle)
        cells += sum(a == b for a, b in zip(grid, solution))
        used += block.steps
    n = len(puzzles)
    return dict(solve_rate=solved / n, cell_accuracy=cells / (81 * n), mean_steps=used / n,
                ms_per_puzzle=1000 * (time.perf_counter() - t0) / n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--givens", default="64,62,60", help="comma-separated difficulties")
    ap.add_argument("-n", type=int, default=200, help="puzzles per difficulty")
    ap.add_argument("--steps", default="1,2,4,8,16,default", help="comma-separated step budgets")
    ap.add_argument("--seed", type=int, default=2026, help="puzzle and sampler seed")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--t-min", type=float)
    ap.add_argument("--t-max", type=float)
    ap.add_argument("--entropy-bound", type=float)
    ap.add_argument("--stability", dest="stability_threshold", type=int)
    ap.add_argument("--confidence", dest="confidence_threshold", type=float)
    ap.add_argument("-o", "--output", choices=("md", "json"), default="md")
    args = ap.parse_args(argv)

    sampler = {k: getattr(args, k) for k in SAMPLER_OPTIONS if getattr(args, k) is not None}
    model = Model(str(args.model), n_threads=args.threads)
    rows = []
    for givens in (int(g) for g in args.givens.split(",")):
        rng = random.Random(args.seed)
        puzzles = [sudoku.generate(givens, rng) for _ in range(args.n)]
        for steps in args.steps.split(","):
            budget = None if steps == "default" else int(steps)
            rows.append(dict(givens=givens, max_steps=steps, **measure(model, puzzles, args.seed, budget, sampler)))
            if args.output == "md":
                r = rows[-1]
                if len(rows) == 1:
                    print(f"model {args.model.name}, {args.n} puzzles per row, seed {args.seed}, sampler overrides "
                          f"{sampler or 'none'}\n")
                    print("| givens | max steps | solved | cells right | mean steps | ms / puzzle |")
                    print("|---|---|---|---|---|---|")
                print(f"| {givens} | {steps} | {100 * r['solve_rate']:.1f} % | {100 * r['cell_accuracy']:.2f} % "
                      f"| {r['mean_steps']:.1f} | {r['ms_per_puzzle']:.0f} |", flush=True)
    if args.output == "json":
        print(json.dumps(dict(model=str(args.model), n=args.n, seed=args.seed, sampler=sampler, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
