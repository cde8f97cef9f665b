"""GPU tests: marked `gpu`, they skip unless a CUDA device and nvcc are present (select with `-m gpu`)."""
import sys
from pathlib import Path

# The shared NumPy references live one level up (tests/), which pytest puts on sys.path only for tests there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (and nvcc); skipped cleanly without one")
