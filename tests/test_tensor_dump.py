"""The tensor dump (diffgemma_set_tensor_callback, Model.dump_tensors): the named intermediate tensors of one pass
against HF's modules (forward hooks), layer by layer, which is how a mismatch is bisected without editing code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine_fixtures as fx
from diffgemma_cpp import Model, errors

NAME = "small"
PROMPT_LEN = 11


def _inputs(hf):
    V, C = hf.config.text_config.vocab_size, hf.config.canvas_length
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, V, (1, PROMPT_LEN), generator=g), torch.randint(0, V, (1, C), generator=g)


def _hf_intermediates(hf, prompt, canvas) -> dict:
    """HF's outputs of the modules our names stand for: encoder layer 0, and every decoder layer, layer 0's
    attention (after o_proj), the final norm and the logits of the decoder pass."""
    from transformers.cache_utils import DynamicCache

    got, hooks = {}, []

    def keep(key):
        def hook(_module, _args, out):
            got[key] = (out[0] if isinstance(out, tuple) else out)[0].double().numpy()
        return hook

    hooks.append(hf.model.encoder.language_model.layers[0].register_forward_hook(keep("enc:l_out-0")))
    for il, layer in enumerate(hf.model.decoder.layers):
        hooks.append(layer.register_forward_hook(keep(f"l_out-{il}")))
    hooks.append(hf.model.decoder.layers[0].self_attn.register_forward_hook(keep("attn_out-0")))
    hooks.append(hf.model.decoder.norm.register_forward_hook(keep("result_norm")))
    try:
        with torch.no_grad():
            cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
            hf.model.encoder(input_ids=prompt, past_key_values=cache)
            got["logits"] = hf(decoder_input_ids=canvas, past_key_values=cache).logits[0].numpy()
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.fixture(scope="module")
def dumps():
    hf = fx.hf_model(NAME)
    prompt, canvas = _inputs(hf)
    ref = _hf_intermediates(hf, prompt, canvas)
    with Model(fx.gguf(NAME, "f32"), n_threads=2) as m:
        enc = m.dump_tensors("l_out-0,attn_out-0", prompt=prompt[0].tolist())
        dec = m.dump_tensors("l_out-*,attn_out-0,result_norm,logits", canvas=canvas[0].tolist())
        plain = m.decoder_logits(canvas[0].tolist())
        n_layer = m.n_layer
    return ref, enc, dec, plain, n_layer


def _rel_err(ours, ref) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def test_named_tensors_match_hf_layer_by_layer(dumps):
    ref, enc, dec, _, n_layer = dumps
    assert sorted(dec) == sorted([f"l_out-{il}" for il in range(n_layer)] + ["attn_out-0", "result_norm", "logits"])
    pairs = [("enc:l_out-0", enc["l_out-0"])] + [(k, dec[k]) for k in
                                                 ["attn_out-0"] + [f"l_out-{il}" for il in range(n_layer)] +
                                                 ["result_norm", "logits"]]
    for key, ours in pairs:
        assert ours.shape == ref[key].shape, key
        err = _rel_err(ours, ref[key])
        print(f"{NAME} {key}: max|d| / max|ref| = {err:.2e}")
        assert err <= 1e-4, f"{key}: {err:.2e} against HF"


def test_the_dump_leaves_the_pass_unchanged(dumps):
    _, _, dec, plain, _ = dumps
    assert np.array_equal(dec["logits"], plain)


def test_bad_names_are_clear_errors():
    with Model(fx.gguf(NAME, "f32"), n_threads=2) as m:
        C = m.canvas_length
        with pytest.raises(errors.InvalidArgumentError, match="empty name"):
            m.dump_tensors("l_out-0,,logits", canvas=[1] * C)
        with pytest.raises(errors.InvalidArgumentError, match="exactly one of"):
            m.dump_tensors("logits")
        assert m.dump_tensors("no_such_node", canvas=[1] * C) == {}
        # the dump is off again after each call: passes run as before
        assert m.decoder_logits([1] * C).shape == (C, m.n_vocab)


def test_offloaded_layers_dump_the_same_tensors(dumps, monkeypatch):
    """With every layer and the head on the stand-in GPU (its own backend in the scheduler), the dump copies the
    tensors from the device and gives the CPU's values."""
    ref, _, dec, _, _ = dumps
    hf = fx.hf_model(NAME)
    prompt, canvas = _inputs(hf)
    monkeypatch.setenv("DIFFGEMMA_TEST_GPU_MIB", "4096")
    with Model(fx.gguf(NAME, "f32"), n_threads=2, n_gpu_layers=-1) as m:
        m.encode(prompt[0].tolist())
        gpu = m.dump_tensors("l_out-0,attn_out-0", canvas=canvas[0].tolist())
    for key in ("l_out-0", "attn_out-0"):
        assert _rel_err(gpu[key], dec[key]) <= 1e-5, key


def test_the_dump_and_the_timing_split_share_the_eval_callback(dumps):
    """Both need ggml's one scheduler callback: with the timing split on, the dump still gets its tensors and the
    split still times its parts."""
    from diffgemma_cpp._native import check, ffi, lib

    _, _, dec, _, _ = dumps
    hf = fx.hf_model(NAME)
    prompt, canvas = _inputs(hf)
    with Model(fx.gguf(NAME, "f32"), n_threads=2) as m:
        m.encode(prompt[0].tolist())
        check(lib.diffgemma_timings_enable(m._c, 1))
        got = m.dump_tensors("l_out-0", canvas=canvas[0].tolist())
        m.decoder_logits(canvas[0].tolist())  # the dump is off again, the split still on
        t = ffi.new("diffgemma_timings *")
        check(lib.diffgemma_timings_get(m._c, t))
    assert np.array_equal(got["l_out-0"], dec["l_out-0"])
    assert t.n_split == 2 and t.sc_ms > 0 and t.backbone_ms > 0 and t.head_ms > 0
