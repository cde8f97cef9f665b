"""Imports the puzzle module from the package: from the installed package, or else from this checkout.

The generator lives in ``diffgemma_cpp.sudoku`` so the installed ``diffgemma-cpp demo`` can use it; the
training scripts here must not depend on the native extension being built, so they load that one file
directly when the package is not importable.
"""

import importlib.util
import pathlib

try:
    from diffgemma_cpp import sudoku  # noqa: F401
except ImportError:  # package not installed (or its native part not built): read the file from the checkout
    _path = pathlib.Path(__file__).resolve().parents[2] / "python" / "diffgemma_cpp" / "sudoku.py"
    _spec = importlib.util.spec_from_file_location("diffgemma_cpp_sudoku", _path)
    sudoku = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sudoku)
