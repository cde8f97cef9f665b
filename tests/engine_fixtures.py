"""Shared fixtures of the engine tests: tiny HF checkpoints converted by our converter, and HF's draws.

Everything is built under a per-session temp directory and cached by (config, outtype).
"""
from __future__ import annotations

import atexit
import functools
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import tiny_hf
from diffgemma_cpp.convert.pipeline import convert_checkpoint, requantize_gguf
from diffgemma_cpp.demo import DEFAULT_MODEL as SUDOKU_GGUF

_ROOT = Path(tempfile.mkdtemp(prefix="dg-engine-"))
# Up to 1.5 GB of checkpoints and GGUFs per run: without this every test run left them in the temp folder.
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


# Variants of the tiny configs, "<name>:<variant>". tiny_hf's defaults (matrices with std 0.3, q/k norm
# weights ~1) make a harshly conditioned network: the strictest test of exact F32 arithmetic, but one that
# amplifies rounding far beyond what a trained model does.
# - "replay": matrices with std 0.08 and the self-conditioning MLP's output scaled by 0.1. With random weights
#   the self-conditioning feedback from one denoising step to the next amplifies rounding noise 5-10x per
#   step: HF float32 against HF float64 on the same draws differs by 1e-4 after step 1 and by 0.5 in the
#   logits after step 6 (measured on std-0.08 "small"), so no float32 engine can follow a float64 reference
#   token for token over several steps. Damped, the same comparison stays at ~1e-4 for all six steps, as in a
#   trained model. The exactness of the self-conditioning path itself is tested on the undamped models
#   (test_f32_decoder_logits_match_hf, where SC moves the logits by > 1).
# - "calm": tiny_hf's low-rank init (conditioning="calm"): amplifies rounding 6-15x, measured, not asserted.
# - "trained": tiny_hf's conditioning="trained_like" (calm plus trained-like post-norms, attention and layer
#   scalars): amplifies rounding about as little as the trained sudoku model, so the quantized types are judged
#   against the NMSE bounds on it, over several seeds ("wide:trained@3"), while the default models turn
#   any rounding into a large change (tests/perturbation_gain.py measures all of them).
_VARIANTS = {"": {}, "replay": dict(weight_scale=0.08, self_conditioning_gain=0.1),
             "calm": dict(conditioning="calm"), "trained": dict(conditioning="trained_like")}


@functools.lru_cache(maxsize=None)
def checkpoint(name: str) -> Path:
    """name = "<config>[:<variant>][@<seed>]", e.g. "wide", "wide:calm", "wide:trained@3" (seed 0 by default)."""
    base, _, variant = name.partition(":")
    variant, _, seed = variant.partition("@")
    if "@" in base:
        base, _, seed = base.partition("@")
    return tiny_hf.save_checkpoint(base, _ROOT / name.replace(":", "-").replace("@", "-s"), seed=int(seed or 0),
                                   **_VARIANTS[variant])


@functools.lru_cache(maxsize=None)
def gguf(name: str, outtype: str = "f32") -> Path:
    out = _ROOT / f"{name.replace(':', '-').replace('@', '-s')}-{outtype}.gguf"
    convert_checkpoint(checkpoint(name), out, outtype, progress=False, quiet=True)
    return out


@functools.lru_cache(maxsize=None)
def hf_model(name: str, dtype=torch.float64, weights_as: str | None = None):
    """HF's model in float64: the oracle. (HF float32 itself is ~1e-3 away from float64 on these models.)

    weights_as=OUTTYPE ("bf16", "q8_0", "q4_k_m", ...): every weight replaced by the values our GGUF of that
    type holds (gguf-py's dequantization of `gguf(name, OUTTYPE)`), so the engine running that file is judged
    on how faithfully it computes with its weights, with the quantization error itself taken out."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.set_num_threads(1)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(checkpoint(name), dtype=dtype).eval()
    for cfg in (model.config, model.config.text_config):
        cfg._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    if weights_as is not None:
        load_gguf_weights(model, gguf(name, weights_as))
    return model


def load_gguf_weights(model, path: Path) -> None:
    """Overwrite the HF model's text weights with a GGUF's tensors, dequantized. The encoder shares its
    parameters with the decoder (only layer_scalar is its own) and lm_head is tied to the embedding, so
    writing the decoder names (plus the encoder scalars) sets every weight the text model uses."""
    from convert_helpers import dequant, hf_name, read_gguf

    state = model.state_dict()
    _, tensors, _, _ = read_gguf(path)
    with torch.no_grad():
        for gname, rt in tensors.items():
            target = hf_name(gname)
            if target is None:  # rope_freqs: synthesised from the config, not a weight
                continue
            values = torch.from_numpy(dequant(rt).astype(np.float64)).reshape(state[target].shape)
            state[target].copy_(values.to(state[target].dtype))


# The bundled sudoku model: trained (examples/sudoku), so it is conditioned like a real model, unlike the random
# ones above. Its shipped F32 GGUF holds the trained weights exactly; the other types are requantized from it.
@functools.lru_cache(maxsize=None)
def sudoku_gguf(outtype: str = "f32") -> Path:
    if outtype == "f32":
        return SUDOKU_GGUF
    out = _ROOT / f"sudoku-{outtype}.gguf"
    requantize_gguf(SUDOKU_GGUF, out, outtype, progress=False, quiet=True)
    return out


@functools.lru_cache(maxsize=None)
def sudoku_hf(weights_as: str | None = None):
    """The trained sudoku model as HF float64 (the training config, the shipped weights, or with weights_as
    those of `sudoku_gguf(weights_as)`), with `task_inputs` = (a real puzzle prompt, its solution with 17 cells
    re-drawn): the kind of canvas the model sees mid-generation."""
    from transformers import DiffusionGemmaForBlockDiffusion
    from diffgemma_cpp import sudoku

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sudoku"))
    from train import build_config  # the config it was trained with

    torch.set_num_threads(1)
    hf = DiffusionGemmaForBlockDiffusion(build_config()).to(torch.float64).eval()
    for cfg in (hf.config, hf.config.text_config):
        cfg._experts_implementation = "eager"
    load_gguf_weights(hf, sudoku_gguf(weights_as or "f32"))
    rng = random.Random(7)
    puzzle, solution = sudoku.generate(64, rng)
    canvas = sudoku.solution_ids(solution)
    for i in rng.sample(range(sudoku.N_CELLS), 17):
        canvas[i] = sudoku.TOKEN_ID[rng.choice(sudoku.DIGITS)]
    hf.task_inputs = (torch.tensor([sudoku.prompt_ids(puzzle)]), torch.tensor([canvas]))
    return hf


class DrawRecorder:
    """Records HF generate's random draws (torch.randint for canvas init / renoise, torch.multinomial for samples)
    in call order, and splits them per block and step as diffgemma_cpp's replay expects."""

    def __init__(self, canvas_length: int):
        self.C = canvas_length
        self.calls: list[tuple[str, np.ndarray]] = []

    def __enter__(self):
        self._randint, self._multinomial = torch.randint, torch.multinomial

        def randint(*args, **kwargs):
            out = self._randint(*args, **kwargs)
            self.calls.append(("randint", out.detach().reshape(-1).numpy().copy()))
            return out

        def multinomial(*args, **kwargs):
            out = self._multinomial(*args, **kwargs)
            self.calls.append(("multinomial", out.detach().reshape(-1).numpy().copy()))
            return out

        torch.randint, torch.multinomial = randint, multinomial
        return self

    def __exit__(self, *exc):
        torch.randint, torch.multinomial = self._randint, self._multinomial

    def replay(self) -> dict:
        init, sampled, renoise = [], [], []
        previous = None
        for kind, values in self.calls:
            if kind == "multinomial":
                sampled[-1].append(values.tolist())
            elif previous == "multinomial":  # a randint right after a sample is that step's renoise draw
                renoise[-1].append(values.tolist())
            else:  # otherwise it starts a block: the canvas init
                init.append(values.tolist())
                sampled.append([])
                renoise.append([])
            previous = kind
        return {"init": init, "sampled": sampled, "renoise": renoise}
