"""`diffgemma-cpp demo`: a small DiffusionGemma-architecture model solves sudokus, on our engine.

The package ships ``models/sudoku.gguf``, a 6-layer DiffusionGemma (sliding + full attention, top-2 MoE,
self-conditioning) trained from scratch by ``examples/sudoku/train.py``. The prompt is the puzzle
(81 cells, '.' for blanks); the 81-token canvas is denoised into the solution, starting from uniform
random tokens, with the checkpoint's own entropy-bound sampler.

    diffgemma-cpp demo                      # 5 fresh puzzles, the first one step by step, solve rate at the end
    diffgemma-cpp demo --visual             # every puzzle step by step
    diffgemma-cpp demo --plain -n 200       # results only (a solve-rate measurement)
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
# Difficulty (number of givens) the shipped model was measured at: 79.5 % of 200 fresh puzzles solved by our
# engine, 77.5 % by HF generate (58 % / 59 % at 60 givens; examples/sudoku/README.md).
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


def conflicts(grid: str) -> set:
    """Cells whose digit repeats in their row, column or box (the visible mistakes of a canvas)."""
    bad = set()
    for unit in sudoku.UNITS:
        seen: dict = {}
        for i in unit:
            if grid[i] in sudoku.DIGITS:
                seen.setdefault(grid[i], []).append(i)
        for cells in seen.values():
            if len(cells) > 1:
                bad.update(cells)
    return bad


class BoardPainter:
    """Shows the canvas after every denoising step: in place with colours on a terminal, as plain text otherwise.

    Between steps the sampler keeps the positions it is sure of and re-noises the others with random tokens;
    the model then predicts every cell again. A cell whose prediction changed since the previous step was
    corrected (marked ``*`` in plain text, highlighted on a terminal); digits that clash with a row, column or
    box peer are the mistakes still on the canvas (red on a terminal, counted in the step line)."""

    def __init__(self, puzzle: str, stream, delay: float):
        self.puzzle = puzzle
        self.stream = stream
        self.tty = stream.isatty()
        self.delay = delay if self.tty else 0.0  # pauses are for watching, not for logs
        self.drawn_lines = 0
        self.previous: str | None = None
        self.changes = 0  # cell corrections over the whole canvas

    def _cell(self, i: int, ch: str, changed: bool, clash: bool) -> str:
        if not self.tty:
            return ("*" if changed else " ") + ch
        if self.puzzle[i] != sudoku.BLANK:
            style = "1"  # given: bold
        elif clash:
            style = "1;31"  # clashes with a peer: red
        elif changed:
            style = "1;30;43"  # corrected at this step: highlighted
        else:
            style = "36"  # denoised blank
        return " " + f"\x1b[{style}m{ch}\x1b[0m"

    def _board(self, grid: str, changed: set, clash: set) -> str:
        lines = []
        for r in range(9):
            if r and r % 3 == 0:
                lines.append(" ------+-------+------")
            row = ""
            for c in range(9):
                if c and c % 3 == 0:
                    row += " |"
                i = r * 9 + c
                row += self._cell(i, grid[i], i in changed, i in clash)
            lines.append(row)
        return "\n".join(lines)

    def __call__(self, step: int, total: int, canvas_ids: list) -> None:
        grid = sudoku.canvas_to_grid(canvas_ids)
        changed = set() if self.previous is None else {i for i in range(81) if grid[i] != self.previous[i]}
        clash = conflicts(grid)
        self.previous = grid
        self.changes += len(changed)
        what = "first prediction from random tokens" if step == 1 else f"{len(changed)} cells corrected"
        header = f"step {step} (of at most {total}): {what}, {len(clash)} cells clash"
        text = header + "\n" + self._board(grid, changed, clash)
        if self.tty and self.drawn_lines:
            self.stream.write(f"\x1b[{self.drawn_lines}F\x1b[J")  # back to the top of the last drawing
        self.stream.write(text + "\n")
        self.stream.flush()
        self.drawn_lines = text.count("\n") + 1
        if self.delay:
            time.sleep(self.delay)


LEGEND = ("Each step the model predicts all 81 cells; the sampler keeps the cells it is sure of and re-noises "
          "the rest,\nso wrong digits get corrected (* marks a cell that changed since the previous step).")


def _wrong_cells(grid: str, puzzle: str) -> str:
    solution = sudoku.solve(puzzle)
    if solution is None:
        return ""
    wrong = [f"r{i // 9 + 1}c{i % 9 + 1} {grid[i]}->{solution[i]}" for i in range(81) if grid[i] != solution[i]]
    return f"   wrong: {', '.join(wrong)}" if wrong else ""


def run_demo(solver, puzzles: list[str], *, seed: int, steps: int | None, visual: bool | str, delay: float,
             out=None) -> dict:
    """Solves ``puzzles`` and prints each; returns the summary numbers. visual: True (every puzzle's steps),
    "first" (the first puzzle's steps) or False (results only)."""
    out = out or sys.stdout  # looked up per call, so a redirected or captured stdout is honoured
    solved, total_steps, total_time = 0, 0, 0.0
    if visual:
        print(LEGEND, file=out)
    for k, puzzle in enumerate(puzzles):
        givens = sum(ch != sudoku.BLANK for ch in puzzle)
        print(f"\npuzzle {k + 1}/{len(puzzles)} ({givens} givens, {81 - givens} blanks)", file=out)
        print(sudoku.format_grid(puzzle), file=out)
        show_steps = visual is True or (visual == "first" and k == 0)
        painter = BoardPainter(puzzle, out, delay) if show_steps else None
        t0 = time.perf_counter()
        canvas, used = solver.solve(puzzle, seed + k, steps, painter)
        elapsed = time.perf_counter() - t0
        grid = sudoku.canvas_to_grid(canvas)
        valid = sudoku.is_valid_solution(grid, puzzle)
        solved += valid
        total_steps += used
        total_time += elapsed
        if painter is None:
            print("solution:" if valid else "model output:", file=out)
            print(sudoku.format_grid(grid), file=out)
        corrections = f"   cells corrected: {painter.changes}" if painter is not None else ""
        print(f"{'solved' if valid else 'NOT solved'} in {used} steps, {elapsed * 1000:.0f} ms{corrections}"
              + ("" if valid else _wrong_cells(grid, puzzle)), file=out)
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
    show = p.add_mutually_exclusive_group()
    show.add_argument("--visual", action="store_true", help="show every puzzle's canvas after every denoising step")
    show.add_argument("--plain", action="store_true",
                      help="results only (by default the first puzzle is shown step by step)")
    p.add_argument("--delay", type=float, default=0.15,
                   help="seconds to pause per shown step on a terminal (never when output is redirected)")
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
    visual = True if args.visual else (False if args.plain else "first")
    summary = run_demo(solver, puzzles, seed=seed, steps=args.steps, visual=visual, delay=args.delay)
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
