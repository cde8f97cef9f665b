"""Watch the canvas denoise in a terminal: committed text stays, the canvas being refined is redrawn in place.

The live region (the canvas preview and a status line) is erased before each redraw by moving the cursor
back to where it started. That needs to know how many terminal rows the region took, so the region is
laid out here with the terminal's own wrapping rules (wide CJK/emoji cells count as two columns).
"""

from __future__ import annotations

import shutil
import sys
import unicodedata
from typing import TextIO

__all__ = ["CanvasView", "sanitize"]

DIM, BOLD, RESET, ERASE_DOWN = "\x1b[2m", "\x1b[1m", "\x1b[0m", "\x1b[J"


def sanitize(text: str) -> str:
    """Make model text safe to draw: control characters (escape codes!) become a visible dot, tabs a space."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append("·")
        else:
            out.append(ch)
    return "".join(out)


def _cell_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def advance(col: int, text: str, width: int) -> tuple[int, int]:
    """Where the cursor ends after writing ``text`` from column ``col``: (rows moved down, column)."""
    rows = 0
    for ch in text:
        if ch == "\n":
            rows, col = rows + 1, 0
            continue
        w = _cell_width(ch)
        if col + w > width:
            rows, col = rows + 1, 0
        col += w
    return rows, col


class CanvasView:
    """``commit(text)`` prints committed text for good; ``step(step, total, canvas_text)`` redraws the preview."""

    def __init__(self, out: TextIO | None = None, width: int | None = None, label: str = "canvas") -> None:
        self.out = out or sys.stdout
        self.width = max(4, width or shutil.get_terminal_size((80, 24)).columns)
        self.label = label
        self.col = 0            # cursor column after the committed text
        self.live_rows = None   # rows the live region spans below its start; None when nothing is drawn
        self.canvas_index = 1
        self.last_cell = ""     # the last committed cell (a character plus its combining marks)

    def _erase_live(self) -> str:
        if self.live_rows is None:
            return ""
        self.live_rows, rows = None, self.live_rows
        up = f"\x1b[{rows}A" if rows else ""
        if self.col >= self.width:
            # The committed text filled its row, leaving the terminal in "pending wrap" (the next character,
            # or a newline, goes to the next row). Moving the cursor loses that state, so erase and rewrite
            # the row's last cell to get it back exactly.
            cells = sum(_cell_width(ch) for ch in self.last_cell)
            return f"{up}\r\x1b[{self.width - cells}C{ERASE_DOWN}{self.last_cell}"
        right = f"\x1b[{self.col}C" if self.col else ""
        return f"{up}\r{right}{ERASE_DOWN}"

    def step(self, step: int, total: int, canvas_text: str) -> None:
        preview = sanitize(canvas_text)
        status = f"\n[{self.label} {self.canvas_index} · step {step}/{total}]"
        erase = self._erase_live()
        rows, _ = advance(self.col, preview + status, self.width)
        self.out.write(erase + DIM + preview + RESET + BOLD + status + RESET)
        self.out.flush()
        self.live_rows = rows

    def commit(self, text: str) -> None:
        text = sanitize(text)
        erase = self._erase_live()
        self.out.write(erase + text)
        self.out.flush()
        _, col = advance(self.col, text, self.width)
        self.col = col  # == width: the row is full and the terminal is in pending wrap
        for ch in text:
            if ch == "\n":
                self.last_cell = ""
            elif _cell_width(ch):
                self.last_cell = ch
            else:
                self.last_cell += ch  # a combining mark belongs to the cell before it
        self.canvas_index += 1

    def close(self) -> None:
        """Erase any leftover preview (e.g. after a cancel) and end the line."""
        self.out.write(self._erase_live() + "\n")
        self.out.flush()
