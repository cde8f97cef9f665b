"""Run by tests/test_vulkan_smoke.py in a child process: one sudoku generation, all layers and the head on the
first Vulkan device ("vulkan"), or on the CPU ("cpu"); prints the committed tokens as JSON. A child, because a
crash inside the Vulkan driver (lavapipe 22.3's heap corruption) must end this process, not the test run.

    python tests/vulkan_smoke_child.py cpu|vulkan|probe
"""
from __future__ import annotations

import json
import random
import sys

import diffgemma_cpp
from diffgemma_cpp import Model, demo, sudoku

STEPS = 6


def main() -> int:
    mode = sys.argv[1]
    vulkan = [g for g in diffgemma_cpp.gpus() if g.startswith("Vulkan")]
    if mode == "probe":  # which Vulkan devices this ggml sees, without running anything on them
        print(json.dumps({"vulkan": vulkan, "system_info": diffgemma_cpp.system_info()}))
        return 0
    placement = dict(n_gpu_layers=-1, devices="Vulkan0") if mode == "vulkan" else {}
    rng = random.Random(7)
    puzzle, _ = sudoku.generate(demo.DEFAULT_GIVENS, rng)
    with Model(demo.DEFAULT_MODEL, n_threads=1, **placement) as m:
        # Six steps: lavapipe runs a pass ~100x slower than the CPU backend; the tokens after six steps already
        # depend on every op (self-conditioning, the device sampler, acceptance and renoising).
        ids = m.generate_ids(sudoku.prompt_ids(puzzle), max_new_tokens=m.canvas_length, steps=STEPS, seed=3,
                             on_step=lambda step, n, canvas: print(f"step {step}/{n}", file=sys.stderr, flush=True))
        logits = m.decoder_logits([(3 + i) % m.n_vocab for i in range(m.canvas_length)])
    print(json.dumps({"ids": ids, "logits": [float(x) for x in logits.ravel()[:4096]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
