"""Solve rate of the sudoku checkpoint under transformers' own `generate` (and, with --gguf, our engine).

Runs one puzzle at a time (batch 1, as our engine does), so the adaptive stop is per canvas and the step
count is comparable. Decoder passes are counted with a forward hook on the decoder module.

Usage:  python eval_hf.py [--ckpt /work/sudoku_ckpt] [--givens G] [--n 200] [--seed 2026] [--json out.json]
                          [--gguf python/diffgemma_cpp/models/sudoku.gguf]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import time

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from sudoku_lib import sudoku


def evaluate(model, puzzles: list[tuple[str, str]], seed: int, max_denoising_steps: int | None = None) -> dict:
    passes = 0

    def count(*_):
        nonlocal passes
        passes += 1

    hook = model.model.decoder.register_forward_hook(count)
    solved, steps, cells_right = 0, [], 0
    kwargs = {} if max_denoising_steps is None else {"max_denoising_steps": max_denoising_steps}
    t0 = time.time()
    try:
        for i, (puzzle, solution) in enumerate(puzzles):
            torch.manual_seed(seed + i)  # each puzzle's sampler noise is reproducible on its own
            before = passes
            ids = torch.tensor([sudoku.prompt_ids(puzzle)])
            with torch.no_grad():
                out = model.generate(input_ids=ids, **kwargs)
            seq = out.sequences if hasattr(out, "sequences") else out
            grid = sudoku.canvas_to_grid(seq[0, ids.shape[1] :].tolist())
            solved += sudoku.is_valid_solution(grid, puzzle)
            cells_right += sum(a == b for a, b in zip(grid, solution))
            steps.append(passes - before)
    finally:
        hook.remove()
    n = len(puzzles)
    return dict(
        puzzles=n,
        solve_rate=solved / n,
        cell_accuracy=cells_right / (81 * n),
        mean_steps=sum(steps) / n,
        max_steps=max(steps),
        seconds=round(time.time() - t0, 1),
    )


def evaluate_engine(gguf: pathlib.Path, puzzles: list[tuple[str, str]], seed: int,
                    max_denoising_steps: int | None = None) -> dict:
    """The same measurement on our engine (its own RNG, so the same seeds give different noise than torch)."""
    import diffgemma_cpp

    model = diffgemma_cpp.Model(str(gguf))
    solved, steps, cells_right = 0, [], 0
    t0 = time.time()
    for i, (puzzle, solution) in enumerate(puzzles):
        block = next(iter(model.generate_blocks(sudoku.prompt_ids(puzzle), max_new_tokens=sudoku.N_CELLS,
                                                steps=max_denoising_steps, seed=seed + i)))
        grid = sudoku.canvas_to_grid(block.ids)
        solved += sudoku.is_valid_solution(grid, puzzle)
        cells_right += sum(a == b for a, b in zip(grid, solution))
        steps.append(block.steps)
    n = len(puzzles)
    return dict(puzzles=n, solve_rate=solved / n, cell_accuracy=cells_right / (81 * n), mean_steps=sum(steps) / n,
                max_steps=max(steps), seconds=round(time.time() - t0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=pathlib.Path, default=pathlib.Path("/work/sudoku_ckpt"))
    ap.add_argument("--givens", type=int, default=None, help="default: the shipped difficulty in training_meta.json")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2026, help="puzzle and sampler seed (training used 1234/1235)")
    ap.add_argument("--max-denoising-steps", type=int, default=None)
    ap.add_argument("--json", type=pathlib.Path, default=None, help="also write the result here")
    ap.add_argument("--gguf", type=pathlib.Path, default=None,
                    help="also run our engine (diffgemma_cpp) on this GGUF, on the same puzzles and settings")
    args = ap.parse_args()
    torch.set_num_threads(1)

    givens = args.givens
    if givens is None:
        meta = json.loads((args.ckpt / "training_meta.json").read_text())
        givens = meta.get("shipped_givens", meta["eval_givens"])
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.ckpt).eval()
    rng = random.Random(args.seed)
    puzzles = [sudoku.generate(givens, rng) for _ in range(args.n)]
    result = dict(givens=givens, seed=args.seed, **evaluate(model, puzzles, args.seed, args.max_denoising_steps))
    result["max_denoising_steps"] = args.max_denoising_steps or model.generation_config.max_denoising_steps
    if args.gguf is not None:
        result = {"hf": result, "engine": evaluate_engine(args.gguf, puzzles, args.seed, args.max_denoising_steps)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
