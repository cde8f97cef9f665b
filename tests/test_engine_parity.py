"""The engine against HF transformers 5.23.0: decoder logits per quant type, and generation replayed token
for token with HF's own random draws."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

import engine_fixtures as fx
from kernel_tier import kernel_tier
from diffgemma_cpp import Model

CONFIGS = ["small", "gqa4", "wide"]
PROMPT_LEN = 21  # longer than every config's sliding window (8, 6, 16)


def _hf_decoder_pair(name: str, weights_as: str | None = None):
    """HF logits for (prompt; canvas c1 without and with SC) and (after re-encoding c1 as block 2; canvas c2)."""
    hf = fx.hf_model(name, weights_as=weights_as)
    V, C = hf.config.text_config.vocab_size, hf.config.canvas_length
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=g)
    c1 = torch.randint(0, V, (1, C), generator=g)
    c2 = torch.randint(0, V, (1, C), generator=g)
    sc = torch.randn(1, C, V, generator=g, dtype=torch.float64) * 3
    ref = _hf_decoder_cases(hf, prompt, c1, c2, sc)
    return prompt[0].tolist(), c1[0].tolist(), c2[0].tolist(), sc[0].numpy().astype(np.float32), ref


def _hf_decoder_cases(hf, prompt, c1, c2, sc) -> dict:
    from transformers.cache_utils import DynamicCache

    P, C = prompt.shape[1], c1.shape[1]
    with torch.no_grad():
        cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
        hf.model.encoder(input_ids=prompt, past_key_values=cache)
        ref = {"plain": hf(decoder_input_ids=c1, past_key_values=cache).logits[0].numpy(),
               "sc": hf(decoder_input_ids=c1, past_key_values=cache, self_conditioning_logits=sc).logits[0].numpy()}
        hf.model.encoder(input_ids=c1, past_key_values=cache, position_ids=torch.arange(P, P + C)[None])
        ref["block2"] = hf(decoder_input_ids=c2, past_key_values=cache).logits[0].numpy()
    return ref


def _ours(path, prompt, c1, c2, sc, **model_kwargs):
    with Model(path, n_threads=2, **model_kwargs) as m:
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


# Quantized files, two questions kept apart.
# 1. Does the engine compute faithfully with the weights a file holds? Judged against HF float64 running those
#    same weights (the file's tensors dequantized), on `wide` (rows of 256: every K-quant applies), whose
#    harsh conditioning magnifies any kernel error. Measured (n_threads=2, AVX-512 GEMM): NMSE <= 4.4e-10
#    without SC; with SC 1e-11 (f16), 5e-11 (bf16), 3.5e-6 (q8_0), 6.9e-6 (q4_k_m), because the SC product
#    reads an f16 transposed copy of the embedding (weights.cpp, half the memory of f32), which rounds a
#    quantized embedding's values once more (f16 and bf16 values pass through f16 unchanged). Casting the SC
#    probabilities to f16 as well, as the engine once did, measured 8.7e-7 (f16) and 3.9e-5 (q8_0) with SC.
#    Without the GEMM, ggml's mul_mat rounds the activations to the weight's
#    dot-product type (bf16, 8-bit blocks): on `wide` alone that is NMSE ~1e-1 (test_bench compares the two).
# 2. How far is a quantized file from the unquantized model (the issue's NMSE bounds)? That is the rounding of
#    the weights times how strongly the model amplifies it (tests/perturbation_gain.py: logit NMSE per unit
#    weight NMSE): wide ~840, wide:calm (tiny_hf's trained-like random init) ~15, the trained sudoku model 5.2
#    (0.6 before its self-correction stage).
#    So the bounds are judged on the trained model and on tiny_hf's "trained_like" init (below). On `wide` the
#    file's NMSE against the original is HF's own
#    response to the rounded weights (HF on the dequantized weights is as far off): bf16 5e-3..3e-2, q8_0
#    0.2-0.3, q4_k_m 0.5-0.9, printed by test 1; only F16 meets its bound there and is tested on it. On
#    wide:calm (seeds 0-3, not asserted): f16 <= 4e-6, bf16 <= 9e-5, q8_0 <= 1.9e-3 (one seed of 4 over
#    1e-3), q4_k_m 8e-3..4.5e-2 (with SC logits from the model itself up to 1.3e-1, block 2 up to 2.0e-1):
#    its attention (diffuse, where softmax is most sensitive) and its full-size updates to the stream amplify
#    (perturbation_gain.py --components); "trained_like" fixes those and meets every bound on every seed.
DEQUANT_BOUND = {"plain": 1e-8, "sc": 1e-8, "block2": 1e-8}
DEQUANT_SC_BOUND_ROUNDED_EMBD = 3e-5  # the SC case where the f16 copy rounds the embedding (q8_0, q4_k_m)


def _gemm_active() -> bool:
    return kernel_tier() == "avx512"


def _exact_kernels_for(outtype: str) -> bool:
    """Our f32-activation GEMM multiplies this type (else ggml's kernels round the activations)."""
    return kernel_tier() == "avx512" or (kernel_tier() == "avx2" and outtype in ("f16", "bf16"))


# Every weight type the issue lists runs (Q4_K and Q5_0/Q6_K/Q8_0 inside q4_k_m and q5_k_m files).
ALL_OUTTYPES = ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "mxfp4"]


@pytest.mark.parametrize("outtype", ALL_OUTTYPES)
def test_quantized_engine_matches_hf_on_dequantized_weights(outtype, monkeypatch):
    if not _exact_kernels_for(outtype):
        pytest.skip(f"{outtype}: ggml's kernels round the activations on this CPU tier ({kernel_tier()})")
    name = "wide"
    prompt, c1, c2, sc, ref = _hf_decoder_pair(name, weights_as=outtype)
    *_, original = _hf_decoder_pair(name)
    # The bf16 path (csrc/kernels/gemm_bf16.h) rounds the activations of quantized products on purpose; with it off,
    # this checks the graph and the dequantizing GEMM exactly. The bf16 kernels are checked against NumPy in
    # test_gemm.py, their effect on the logits by the trained-model bounds below.
    monkeypatch.setenv("DIFFGEMMA_NO_BF16", "1")
    ours = _ours(fx.gguf(name, outtype), prompt, c1, c2, sc)
    for case, bound in DEQUANT_BOUND.items():
        if case == "sc" and outtype not in ("f16", "bf16"):
            bound = DEQUANT_SC_BOUND_ROUNDED_EMBD
        err = nmse(ours[case], ref[case])
        print(f"{name} {outtype} {case}: NMSE vs HF on the dequantized weights {err:.2e}; "
              f"vs the original weights {nmse(ours[case], original[case]):.2e}")
        assert err <= bound, f"{outtype} {case}: NMSE {err} > {bound} against HF on the same weights"


DEFAULT_PATH_BOUND = 1e-4  # bf16-rounded activations of quantized products, on a trained-like model


@pytest.mark.parametrize("outtype", ALL_OUTTYPES)
def test_every_weight_type_on_the_default_path_matches_hf_on_its_weights(outtype):
    """The default kernels (bf16 dot products for quantized weights where the CPU has them) on every type,
    against HF float64 on the same dequantized weights, on a model that does not amplify rounding 1000x."""
    if not _exact_kernels_for(outtype):
        pytest.skip(f"{outtype}: bound set for our kernels; ggml's round activations to 8 bits ({kernel_tier()})")
    name = "wide:trained@0"
    prompt, c1, c2, sc, ref = _hf_decoder_pair(name, weights_as=outtype)
    ours = _ours(fx.gguf(name, outtype), prompt, c1, c2, sc)
    for case in ("plain", "sc", "block2"):
        err = nmse(ours[case], ref[case])
        print(f"{name} {outtype} {case}: NMSE vs HF on the dequantized weights {err:.2e} (default path)")
        assert err <= DEFAULT_PATH_BOUND, f"{outtype} {case}: NMSE {err} > {DEFAULT_PATH_BOUND}"


def test_f16_decoder_logits_nmse():
    prompt, c1, c2, sc, ref = _hf_decoder_pair("wide")
    ours = _ours(fx.gguf("wide", "f16"), prompt, c1, c2, sc)
    for case in ("plain", "sc", "block2"):
        err = nmse(ours[case], ref[case])
        print(f"wide f16 {case}: NMSE = {err:.2e}")
        assert err <= 1e-4, f"f16 {case}: NMSE {err} > 1e-4"


# The issue's bounds on the trained model (max |d| for f32, NMSE otherwise). Measured on 8 puzzles, worst of
# each (plain / sc): f32 max|d| 2.7e-5 / 2.0e-5; f16 3.0e-8 / 2.2e-8; bf16 3.7e-5 / 3.3e-5; q8_0 1.2e-4 /
# 4.8e-5; q4_k_m 1.8e-3 / 9.1e-4. After a second block, worst of the same 8: f32 1.3e-4, f16 1.4e-5, but
# bf16 4.0e-3, q8_0 1.8e-3, q4_k_m 2.2e-2: the model was trained on one block only, and on that unseen
# input its expert choices sit within 5e-5 of flipping, so any rounding may flip one (bf16 then lands above
# q8_0 on the same input: a discontinuity, not a smooth error; the engine matches HF on the same dequantized
# weights to 2e-11 there). So a second block is held to the bounds in f32 and f16 only here; the engine's
# own part of block 2 is test 1's, on every type. The sudoku model's "Q4_K_M" is q5_0/q8_0 where its 128-wide
# rows do not fit K-quant blocks (256): the K-quant kernels themselves are test 1's job too. Both layer
# scalars are 1.0 here; the encoder/decoder scalar split is checked by the F32 tests above.
TRAINED_BOUNDS = [("f32", 1e-3), ("f16", 1e-4), ("bf16", 1e-4), ("q8_0", 1e-3), ("q4_k_m", 3e-2)]
TRAINED_BLOCK2_TYPES = ("f32", "f16")


def _task_cases(hf):
    """Prompt (past the sliding window), canvas c1, SC = HF's own logits for c1 at temperature 0.6 (what
    generation feeds back; random SC logits are far outside anything a trained model sees), and a canvas c2
    after re-encoding c1. The sudoku model brings its own task (a puzzle, a half-solved grid); otherwise ids
    are drawn at random."""
    g = torch.Generator().manual_seed(3)
    if hasattr(hf, "task_inputs"):
        (prompt, c1), tokens = hf.task_inputs, (5, 14)  # digit tokens
    else:
        V, C = hf.config.text_config.vocab_size, hf.config.canvas_length
        prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=g)
        c1, tokens = torch.randint(0, V, (1, C), generator=g), (0, V)
    c2 = torch.randint(*tokens, c1.shape, generator=g)
    sc = torch.from_numpy(_hf_decoder_cases(hf, prompt, c1, c2, None)["plain"])[None] / 0.6
    return prompt, c1, c2, sc, _hf_decoder_cases(hf, prompt, c1, c2, sc)


@pytest.mark.parametrize("outtype,bound", TRAINED_BOUNDS)
def test_trained_model_quantized_logits_within_issue_bounds(outtype, bound):
    prompt, c1, c2, sc, ref = _task_cases(fx.sudoku_hf())
    ours = _ours(fx.sudoku_gguf(outtype), prompt[0].tolist(), c1[0].tolist(), c2[0].tolist(),
                 sc[0].numpy().astype(np.float32))
    for case in ("plain", "sc", "block2"):
        err = float(np.max(np.abs(ours[case] - ref[case]))) if outtype == "f32" else nmse(ours[case], ref[case])
        print(f"sudoku {outtype} {case}: {'max|d|' if outtype == 'f32' else 'NMSE'} = {err:.2e}")
        if case != "block2" or outtype in TRAINED_BLOCK2_TYPES:
            assert err <= bound, f"sudoku {outtype} {case}: {err} > {bound}"
    assert np.max(np.abs(ref["sc"] - ref["plain"])) > 0.1, "SC must change the logits, or the SC case proves nothing"


# The issue's bounds on every case (plain, SC, a second block) and type, on tiny_hf's "trained_like" random model
# (wide: rows of 256, so the K-quants apply, unlike the sudoku model's 128) over several seeds, each of which
# must pass. Its conditioning makes it amplify weight rounding about as little as the trained sudoku model does
# (tests/perturbation_gain.py: 0.6-2.6x over seeds 0-7, sudoku 0.58x) while keeping the structure the issue asks
# for (sliding/full layers, GQA on the full layers, top-3 of 8 experts, a prompt past the sliding window,
# distinct encoder/decoder layer scalars, no all-ones norm).
# DG_TRAINED_LIKE_SEEDS=16 for a longer run (seeds 0-15 all pass, measured; see the report in the commit log).
TRAINED_LIKE_SEEDS = range(int(os.environ.get("DG_TRAINED_LIKE_SEEDS", "4")))
ISSUE_BOUNDS = [("f32", 1e-3), ("f16", 1e-4), ("bf16", 1e-4), ("q8_0", 1e-3), ("q4_k_m", 3e-2)]


@functools.lru_cache(maxsize=None)
def _trained_like_cases(seed: int):
    return _task_cases(fx.hf_model(f"wide:trained@{seed}"))


# With none of our kernels (DIFFGEMMA_NO_GEMM=1, or a CPU without AVX2), ggml's CPU kernels round activations to
# the weight's dot-product type: measured there, bf16 seed 3 block2 reaches NMSE 1.24e-4 (bound 1e-4). Our AVX2
# tier multiplies bf16 weights with f32 activations, so the bounds hold from AVX2 up.
OWN_KERNELS = pytest.mark.skipif(kernel_tier() == "none", reason="the bounds are met by our kernels; ggml's "
                                 "activation-rounding bf16 kernel exceeds them slightly")


@OWN_KERNELS
@pytest.mark.parametrize("outtype,bound", ISSUE_BOUNDS)
def test_trained_like_model_quantized_logits_within_issue_bounds(outtype, bound):
    over = []
    for seed in TRAINED_LIKE_SEEDS:
        prompt, c1, c2, sc, ref = _trained_like_cases(seed)
        ours = _ours(fx.gguf(f"wide:trained@{seed}", outtype), prompt[0].tolist(), c1[0].tolist(), c2[0].tolist(),
                     sc[0].numpy().astype(np.float32))
        for case in ("plain", "sc", "block2"):
            err = float(np.max(np.abs(ours[case] - ref[case]))) if outtype == "f32" else nmse(ours[case], ref[case])
            print(f"wide:trained@{seed} {outtype} {case}: {'max|d|' if outtype == 'f32' else 'NMSE'} = {err:.2e}")
            if err > bound:
                over.append(f"seed {seed} {case}: {err:.2e}")
        assert np.max(np.abs(ref["sc"] - ref["plain"])) > 0.1, "SC must change the logits, or the SC case is moot"
    assert not over, f"{outtype}: over the issue's bound {bound}: " + ", ".join(over)


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
