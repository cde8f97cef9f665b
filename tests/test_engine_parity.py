"""The engine against HF transformers 5.23.0: decoder logits per quant type, and generation replayed token
for token with HF's own random draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine_fixtures as fx
from diffgemma_cpp import Model

CONFIGS = ["small", "gqa4", "wide"]
PROMPT_LEN = 21  # longer than every config's sliding window (8, 6, 16)


def _hf_decoder_pair(name: str, weights_as: str | None = None):
    """HF logits for (prompt; canvas c1 without and with SC) and (after re-encoding c1 as block 2; canvas c2)."""
    from transformers.cache_utils import DynamicCache

    hf = fx.hf_model(name, weights_as=weights_as)
    V, C = hf.config.text_config.vocab_size, hf.config.canvas_length
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=g)
    c1 = torch.randint(0, V, (1, C), generator=g)
    c2 = torch.randint(0, V, (1, C), generator=g)
    sc = torch.randn(1, C, V, generator=g, dtype=torch.float64) * 3
    with torch.no_grad():
        cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
        hf.model.encoder(input_ids=prompt, past_key_values=cache)
        ref = {"plain": hf(decoder_input_ids=c1, past_key_values=cache).logits[0].numpy(),
               "sc": hf(decoder_input_ids=c1, past_key_values=cache, self_conditioning_logits=sc).logits[0].numpy()}
        hf.model.encoder(input_ids=c1, past_key_values=cache, position_ids=torch.arange(PROMPT_LEN, PROMPT_LEN + C)[None])
        ref["block2"] = hf(decoder_input_ids=c2, past_key_values=cache).logits[0].numpy()
    return prompt[0].tolist(), c1[0].tolist(), c2[0].tolist(), sc[0].numpy().astype(np.float32), ref


def _ours(path, prompt, c1, c2, sc):
    with Model(path, n_threads=2) as m:
        m.encode(prompt)
        out = {"plain": m.decoder_logits(c1), "sc": m.decoder_logits(c1, sc)}
        assert m.n_past == len(prompt), "the decoder must not write the cache"
        m.encode(c1)
        out["block2"] = m.decoder_logits(c2)
    return out


def nmse(a, b) -> float:
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


@pytest.mark.parametrize("name", CONFIGS)
def test_f32_decoder_logits_match_hf(name):
    prompt, c1, c2, sc, ref = _hf_decoder_pair(name)
    ours = _ours(fx.gguf(name, "f32"), prompt, c1, c2, sc)
    for case in ("plain", "sc", "block2"):
        err = float(np.max(np.abs(ours[case] - ref[case])))
        print(f"{name} f32 {case}: max|d| = {err:.2e}")
        assert err <= 1e-3, f"{name} {case}: max |logit diff| {err} > 1e-3"
    # The self-conditioning input must matter, or the SC comparison above proves nothing.
    assert np.max(np.abs(ref["sc"] - ref["plain"])) > 1.0


# Quantized files: normalised MSE of the logits against HF float64 on the source checkpoint, so each type's
# own rounding (and ggml's rounding of activations to the weight's dot-product type) is part of the error.
# BF16, Q8_0 and Q4_K_M are above the bounds on these harshly conditioned models (measured NMSE 5e-3, 6e-2,
# 0.58): almost all of it comes from the attention projections, where ggml's rounding of the activations to
# the weight's dot-product type (bf16, int8 blocks) meets Gemma-4's unscaled q.k (q8_0 on attn_* alone, all
# else f32: NMSE 0.24; on the experts alone: 2.6e-3). Open in issue 4 until judged on a realistically
# conditioned model or fixed; strict, so a fix shows up as an XPASS.
_OPEN = "known gap: quantized attention on harshly conditioned random models (see comment above)"
QUANT_BOUNDS = [("f16", 1e-4, None),
                pytest.param("bf16", 1e-4, None, marks=pytest.mark.xfail(strict=True, reason=_OPEN)),
                pytest.param("q8_0", 1e-3, None, marks=pytest.mark.xfail(strict=True, reason=_OPEN)),
                pytest.param("q4_k_m", 3e-2, None, marks=pytest.mark.xfail(strict=True, reason=_OPEN))]


@pytest.mark.parametrize("outtype,bound,weights_as", QUANT_BOUNDS)
def test_quantized_decoder_logits_nmse(outtype, bound, weights_as):
    name = "wide"  # rows of 256: every K-quant applies
    prompt, c1, c2, sc, ref = _hf_decoder_pair(name, weights_as)
    ours = _ours(fx.gguf(name, outtype), prompt, c1, c2, sc)
    for case in ("plain", "sc", "block2"):
        err = nmse(ours[case], ref[case])
        print(f"{name} {outtype} {case}: NMSE = {err:.2e}")
        assert err <= bound, f"{outtype} {case}: NMSE {err} > {bound}"


SAMPLER_SETTINGS = [  # (entropy_bound, stability_threshold, confidence_threshold, max steps)
    (6.0, 1, 2.5, 6),      # large bound: many positions accepted per step
    (0.5, 0, 100.0, 6),    # stability 0: every block stops after its first step
    (0.1, 2, 100.0, 6),    # release bound; would stop once the argmax is stable for 2 steps
]
# Random weights never settle (the argmax keeps moving, even at low temperature), so early stops after
# several steps are exercised by the trained Sudoku model, not here.


@pytest.mark.parametrize("setting", SAMPLER_SETTINGS)
def test_generate_replay_matches_hf_token_for_token(setting):
    from transformers import DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig

    name = "small:replay"
    eb, stab, conf, n_steps = setting
    hf = fx.hf_model(name)
    C = hf.config.canvas_length
    t_min, t_max = 0.4, 0.8
    identical, with_eos, multi_block, early = 0, 0, 0, 0
    # The second context encodes in chunks of 5, so its sliding layers are a ring of 7 + 12 slots that the
    # prompt and committed canvases (up to 64 positions) wrap several times.
    with Model(fx.gguf(name, "f32"), n_threads=2) as m, Model(fx.gguf(name, "f32"), n_threads=2, n_batch=5) as m_ring:
        assert m_ring.kv_cache_bytes < m.kv_cache_bytes
        eos = m.eos_ids
        gc = DiffusionGemmaGenerationConfig(max_new_tokens=3 * C, max_denoising_steps=n_steps, t_min=t_min, t_max=t_max,
                                            sampler_config=EntropyBoundSamplerConfig(entropy_bound=eb),
                                            stability_threshold=stab, confidence_threshold=conf,
                                            eos_token_id=eos, pad_token_id=0)
        seeds = range(20)
        for seed in seeds:
            prompt = torch.randint(0, m.n_vocab, (1, 9 + seed), generator=torch.Generator().manual_seed(100 + seed))
            torch.manual_seed(seed)
            with fx.DrawRecorder(C) as rec, torch.no_grad():
                ref = hf.generate(prompt, generation_config=gc).sequences[0].tolist()
            replay = rec.replay()
            for ctx in (m, m_ring):
                ours = ctx.generate_ids(prompt[0].tolist(), max_new_tokens=3 * C, steps=n_steps, t_min=t_min,
                                        t_max=t_max, entropy_bound=eb, stability_threshold=stab,
                                        confidence_threshold=conf, replay=replay)
                identical += ours == ref
            new = ref[prompt.shape[1]:]
            with_eos += any(t in eos for t in new)
            multi_block += len(new) > C
            early += any(len(s) < n_steps for s in replay["sampled"])
    print(f"setting {setting}: identical {identical}/{2 * len(seeds)} (whole cache and ring); runs with EOS {with_eos}, several blocks "
          f"{multi_block}, early stops {early}")
    assert identical == 2 * len(seeds)
    assert multi_block > 0
