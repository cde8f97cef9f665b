"""Sudoku puzzles for the demo model: a seeded generator, a solver and a validity checker.

A grid is a string of 81 characters, row by row; ``"1"``..``"9"`` are digits and ``"."`` is a blank.
Difficulty is the number of givens: fewer givens means a harder puzzle. Every generated puzzle has
exactly one solution, checked with a bitmask backtracking solver.

Generation is fast because uniqueness is checked once per candidate blank set, not once per removed
cell: most random blank sets at the givens counts we use are already unique, and a failure only costs
a retry. Validity-preserving symmetries (digit relabelling, row/column swaps inside a band or stack,
band/stack swaps, transposition) turn one solved grid into many without re-solving anything.
"""

from __future__ import annotations

import random
from typing import Iterator

BLANK = "."
DIGITS = "123456789"
N_CELLS = 81

_ALL = 0x1FF  # nine candidate bits, bit d-1 for digit d

# Peers of each cell: the 20 other cells in its row, column and box. UNITS: the 27 rows, columns and boxes.
_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
UNITS = (
    [[r * 9 + c for c in range(9)] for r in range(9)]
    + [[r * 9 + c for r in range(9)] for c in range(9)]
    + [[(b // 3) * 27 + (b % 3) * 3 + (k // 3) * 9 + k % 3 for k in range(9)] for b in range(9)]
)


def _grid_to_values(grid: str) -> list[int]:
    if not isinstance(grid, str) or len(grid) != N_CELLS:
        raise ValueError(f"a sudoku grid is a string of 81 cells, got {len(grid) if isinstance(grid, str) else type(grid).__name__}")
    values = []
    for ch in grid:
        if ch in DIGITS:
            values.append(int(ch))
        elif ch in (BLANK, "0"):
            values.append(0)
        else:
            raise ValueError(f"invalid sudoku cell {ch!r}: use digits 1-9 and '.' or '0' for blanks")
    return values


def normalize(grid: str) -> str:
    """Returns ``grid`` with whitespace and '|', '-', '+' layout removed and '0' blanks written as '.'."""
    cleaned = "".join(ch for ch in grid if ch not in " \t\r\n|-+")
    values = _grid_to_values(cleaned)
    return "".join(str(v) if v else BLANK for v in values)


def count_solutions(grid: str, limit: int = 2) -> int:
    """Number of solutions of ``grid``, counting stops at ``limit``."""
    values = _grid_to_values(grid)
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(values):
        if v:
            bit = 1 << (v - 1)
            if (rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & bit:
                return 0  # givens already clash
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    empty = [i for i, v in enumerate(values) if not v]
    found = 0

    def search() -> None:
        nonlocal found
        # Most-constrained cell first keeps the search tiny for puzzles with many givens.
        best, best_free, best_count = -1, 0, 10
        for i in empty:
            if values[i]:
                continue
            free = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = bin(free).count("1")
            if n < best_count:
                best, best_free, best_count = i, free, n
                if n <= 1:
                    break
        if best < 0:
            found += 1
            return
        r, c, b = _ROW[best], _COL[best], _BOX[best]
        while best_free and found < limit:
            bit = best_free & -best_free
            best_free ^= bit
            values[best] = bit.bit_length()
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            search()
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        values[best] = 0

    search()
    return found


def solve(grid: str) -> str | None:
    """The solution of ``grid`` (any one, if there are several), or None when it has none."""
    values = _grid_to_values(grid)
    for i in range(81):
        if values[i]:
            continue
        for d in range(1, 10):
            trial = values[:]
            trial[i] = d
            s = "".join(str(v) if v else BLANK for v in trial)
            if count_solutions(s, 1):
                values = trial
                break
        else:
            return None
    s = "".join(map(str, values))
    return s if is_valid_solution(s) else None


def is_valid_solution(solution: str, puzzle: str | None = None) -> bool:
    """True when ``solution`` is a complete valid grid (and agrees with every given of ``puzzle``)."""
    if not isinstance(solution, str) or len(solution) != N_CELLS or any(ch not in DIGITS for ch in solution):
        return False
    for unit in UNITS:
        if len({solution[i] for i in unit}) != 9:
            return False
    if puzzle is not None:
        puzzle = normalize(puzzle)
        if any(p != BLANK and p != s for p, s in zip(puzzle, solution)):
            return False
    return True


def _random_solved_grid(rng: random.Random) -> str:
    """A uniformly shuffled complete grid, by randomised backtracking."""
    values = [0] * 81
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9

    def fill(i: int) -> bool:
        if i == 81:
            return True
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        digits = list(range(1, 10))
        rng.shuffle(digits)
        for d in digits:
            bit = 1 << (d - 1)
            if (rows[r] | cols[c] | boxes[b]) & bit:
                continue
            values[i] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            if fill(i + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        values[i] = 0
        return False

    fill(0)
    return "".join(map(str, values))


def _shuffle_symmetry(grid: str, rng: random.Random) -> str:
    """Applies a random validity-preserving symmetry of the sudoku board to a complete grid."""
    relabel = list(DIGITS)
    rng.shuffle(relabel)
    bands = rng.sample(range(3), 3)
    stacks = rng.sample(range(3), 3)
    row_order = [b * 3 + r for b in bands for r in rng.sample(range(3), 3)]
    col_order = [s * 3 + c for s in stacks for c in rng.sample(range(3), 3)]
    transpose = rng.random() < 0.5
    out = []
    for r in range(9):
        for c in range(9):
            rr, cc = row_order[r], col_order[c]
            if transpose:
                rr, cc = cc, rr
            out.append(relabel[int(grid[rr * 9 + cc]) - 1])
    return "".join(out)


def generate(givens: int, rng: random.Random) -> tuple[str, str]:
    """One (puzzle, solution) pair with exactly ``givens`` givens and a unique solution."""
    if not 17 <= givens <= 81:
        raise ValueError(f"givens must be in 17..81 (a sudoku needs at least 17 clues to be unique), got {givens}")
    solution = _random_solved_grid(rng)
    while True:
        # Random blank sets with many givens are nearly always unique; reshuffle the grid on a miss so a
        # pathological grid cannot stall us.
        for _ in range(20):
            keep = set(rng.sample(range(81), givens))
            puzzle = "".join(ch if i in keep else BLANK for i, ch in enumerate(solution))
            if count_solutions(puzzle, 2) == 1:
                return puzzle, solution
        if givens < 30:
            return _generate_by_removal(givens, solution, rng)
        solution = _shuffle_symmetry(solution, rng)


def _generate_by_removal(givens: int, solution: str, rng: random.Random) -> tuple[str, str]:
    """Removes cells one by one while the solution stays unique (slower; only for very few givens)."""
    while True:
        cells = list(solution)
        order = list(range(81))
        rng.shuffle(order)
        remaining = 81
        for i in order:
            if remaining == givens:
                break
            saved, cells[i] = cells[i], BLANK
            if count_solutions("".join(cells), 2) == 1:
                remaining -= 1
            else:
                cells[i] = saved
        if remaining == givens:
            return "".join(cells), solution
        solution = _shuffle_symmetry(solution, rng)


def puzzles(givens: int, seed: int) -> Iterator[tuple[str, str]]:
    """An endless reproducible stream of (puzzle, solution) pairs for one seed."""
    rng = random.Random(seed)
    while True:
        yield generate(givens, rng)


def format_grid(grid: str) -> str:
    """A 9x9 board with box separators, for printing."""
    lines = []
    for r in range(9):
        if r and r % 3 == 0:
            lines.append("------+-------+------")
        row = []
        for c in range(9):
            if c and c % 3 == 0:
                row.append("|")
            row.append(grid[r * 9 + c])
        lines.append(" ".join(row))
    return "\n".join(lines)


# ---- token layout of the shipped sudoku model ----
# Gemma special tokens keep their Gemma ids so the converter and the C tokenizer need no special case.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = range(5)
SEPARATOR = "="  # ends the puzzle: the prompt reads "<bos>53..7....=" and the canvas is the solution
# "==" is never used: it exists so the BPE tokenizer has one merge ("=" + "="). GGUF BPE loaders (ours and
# llama.cpp's) require a merges list, and a GGUF array cannot be empty.
UNUSED_MERGE = SEPARATOR + SEPARATOR
VOCAB = SPECIAL_TOKENS + list(DIGITS) + [BLANK, SEPARATOR, UNUSED_MERGE]
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
PROMPT_LENGTH = 1 + N_CELLS + 1


def prompt_ids(puzzle: str) -> list[int]:
    """Token ids of the model prompt for ``puzzle``: bos, 81 cells, separator."""
    return [BOS_ID] + [TOKEN_ID[ch] for ch in normalize(puzzle)] + [TOKEN_ID[SEPARATOR]]


def solution_ids(solution: str) -> list[int]:
    """Token ids of a solved grid: the 81-token canvas the model is trained to produce."""
    return [TOKEN_ID[ch] for ch in solution]


def canvas_to_grid(ids) -> str:
    """Reads a canvas of token ids back as a grid; a non-digit token (or a missing cell) shows as '?'."""
    ids = list(ids)[:N_CELLS]
    cells = [VOCAB[i] if 0 <= i < len(VOCAB) and VOCAB[i] in DIGITS else "?" for i in ids]
    return "".join(cells) + "?" * (N_CELLS - len(cells))
