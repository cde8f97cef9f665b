"""Rules of the C sources that a reviewer would otherwise have to check by eye."""
import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_only_the_kernel_config_reads_the_environment():
    """The kernel A/B switches and the test hooks are read in one place (csrc/kernel_config.cpp) when a context is
    made; a getenv anywhere else would be a switch that kernels re-read on every call, or a hidden input."""
    readers = sorted(str(p.relative_to(CSRC)) for p in CSRC.rglob("*")
                     if p.suffix in (".c", ".cc", ".cpp", ".cu", ".cuh", ".h") and re.search(r"\bgetenv\s*\(", p.read_text()))
    assert readers == ["kernel_config.cpp"]
