"""Rules of the C sources that a reviewer would otherwise have to check by eye.

csrc/ is layered (ARCHITECTURE.md): each folder is a layer, and a file includes only headers of its own layer or of
lower ones. LAYER_ORDER is the one machine-readable statement of that order; include loops between modules (a
header and its .cpp are one module) are refused too. And one file reads the environment."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"

# Lowest first. `include/` (the public header) sits below all of them.
LAYER_ORDER = ["include", "core", "tokenizer", "image", "devices", "loader", "kernels", "graph", "offload", "runtime"]
SOURCE_SUFFIXES = {".h", ".cpp", ".c", ".cu", ".def"}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _sources():
    return sorted(p for p in CSRC.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def _layer(path: Path) -> str:
    return path.relative_to(CSRC).parts[0]


def _resolve(name: str) -> Path | None:
    """Our header an include names (qualified from csrc/, or the public header), or None (ggml's, the system's)."""
    for candidate in (CSRC / name, CSRC / "include" / name):
        if candidate.is_file():
            return candidate
    return None


def _ours_by_name() -> set[str]:
    return {p.name for p in CSRC.rglob("*") if p.is_file()}


def _includes(path: Path):
    for name in _INCLUDE.findall(path.read_text(encoding="utf-8")):
        target = _resolve(name)
        if target is not None:
            yield name, target


def test_every_include_of_ours_resolves_from_csrc():
    # "graph/graph.h", not "graph.h" or "cuda/x.h": the folder in the include is what the layer rule reads.
    ours = _ours_by_name()
    wrong = [f"{p.relative_to(CSRC)}: {name}" for p in _sources()
             for name in _INCLUDE.findall(p.read_text(encoding="utf-8"))
             if _resolve(name) is None and Path(name).name in ours]
    assert not wrong, "\n".join(wrong)


def test_every_file_lives_in_a_layer_folder():
    loose = [p.name for p in CSRC.iterdir() if p.is_file()]
    assert not loose, f"csrc/ keeps files only in layer folders: {loose}"
    folders = sorted(p.name for p in CSRC.iterdir() if p.is_dir())
    assert folders == sorted(LAYER_ORDER), f"layer folders {folders} != the declared order {LAYER_ORDER}"


def test_includes_go_to_the_same_layer_or_lower():
    rank = {layer: i for i, layer in enumerate(LAYER_ORDER)}
    upward = []
    for path in _sources():
        for name, target in _includes(path):
            if rank[_layer(target)] > rank[_layer(path)]:
                upward.append(f"{path.relative_to(CSRC)} includes {name} ({_layer(target)} is above {_layer(path)})")
    assert not upward, "\n".join(upward)


def test_no_include_loops_between_modules():
    def module(path: Path) -> str:
        return str(path.relative_to(CSRC).with_suffix(""))

    edges: dict[str, set[str]] = {}
    for path in _sources():
        for _, target in _includes(path):
            if module(target) != module(path):
                edges.setdefault(module(path), set()).add(module(target))
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state:
                loop = visit(nxt, trail + [node])
                if loop:
                    return loop
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            loop = visit(node, [])
            assert loop is None, "include loop: " + " -> ".join(loop[loop.index(loop[-1]):])


def test_only_the_kernel_config_reads_the_environment():
    """The kernel A/B switches and the test hooks are read in one place (csrc/core/kernel_config.cpp) when a context is
    made; a getenv anywhere else would be a switch that kernels re-read on every call, or a hidden input."""
    readers = sorted(str(p.relative_to(CSRC)) for p in CSRC.rglob("*")
                     if p.suffix in (".c", ".cc", ".cpp", ".cu", ".cuh", ".h") and re.search(r"\bgetenv\s*\(", p.read_text()))
    assert readers == ["core/kernel_config.cpp"]
