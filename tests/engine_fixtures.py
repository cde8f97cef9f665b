"""Shared fixtures of the engine tests: tiny HF checkpoints converted by our converter, and HF's draws.

Everything is built under a per-session temp directory and cached by (config, outtype).
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

import tiny_hf
from diffgemma_cpp.convert.pipeline import convert_checkpoint

_ROOT = Path(tempfile.mkdtemp(prefix="dg-engine-"))


# Weight matrices with std 0.3 (tiny_hf's default) make a chaotic network: a 1e-5 change of the
# self-conditioning input grows to whole-logit changes within three denoising steps, for HF float32 against
# HF float64 as much as for us. Token-for-token replay of several steps therefore uses a calmer "<name>:calm"
# variant (std 0.08), whose dynamics are as well-conditioned as a trained model's.
CALM_WEIGHT_SCALE = 0.08


@functools.lru_cache(maxsize=None)
def checkpoint(name: str) -> Path:
    base, _, variant = name.partition(":")
    scale = CALM_WEIGHT_SCALE if variant == "calm" else 0.3
    return tiny_hf.save_checkpoint(base, _ROOT / name.replace(":", "-"), weight_scale=scale)


@functools.lru_cache(maxsize=None)
def gguf(name: str, outtype: str = "f32") -> Path:
    out = _ROOT / f"{name.replace(':', '-')}-{outtype}.gguf"
    convert_checkpoint(checkpoint(name), out, outtype, progress=False, quiet=True)
    return out


@functools.lru_cache(maxsize=None)
def hf_model(name: str, dtype=torch.float64, weights_as: str | None = None):
    """HF's model in float64: the oracle. (HF float32 itself is ~1e-3 away from float64 on these models.)

    weights_as="bf16": round the weight matrices through bfloat16 first (the converter keeps norms, scalars
    and the router in f32), i.e. the weights a BF16 GGUF holds, so a BF16 file is judged on how faithfully
    the engine computes with them rather than on the rounding itself."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.set_num_threads(1)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(checkpoint(name), dtype=dtype).eval()
    for cfg in (model.config, model.config.text_config):
        cfg._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    if weights_as == "bf16":
        with torch.no_grad():
            for pname, p in model.model.decoder.named_parameters():
                if p.ndim >= 2 and "router" not in pname:
                    p.copy_(p.to(torch.bfloat16).to(dtype))
    return model


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
