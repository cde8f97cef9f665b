"""A dependency-free mutation fuzzer for the model loader, for machines without clang/libFuzzer.

Not coverage-guided: it mutates the seed GGUFs at random, biased toward the header, key/value and tensor-info
bytes (where the parser's decisions are), and feeds each result to diffgemma_model_load in a child process.
A crash kills only the child; the input it was loading is kept as the crash artifact.

    python tests/fuzz/mutation_fuzz.py SECONDS [WORKDIR]
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = sorted((HERE / "corpus").glob("*.gguf"))
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 16, 31, 32, 63, 64, 127, 128, 255, 256, 4095, 65535, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _struct_end(data: bytes) -> int:
    """Where the tensor data of a seed starts (mutations mostly land before it)."""
    sys.path.insert(0, str(HERE.parent))
    from gguf_mutate import Gguf
    return Gguf.parse(data).data_start


def mutate(rng: random.Random, seeds: list, ends: list) -> bytes:
    i = rng.randrange(len(seeds))
    b = bytearray(seeds[i])
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        region = ends[i] if rng.random() < 0.9 else len(b)
        at = rng.randrange(max(1, min(region, len(b))))
        op = rng.randrange(6)
        if op == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            width = rng.choice((4, 8))
            v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            b[at:at + width] = v.to_bytes(width, "little")
        elif op == 3:
            del b[rng.randrange(len(b) + 1):]
        elif op == 4:
            n = rng.randrange(1, 64)
            del b[at:at + n]
        else:
            other = seeds[rng.randrange(len(seeds))]
            j = rng.randrange(len(other))
            b[at:at] = other[j:j + rng.randrange(1, 64)]
        if not b:
            break
    return bytes(b)


def _child(seconds: float, workdir: Path, seed: int) -> None:
    from diffgemma_cpp._native import ffi, lib

    lib.diffgemma_log_set(ffi.NULL, ffi.NULL)
    seeds = [p.read_bytes() for p in SEEDS]
    ends = [_struct_end(s) for s in seeds]
    rng = random.Random(seed)
    current = workdir / "current.gguf"
    out = ffi.new("diffgemma_model **")
    params = ffi.new("diffgemma_model_params *")
    lib.diffgemma_model_default_params(params)
    params.n_threads = 1
    execs = loaded = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current.write_bytes(mutate(rng, seeds, ends))
        if lib.diffgemma_model_load(str(current).encode(), params, out) == 0:
            loaded += 1
            lib.diffgemma_model_free(out[0])
        execs += 1
    print(json.dumps({"execs": execs, "loaded": loaded}))


def run(seconds: float, workdir, seed: int = 0) -> dict:
    """Fuzz for `seconds` in a child; returns {"execs", "loaded", "seconds"} or {"crash": artifact, ...}."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(seconds), str(workdir), str(seed)], capture_output=True,
                          text=True, errors="replace", timeout=seconds + 120)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        artifact = workdir / f"crash-{seed}.gguf"
        os.replace(workdir / "current.gguf", artifact)
        return {"crash": str(artifact), "returncode": proc.returncode, "stderr": proc.stderr[-3000:], "seconds": elapsed}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), seconds=elapsed)


if __name__ == "__main__":
    if len(sys.argv) >= 4:
        _child(float(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    else:
        print(run(float(sys.argv[1]) if len(sys.argv) > 1 else 60, sys.argv[2] if len(sys.argv) > 2 else "build/mutfuzz"))
