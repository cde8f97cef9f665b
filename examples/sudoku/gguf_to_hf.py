"""Recovers an HF checkpoint of the sudoku model from its F32/F16 GGUF, so training can continue from it.

The shipped GGUF is the only copy of the first model's weights. The converter's tensor plan
(`diffgemma_cpp.convert.tensors.plan_tensors`, which reads the names table) already pairs every GGUF tensor
with its HF name and shape; this script runs that plan on a freshly initialised checkpoint of the same
config (`train.build_config`) and copies each GGUF tensor back into the HF parameter it came from, so the
name table and the layout rules stay in one place. The encoder shares its weights with the decoder (tied
parameters), except the per-layer scalars, which the GGUF stores twice. Tensors the converter synthesises
(`rope_freqs`) or drops (the vision tower) are checked or left at their fresh values.

Usage:  python gguf_to_hf.py ../../python/diffgemma_cpp/models/sudoku.gguf --out /work/sudoku_ckpt_recovered
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import torch
from gguf import GGUFReader
from transformers import DiffusionGemmaForBlockDiffusion

from diffgemma_cpp.convert.checkpoint import Checkpoint
from diffgemma_cpp.convert.hparams import load_hparams
from diffgemma_cpp.convert.tensors import plan_tensors, rope_freqs
from diffgemma_cpp.names import tensor as tensor_name

from train import VOCAB_SIZE, build_config, build_generation_config

FLOAT_TYPES = {"F32", "F16"}
# Buffers HF computes from the config, not weights (RoPE tables, the embedding multiplier).
NON_WEIGHT_BUFFERS = ("inv_freq", "original_inv_freq", "embed_scale")


def read_gguf_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array in HF (row-major) order; refuses quantized files."""
    reader = GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in FLOAT_TYPES:
            raise ValueError(f"{path}: tensor {t.name} is {kind}; only F32/F16 GGUFs can be turned back into "
                             "training weights")
        out[t.name] = np.asarray(t.data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))
    return out


def load_from_gguf(path: pathlib.Path, max_denoising_steps: int = 32) -> DiffusionGemmaForBlockDiffusion:
    """A DiffusionGemmaForBlockDiffusion holding the GGUF's weights (train.build_config's architecture)."""
    model = DiffusionGemmaForBlockDiffusion(build_config())
    model.generation_config = build_generation_config(max_denoising_steps)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # the plan needs a checkpoint folder: config.json and the tensor names
        hp = load_hparams(tmp)
        with Checkpoint(tmp) as ckpt:
            plan = plan_tensors(hp, ckpt, n_vocab_out=VOCAB_SIZE, log=lambda _msg: None)

    weights = read_gguf_tensors(path)
    expected = {ot.name for ot in plan}
    if set(weights) != expected:
        raise ValueError(f"{path} does not hold the sudoku model's tensors: missing "
                         f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}")
    if not np.array_equal(weights[tensor_name("ROPE_FREQS")], rope_freqs(hp)):
        raise ValueError(f"{path}: rope_freqs differs from this config's; the GGUF is not a sudoku model")

    # layer_scalar is a buffer, not a parameter: both are state the GGUF carries.
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(model.named_buffers(remove_duplicate=False))
    written = set()
    with torch.no_grad():
        for ot in plan:
            if ot.hf_name is None:
                continue  # synthesised by the converter (checked above)
            dest = params[ot.hf_name]
            value = torch.from_numpy(weights[ot.name].copy())
            if tuple(value.shape) != tuple(dest.shape):
                raise ValueError(f"{ot.name}: GGUF shape {tuple(value.shape)} != HF {ot.hf_name} {tuple(dest.shape)}")
            dest.copy_(value)
            written.add(dest.data_ptr())
    # Every text-model parameter must now hold GGUF data (tied ones through the parameter they share).
    stale = [n for n, p in params.items()
             if "vision" not in n and p.data_ptr() not in written and not n.endswith(NON_WEIGHT_BUFFERS)]
    if stale:
        raise ValueError(f"no GGUF tensor fills {stale[:5]}")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", type=pathlib.Path)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    from tokenizer import build_tokenizer

    model = load_from_gguf(args.gguf)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    model.generation_config.save_pretrained(args.out)
    build_tokenizer().save_pretrained(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
