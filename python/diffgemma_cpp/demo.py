"""`diffgemma-cpp demo`: a small DiffusionGemma-architecture model solves sudokus, on our engine.

The package ships ``models/sudoku.gguf``, a 6-layer DiffusionGemma (sliding + full attention, top-2 MoE,
self-conditioning) trained from scratch by ``examples/sudoku/train.py``. The prompt is the puzzle
(81 cells, '.' for blanks); the 81-token canvas is denoised into the solution, starting from uniform
random tokens, with the checkpoint's own entropy-bound sampler.

    diffgemma-cpp demo                      # 5 fresh puzzles, solve rate at the end
    diffgemma-cpp demo --visual             # watch each canvas being denoised
    diffgemma-cpp demo --puzzle "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable

from . import sudoku

DEFAULT_MODEL = Path(__file__).parent / "models" / "sudoku.gguf"
# Difficulty (number of givens) the shipped model was measured at: 57 % of 200 fresh puzzles solved by HF
# generate, 56.5 % by our engine (examples/sudoku/README.md).
DEFAULT_GIVENS = 64

StepCallback = Callable[[int, int, list], None]  # (step, total, canvas token ids)


class EngineSolver:
    """Solves with our C engine (``diffgemma_cpp.Model``)."""

    name = "diffgemma_cpp"

    def __init__(self, model_path: Path, n_threads: int | None, sc_top_k: int = 0):
        from . import Model  # imported here so `--help` works even where the native library is missing

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"sudoku model not found at {model_path}; pass -m PATH to a sudoku GGUF")
        self.model = Model(str(model_path), n_threads=n_threads, sc_top_k=sc_top_k)

    def solve(self, puzzle: str, seed: int, steps: int | None, on_step: StepCallback | None) -> tuple[list[int], int]:
        blocks = list(self.model.generate_blocks(sudoku.prompt_ids(puzzle), max_new_tokens=sudoku.N_CELLS,
                                                 steps=steps, seed=seed, on_step=on_step))
        if not blocks:
            raise RuntimeError("the engine returned no canvas")
        return list(blocks[0].ids), int(blocks[0].steps)


class HFSolver:
    """Solves with transformers' reference `generate` on an HF checkpoint folder (for comparisons)."""

    name = "transformers"

    def __init__(self, checkpoint: Path, n_threads: int | None):
        import torch
        from transformers import DiffusionGemmaForBlockDiffusion

        self.torch = torch
        if n_threads:
            torch.set_num_threads(n_threads)
        self.model = DiffusionGemmaForBlockDiffusion.from_pretrained(checkpoint).eval()

    def solve(self, puzzle: str, seed: int, steps: int | None, on_step: StepCallback | None) -> tuple[list[int], int]:
        torch = self.torch
        n_steps = self.model.generation_config.max_denoising_steps if steps is None else steps
        passes = 0

        def after_decoder_pass(_module, _args, logits):
            nonlocal passes
            passes += 1
            if on_step is not None:  # the softcap is monotonic, so the argmax of the raw head is the canvas
                on_step(passes, n_steps, logits[0].argmax(-1).tolist())

        # Only decoder passes reach the LM head during generate (the encoder just fills the cache).
        hook = self.model.lm_head.register_forward_hook(after_decoder_pass)
        try:
            torch.manual_seed(seed)
            ids = torch.tensor([sudoku.prompt_ids(puzzle)])
            kwargs = {} if steps is None else {"max_denoising_steps": steps}
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, **kwargs)
        finally:
            hook.remove()
        seq = out.sequences if hasattr(out, "sequences") else out
        return seq[0, ids.shape[1]:].tolist(), passes


class BoardPainter:
    """Draws the canvas in place on a terminal (ANSI), or step lines when output is not a terminal."""

    def __init__(self, puzzle: str, stream, delay: float):
        self.puzzle = puzzle
        self.stream = stream
        self.delay = delay
        self.tty = stream.isatty()
        self.drawn_lines = 0

    def _board(self, grid: str) -> str:
        if not self.tty:
            return sudoku.format_grid(grid)
        # Givens in bold; denoised cells that contradict a given of the same row/col/box in red.
        lines = sudoku.format_grid(grid).split("\n")
        out, cell = [], 0
        for line in lines:
            if line.startswith("-"):
                out.append(line)
                continue
            chars = []
            for ch in line:
                if ch in sudoku.DIGITS or ch == "?":
                    if self.puzzle[cell] != sudoku.BLANK:
                        chars.append(f"\x1b[1m{ch}\x1b[0m")
                    elif ch == "?":
                        chars.append(f"\x1b[2m{ch}\x1b[0m")
                    else:
                        chars.append(f"\x1b[36m{ch}\x1b[0m")
                    cell += 1
                else:
                    chars.append(ch)
            out.append("".join(chars))
        return "\n".join(out)

    def __call__(self, step: int, total: int, canvas_ids: list) -> None:
        grid = sudoku.canvas_to_grid(canvas_ids)
        header = f"denoising step {step}/{total}"
        text = header + "\n" + self._board(grid)
        if self.tty and self.drawn_lines:
            self.stream.write(f"\x1b[{self.drawn_lines}F\x1b[J")  # back to the top of the last drawing
        self.stream.write(text + "\n")
        self.stream.flush()
        self.drawn_lines = text.count("\n") + 1
        if self.delay:
            time.sleep(self.delay)


def run_demo(solver, puzzles: list[str], *, seed: int, steps: int | None, visual: bool, delay: float,
             out=sys.stdout) -> dict:
    """Solves ``puzzles`` and prints each; returns the summary numbers."""
    solved, total_steps, total_time = 0, 0, 0.0
    for k, puzzle in enumerate(puzzles):
        givens = sum(ch != sudoku.BLANK for ch in puzzle)
        print(f"\npuzzle {k + 1}/{len(puzzles)} ({givens} givens)", file=out)
        print(sudoku.format_grid(puzzle), file=out)
        painter = BoardPainter(puzzle, out, delay) if visual else None
        t0 = time.perf_counter()
        canvas, used = solver.solve(puzzle, seed + k, steps, painter)
        elapsed = time.perf_counter() - t0
        grid = sudoku.canvas_to_grid(canvas)
        valid = sudoku.is_valid_solution(grid, puzzle)
        solved += valid
        total_steps += used
        total_time += elapsed
        print("solution:" if valid else "model output:", file=out)
        print(sudoku.format_grid(grid), file=out)
        print(f"valid: {'yes' if valid else 'no'}   steps: {used}   time: {elapsed * 1000:.0f} ms", file=out)
    n = len(puzzles)
    summary = {"puzzles": n, "solved": solved, "solve_rate": solved / n if n else 0.0,
               "mean_steps": total_steps / n if n else 0.0, "seconds": total_time}
    print(f"\nsolved {solved}/{n} ({100 * summary['solve_rate']:.0f}%), mean steps per canvas "
          f"{summary['mean_steps']:.1f}, {total_time:.2f} s with {solver.name}", file=out)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL, help="sudoku GGUF (default: the bundled one)")
    p.add_argument("-n", "--count", type=int, default=5, help="number of fresh puzzles (default 5)")
    p.add_argument("--givens", type=int, default=DEFAULT_GIVENS,
                   help=f"difficulty: givens per fresh puzzle, fewer is harder (default {DEFAULT_GIVENS})")
    p.add_argument("--puzzle", help="solve this puzzle: 81 cells, digits and '.' or '0' for blanks")
    p.add_argument("--seed", type=int, default=None, help="puzzle and sampler seed (default: random)")
    p.add_argument("--steps", type=int, default=None, help="max denoising steps (default: the model's)")
    p.add_argument("--visual", action="store_true", help="show the canvas after every denoising step")
    p.add_argument("--delay", type=float, default=0.05, help="seconds to pause per step with --visual")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--sc-top-k", type=int, default=0, metavar="K",
                   help="top-k self-conditioning in our engine (default 0 = exact)")
    p.add_argument("--hf", type=Path, default=None, metavar="DIR",
                   help="compare: solve with transformers on this HF checkpoint instead of our engine")


def run(args: argparse.Namespace) -> int:
    """Entry point of the `demo` subcommand."""
    if args.count < 1:
        raise SystemExit("diffgemma-cpp demo: --count must be at least 1")
    if not 17 <= args.givens <= 80:
        raise SystemExit("diffgemma-cpp demo: --givens must be in 17..80")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if args.puzzle is not None:
        try:
            puzzle = sudoku.normalize(args.puzzle)
        except ValueError as exc:
            raise SystemExit(f"diffgemma-cpp demo: --puzzle: {exc}") from None
        if sudoku.count_solutions(puzzle, 2) == 0:
            raise SystemExit("diffgemma-cpp demo: --puzzle has no solution (its givens contradict each other)")
        puzzles = [puzzle]
    else:
        rng = random.Random(seed)
        puzzles = [sudoku.generate(args.givens, rng)[0] for _ in range(args.count)]
    solver = HFSolver(args.hf, args.threads) if args.hf else EngineSolver(args.model, args.threads, args.sc_top_k)
    print(f"seed {seed}; model {args.hf or args.model}")
    summary = run_demo(solver, puzzles, seed=seed, steps=args.steps, visual=args.visual, delay=args.delay)
    return 0 if summary["solved"] or args.puzzle is None else 1


def register(subparsers) -> None:
    """Adds the `demo` subcommand to the `diffgemma-cpp` parser."""
    p = subparsers.add_parser("demo", help="watch a tiny DiffusionGemma solve sudokus (bundled model)")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffgemma_cpp.demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
