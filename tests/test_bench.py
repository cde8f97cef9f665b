"""The benchmark plumbing: diffgemma_timings, the per-op profile, `diffgemma-cpp bench`, the FLOP counts, and
the f32 GEMM custom op against ggml's own mul_mat (DIFFGEMMA_NO_GEMM=1) on the same model."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import engine_fixtures as fx
from kernel_tier import kernel_tier
from diffgemma_cpp import Model
from diffgemma_cpp._native import ffi, lib
from diffgemma_cpp.bench import _timings
from diffgemma_cpp.bench_flops import encode_flops, read_shape, step_flops
from diffgemma_cpp.cli import main as cli_main
from diffgemma_cpp.errors import InvalidArgumentError


def _denoise_once(m: Model, steps: int = 2):
    m.reset()
    prompt = list(range(10, 40))
    return list(m.generate_blocks(prompt, max_new_tokens=m.canvas_length, steps=steps, seed=1, confidence_threshold=0.0))


def test_timings_count_steps_and_split_the_decoder():
    with Model(fx.gguf("wide", "f32"), n_threads=2) as m:
        assert lib.diffgemma_timings_enable(m._c, 1) == 0
        lib.diffgemma_timings_reset(m._c)
        _denoise_once(m, steps=3)
        t = _timings(m._c)
        assert t["n_steps"] == 3 and t["n_decoder"] == 3 and t["n_split"] == 3
        assert t["n_encode_tokens"] == 30 and t["encode_ms"] > 0
        parts = t["sc_ms"] + t["backbone_ms"] + t["head_ms"]
        assert parts == pytest.approx(t["decoder_compute_ms"], rel=1e-6)
        assert min(t["sc_ms"], t["backbone_ms"], t["head_ms"], t["sampler_ms"], t["readback_ms"]) > 0
        lib.diffgemma_timings_reset(m._c)
        assert _timings(m._c)["n_steps"] == 0


def test_timings_without_split_leave_the_parts_empty_and_bad_mode_is_rejected():
    with Model(fx.gguf("wide", "f32"), n_threads=2) as m:
        _denoise_once(m, steps=1)
        t = _timings(m._c)
        assert t["n_steps"] == 1 and t["n_split"] == 0 and t["backbone_ms"] == 0
        assert lib.diffgemma_timings_enable(m._c, 3) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT
        assert lib.diffgemma_timings_enable(ffi.NULL, 1) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT


def test_op_profile_lists_the_weight_products():
    with Model(fx.gguf("wide", "f32"), n_threads=2) as m:
        assert lib.diffgemma_timings_enable(m._c, 2) == 0
        _denoise_once(m, steps=1)
        n = ffi.new("size_t *")
        assert lib.diffgemma_timings_op_report(m._c, ffi.NULL, 0, n) == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL
        buf = ffi.new("char[]", n[0])
        assert lib.diffgemma_timings_op_report(m._c, buf, n[0], n) == 0
        text = ffi.unpack(buf, n[0]).decode()
        assert "token_embd.weight" in text and "attn_q.weight" in text


@pytest.mark.skipif(kernel_tier() == "none", reason="none of our GEMM tiers runs on this CPU")
def test_f32_gemm_matches_ggml_mul_mat(monkeypatch):
    """The custom GEMM and ggml's mul_mat compute the same products (only the summation order differs)."""
    def logits():
        with Model(fx.gguf("wide", "f32"), n_threads=2) as m:
            m.encode(list(range(10, 40)))
            canvas = list(range(50, 50 + m.canvas_length))
            sc = np.random.default_rng(0).normal(size=(m.canvas_length, m.n_vocab)).astype(np.float32)
            return m.decoder_logits(canvas, sc)

    ours = logits()
    monkeypatch.setenv("DIFFGEMMA_NO_GEMM", "1")  # read when the next context is made (csrc/core/kernel_config.h)
    ref = logits()
    # Equal up to float32 summation order (this random model amplifies rounding; parity with HF is tested
    # elsewhere), and not bit-identical: the custom GEMM really ran.
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.max(np.abs(ref))
    assert np.any(ours != ref)


@pytest.mark.skipif(kernel_tier() == "none", reason="none of our GEMM tiers runs on this CPU")
def test_kernel_switches_are_read_when_the_context_is_made(monkeypatch):
    """A switch flipped after the Model was made changes nothing for it (csrc/core/kernel_config.h); a new Model sees it
    (test_f32_gemm_matches_ggml_mul_mat)."""
    with Model(fx.gguf("wide", "f32"), n_threads=2) as m:
        m.encode(list(range(10, 40)))
        canvas = list(range(50, 50 + m.canvas_length))
        before = m.decoder_logits(canvas)
        monkeypatch.setenv("DIFFGEMMA_NO_GEMM", "1")
        m.reset()
        m.encode(list(range(10, 40)))
        assert np.array_equal(m.decoder_logits(canvas), before)


def test_flop_counts_follow_the_geometry():
    s = read_shape(fx.gguf("wide", "f32"))
    f = step_flops(s, n_past=100)
    assert f["head"] == 2.0 * s.canvas * s.n_embd * s.n_vocab
    assert f["sc"] > f["head"]  # probs @ E plus the self-conditioning MLP
    assert step_flops(s, n_past=200)["backbone"] > f["backbone"]  # more keys to attend to
    assert encode_flops(s, 64) > encode_flops(s, 32) > 0


def test_bench_cli_json(capsys):
    path = fx.gguf("wide", "f32")
    assert cli_main(["bench", "-m", str(path), "-t", "2", "-p", "16", "--steps", "2", "-r", "2", "-o", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    s = res["summary"]
    assert res["repetitions"] == 2 and len(res["runs"]) == 2
    assert s["steps_per_block"]["median"] == 2
    for key in ("encode_tok_s", "step_ms", "sc_ms", "backbone_ms", "head_ms", "sampler_ms", "effective_tok_s"):
        assert s[key]["min"] <= s[key]["median"] <= s[key]["max"] and s[key]["median"] > 0
    assert res["peak_rss_mib"] > 0


def test_bench_cli_takes_the_offload_options(capsys, monkeypatch):
    monkeypatch.setenv("DIFFGEMMA_TEST_GPU_MIB", "4096")  # the CPU posing as a GPU (tests/test_offload.py)
    path = fx.gguf("wide", "f32")
    assert cli_main(["bench", "-m", str(path), "-t", "1", "-p", "8", "--steps", "2", "-r", "1", "-ngl", "-1",
                     "--n-cpu-moe", "1", "--fit", "-o", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_gpu_layers"] == -1 and res["offload"] == {"n_cpu_moe": 1, "fit": True}
    assert "experts of 1 of them in host memory" in res["memory_plan"]
    assert res["summary"]["step_ms"]["median"] > 0


def test_bench_cli_markdown_and_bad_arguments(capsys):
    path = fx.gguf("wide", "f32")
    assert cli_main(["bench", "-m", str(path), "-t", "1", "-p", "8", "--steps", "1", "-r", "1"]) == 0
    out = capsys.readouterr().out
    assert "| denoising step, ms |" in out and "| peak RSS, MiB |" in out
    assert cli_main(["bench", "-m", str(path), "--steps", "0"]) == 1
    assert "must be positive" in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError):
        from diffgemma_cpp.bench import _cmd_bench

        class A:
            steps, repetitions, blocks, prompt_tokens, threads, no_split, output, model = 1, 0, 1, 8, 1, False, "md", path
        _cmd_bench(A)


@pytest.mark.skipif(kernel_tier() != "avx512", reason="only the AVX-512 tier multiplies quantized weights itself")
def test_gemm_runs_quantized_weights_with_f32_activations():
    """q8_0 weights go through the GEMM too (dequantized while packing): it must change the result, and bring
    it closer to the F32 file's than ggml's path, which quantizes the activations to 8 bits as well."""
    def logits(outtype, gemm):
        if not gemm:
            os.environ["DIFFGEMMA_NO_GEMM"] = "1"
        try:
            with Model(fx.gguf("wide", outtype), n_threads=2) as m:
                m.encode(list(range(10, 40)))
                return m.decoder_logits(list(range(50, 50 + m.canvas_length)))
        finally:
            os.environ.pop("DIFFGEMMA_NO_GEMM", None)

    def nmse(a, b):
        return float(np.sum((a - b) ** 2) / np.sum(b ** 2))

    ref = logits("f32", True)
    ours, theirs = logits("q8_0", True), logits("q8_0", False)
    assert np.any(ours != theirs)
    assert nmse(ours, ref) < nmse(theirs, ref)
