"""examples/sudoku/gguf_to_hf.py: the shipped sudoku GGUF turned back into HF training weights.

The round trip is judged where it matters for continued training: HF's decoder logits of the recovered model
equal our engine's on the GGUF (with and without self-conditioning), and converting the recovered model again
gives the GGUF's tensors bit for bit.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engine_fixtures as fx
from diffgemma_cpp import Model, sudoku

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sudoku"))
from gguf_to_hf import load_from_gguf, read_gguf_tensors  # noqa: E402


@pytest.fixture(scope="module")
def recovered():
    torch.set_num_threads(1)
    return load_from_gguf(fx.SUDOKU_GGUF).eval()


def test_recovered_logits_match_the_engine(recovered):
    rng = random.Random(5)
    puzzle, _ = sudoku.generate(60, rng)
    prompt = sudoku.prompt_ids(puzzle)
    canvas = [rng.randrange(len(sudoku.VOCAB)) for _ in range(sudoku.N_CELLS)]
    with Model(str(fx.SUDOKU_GGUF), n_threads=1) as m:
        m.encode(prompt)
        plain = m.decoder_logits(canvas)
        with_sc = m.decoder_logits(canvas, plain / 0.6)
    with torch.no_grad():
        cache = recovered.model.encoder(input_ids=torch.tensor([prompt])).past_key_values
        ids = torch.tensor([canvas])
        ref_plain = recovered(past_key_values=cache, decoder_input_ids=ids).logits[0].numpy()
        sc = torch.from_numpy(ref_plain / 0.6)[None]
        ref_sc = recovered(past_key_values=cache, decoder_input_ids=ids, self_conditioning_logits=sc).logits[0].numpy()
    assert np.abs(ref_plain).max() > 1.0  # a trained model, not zeros
    assert np.abs(plain - ref_plain).max() <= 1e-3
    assert np.abs(with_sc - ref_sc).max() <= 1e-3


def test_reconverting_gives_the_same_tensors(recovered, tmp_path):
    from diffgemma_cpp.convert.pipeline import convert_checkpoint

    recovered.save_pretrained(tmp_path / "ckpt")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sudoku"))
    from tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "ckpt")
    convert_checkpoint(tmp_path / "ckpt", tmp_path / "again.gguf", "f32", progress=False, quiet=True)
    shipped, again = read_gguf_tensors(fx.SUDOKU_GGUF), read_gguf_tensors(tmp_path / "again.gguf")
    assert shipped.keys() == again.keys()
    for name in shipped:
        assert np.array_equal(shipped[name], again[name]), name


def test_quantized_gguf_is_refused():
    with pytest.raises(ValueError, match="only F32/F16"):
        load_from_gguf(fx.sudoku_gguf("q8_0"))
