"""Converter tensor types: per-type error bounds of the dequantized values, byte equality with ggml's own
quantizer (called directly from libggml, not through our library), llama.cpp's recipes (the published Q4_K_M
mix at the release geometry), --tensor-type overrides, `auto`, requantizing a GGUF, and split output.

Error bounds (measured on the "wide" tiny model, weights ~N(0, 0.3) and norms ~N(1, 0.3); worst tensor):
  type   rel. RMS error  max |err| / max |x|   bound used here (RMS, max)
  F16    2.1e-4          4.2e-4                elementwise |err| <= 2^-11 |x| + 2^-25
  BF16   1.7e-3          3.1e-3                elementwise |err| <= 2^-8 |x|
  Q8_0   5.4e-3          4.0e-3                1e-2, 1e-2
  Q6_K   1.8e-2          1.6e-2                3e-2, 3e-2
  Q5_K   3.7e-2          3.7e-2                6e-2, 8e-2   (Q5_0 4.3e-2 / 5.0e-2, Q5_1 3.8e-2 / 2.4e-2)
  Q4_K   7.2e-2          6.6e-2                1.2e-1, 1.5e-1 (Q4_0 8.7e-2 / 9.9e-2)
  MXFP4  1.1e-1          1.8e-1                1.8e-1, 3e-1
"""
import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from convert_helpers import checkpoints, dequant, ggml_quantize, hf_name, hf_tensors, read_gguf  # noqa: F401
from diffgemma_cpp import cli
from diffgemma_cpp.convert import convert_checkpoint, requantize_gguf
from diffgemma_cpp.errors import InvalidArgumentError, UnsupportedTypeError

BOUNDS = {"Q8_0": (1e-2, 1e-2), "Q6_K": (3e-2, 3e-2), "Q5_K": (6e-2, 8e-2), "Q5_0": (6e-2, 8e-2),
          "Q5_1": (6e-2, 8e-2), "Q4_K": (1.2e-1, 1.5e-1), "Q4_0": (1.2e-1, 1.5e-1), "MXFP4": (1.8e-1, 3e-1)}
QUANT_OUTTYPES = ["q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "mxfp4"]
ALL_OUTTYPES = ["f16", "bf16"] + QUANT_OUTTYPES


@pytest.fixture(scope="module")
def wide_files(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_wide")
    return {ot: convert_checkpoint(checkpoints["wide"], out / f"wide-{ot}.gguf", ot, progress=False, quiet=True)[0]
            for ot in ALL_OUTTYPES + ["f32"]}


@pytest.fixture(scope="module")
def wide_src(checkpoints):
    return hf_tensors(checkpoints["wide"])


@pytest.mark.parametrize("outtype", ALL_OUTTYPES)
def test_dequantized_values_within_per_type_bounds(wide_files, wide_src, outtype):
    _, tensors, _, _ = read_gguf(wide_files[outtype])
    seen = Counter()
    for name, rt in tensors.items():
        if name == "rope_freqs.weight":
            continue
        ref = wide_src[hf_name(name)]
        got = dequant(rt).reshape(ref.shape)
        t = rt.tensor_type.name
        seen[t] += 1
        if t == "F32":
            np.testing.assert_array_equal(got, ref, err_msg=name)
        elif t in ("F16", "BF16"):
            # half an ulp, relative; plus half the f16 subnormal spacing for |x| < 2^-14
            rel, floor = (2.0 ** -11, 2.0 ** -25) if t == "F16" else (2.0 ** -8, 0.0)
            assert np.all(np.abs(got - ref) <= rel * np.abs(ref) + floor), name
        else:
            rms_bound, max_bound = BOUNDS[t]
            assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < rms_bound, (name, t)
            assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < max_bound, (name, t)
    assert seen["F32"] > 0 and len(seen) > 1  # something was actually quantized


@pytest.mark.parametrize("outtype", ALL_OUTTYPES)
def test_quantized_bytes_equal_ggml_quantize(wide_files, wide_src, outtype):
    """Every non-f32 tensor holds exactly the bytes libggml's ggml_quantize_chunk gives for the source rows."""
    _, tensors, _, _ = read_gguf(wide_files[outtype])
    checked = 0
    for name, rt in tensors.items():
        if rt.tensor_type == Q.F32:
            continue
        ref = wide_src[hf_name(name)]
        rows = ref.reshape(-1, ref.shape[-1])
        assert np.asarray(rt.data).tobytes() == ggml_quantize(int(rt.tensor_type), rows), name
        checked += 1
    assert checked > 0


def test_numpy_quantizers_agree_for_q8_0_and_bf16(wide_files, wide_src):
    """A second, independent reference: gguf-py's numpy quantizers (written to match ggml bit for bit)."""
    from gguf.quants import quantize

    for outtype, qtype in (("q8_0", Q.Q8_0), ("bf16", Q.BF16)):
        _, tensors, _, _ = read_gguf(wide_files[outtype])
        for name, rt in tensors.items():
            if rt.tensor_type == qtype:
                ref = wide_src[hf_name(name)]
                assert np.asarray(rt.data).tobytes() == quantize(ref.reshape(-1, ref.shape[-1]), qtype).tobytes()


def test_bf16_checkpoint_auto_keeps_the_stored_bits(checkpoints, tmp_path):
    from safetensors import safe_open

    out = convert_checkpoint(checkpoints["wide_bf16"], tmp_path / "auto.gguf", "auto", progress=False, quiet=True)[0]
    kv, tensors, _, _ = read_gguf(out)
    assert dict((k, v) for k, _, v in kv)["general.file_type"] == 32  # MOSTLY_BF16
    with safe_open(str(checkpoints["wide_bf16"] / "model.safetensors"), "pt") as st:
        raw = st.get_tensor("model.decoder.layers.0.experts.gate_up_proj").view(__import__("torch").int16).numpy()
    rt = tensors["blk.0.ffn_gate_up_exps.weight"]
    assert rt.tensor_type == Q.BF16
    assert np.asarray(rt.data).tobytes() == raw.tobytes()
    # 1-D tensors stay F32 (bf16 widened exactly); the embedding scale is the bf16-rounded sqrt(256) = 16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    assert dict((k, v) for k, _, v in kv)["diffusion.embed_scale"] == 16.0


def test_f32_checkpoint_auto_is_f16(wide_files, checkpoints, tmp_path):
    out = convert_checkpoint(checkpoints["small"], tmp_path / "auto.gguf", "auto", progress=False, quiet=True)[0]
    _, tensors, _, _ = read_gguf(out)
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.F16


# --------------------------------------------------------------------------------------------------------------
# Recipes at the release geometry (plan only: no data is read)
# --------------------------------------------------------------------------------------------------------------

RELEASE_CONFIG = {
    "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma", "canvas_length": 256,
    "text_config": {
        "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112, "num_hidden_layers": 30,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5, "num_attention_heads": 16,
        "num_key_value_heads": 8, "num_global_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512,
        "rms_norm_eps": 1e-6, "sliding_window": 1024, "max_position_embeddings": 262144,
        "final_logit_softcapping": 30.0, "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1000000.0}}},
}


def release_plan(tmp_path, outtype):
    """The converter's tensor plan for the released 26B-A4B geometry, from a fake header-only checkpoint."""
    from diffgemma_cpp.convert import tensors as T
    from diffgemma_cpp.convert.checkpoint import Checkpoint, TensorEntry
    from diffgemma_cpp.convert.hparams import load_hparams
    from diffgemma_cpp.convert.quant_rules import assign_types, parse_outtype

    (tmp_path / "config.json").write_text(json.dumps(RELEASE_CONFIG))
    hp = load_hparams(tmp_path)
    shapes = {"model.decoder.embed_tokens.weight": (hp.n_vocab, hp.n_embd)}
    for _, suffix, fn in T._GLOBAL_SPECS:
        shapes["model.decoder." + suffix] = fn(hp)
    for il in range(hp.n_layer):
        for _, suffix, shape in T._layer_specs(hp, il):
            shapes[f"model.decoder.layers.{il}.{suffix}"] = shape
        shapes[f"model.encoder.language_model.layers.{il}.layer_scalar"] = (1,)

    class HeaderOnly(Checkpoint):
        def __init__(self):
            self.entries = {n: TensorEntry(n, "BF16", s, Path("x"), 0, 2 * math.prod(s)) for n, s in shapes.items()}
            self._fds = {}

    plan = T.plan_tensors(hp, HeaderOnly(), n_vocab_out=hp.n_vocab, log=lambda m: None)
    assign_types(plan, parse_outtype(outtype, {"BF16"}), n_layer=hp.n_layer)
    return hp, plan


def test_q4_k_m_reproduces_the_published_unsloth_mix(tmp_path):
    """gguf-format.md §8: 692 tensors, f32 423, q4_K 194, q5_0 33, q8_0 28, q6_K 14; size label 128x2.6B."""
    from diffgemma_cpp.convert.pipeline import size_label

    hp, plan = release_plan(tmp_path, "q4_k_m")
    assert len(plan) == 692
    assert Counter(Q(t.qtype).name for t in plan) == {"F32": 423, "Q4_K": 194, "Q5_0": 33, "Q8_0": 28, "Q6_K": 14}
    types = {t.name: Q(t.qtype).name for t in plan}
    assert types["token_embd.weight"] == "Q6_K"
    assert types["self_cond_down.weight"] == "Q5_0"  # q4_K does not fit rows of 2112
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert size_label(plan) == "128x2.6B"


def test_tensors_written_at_another_type_are_named_in_one_warning(tmp_path, caplog):
    """q4_K rows must be multiples of 256: at the release shapes 33 tensors become q5_0 and 28 q6_K ones q8_0,
    as llama.cpp does; the user is told which, instead of silently getting another type than asked."""
    with caplog.at_level(logging.WARNING, logger="diffgemma_cpp.convert"):
        release_plan(tmp_path, "q4_k_m")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("61 tensor(s) written at another type than asked")
    assert "Q4_K -> Q5_0: 33 tensor(s): " in warnings[0] and "Q6_K -> Q8_0: 28 tensor(s): " in warnings[0]
    assert "self_cond_down.weight (rows of 2112)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffgemma_cpp.convert"):
        release_plan(tmp_path, "q8_0")  # every row splits into blocks of 32
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("outtype,mix", [
    ("q8_0", {"F32": 423, "Q8_0": 269}),
    ("q6_k", {"F32": 423, "Q6_K": 208, "Q8_0": 61}),
    ("mxfp4", {"F32": 423, "MXFP4": 60, "Q8_0": 209}),
    ("bf16", {"F32": 423, "BF16": 269}),
])
def test_other_recipes_at_release_geometry(tmp_path, outtype, mix):
    _, plan = release_plan(tmp_path, outtype)
    assert Counter(Q(t.qtype).name for t in plan) == mix


def test_tensor_type_overrides(checkpoints, tmp_path):
    out = convert_checkpoint(checkpoints["wide"], tmp_path / "o.gguf", "q4_k_m", progress=False, quiet=True,
                             tensor_types=[r"ffn_down_exps\.weight=q8_0", r"blk\.0\.attn_q\.=f16",
                                           r"attn_norm=q8_0"])[0]
    _, tensors, _, _ = read_gguf(out)
    assert all(tensors[f"blk.{i}.ffn_down_exps.weight"].tensor_type == Q.Q8_0 for i in range(3))
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.F16
    assert tensors["blk.1.attn_q.weight"].tensor_type == Q.Q4_K
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32  # 1-D tensors are never overridden
    with pytest.raises(InvalidArgumentError, match="REGEX=TYPE"):
        convert_checkpoint(checkpoints["wide"], tmp_path / "x.gguf", "q8_0", tensor_types=["nonsense"])
    with pytest.raises(InvalidArgumentError, match="unknown tensor type"):
        convert_checkpoint(checkpoints["wide"], tmp_path / "x.gguf", "q8_0", tensor_types=["attn=q9_9"])
    assert not (tmp_path / "x.gguf").exists()


# --------------------------------------------------------------------------------------------------------------
# Requantizing and splitting
# --------------------------------------------------------------------------------------------------------------

def _tensor_bytes(path):
    _, tensors, order, _ = read_gguf(path)
    return order, {n: (tensors[n].tensor_type, np.asarray(tensors[n].data).tobytes()) for n in order}


@pytest.mark.parametrize("outtype", ["q4_k_m", "q6_k"])
def test_quantize_subcommand_matches_direct_conversion(wide_files, tmp_path, outtype):
    out = tmp_path / f"re-{outtype}.gguf"
    assert cli.main(["quantize", str(wide_files["f32"]), str(out), outtype, "--no-progress"]) == 0
    assert _tensor_bytes(out) == _tensor_bytes(wide_files[outtype])
    kv_a, _, _, _ = read_gguf(out)
    kv_b, _, _, _ = read_gguf(wide_files[outtype])
    assert kv_a == kv_b  # file_type rewritten, everything else carried over in order


def test_quantize_refuses_quantized_input(wide_files, tmp_path):
    with pytest.raises(UnsupportedTypeError, match="requantize from an F32, F16 or BF16"):
        requantize_gguf(wide_files["q4_k_m"], tmp_path / "x.gguf", "q8_0", progress=False, quiet=True)
    assert not (tmp_path / "x.gguf").exists()


def test_split_max_size_writes_shards_with_all_tensors(checkpoints, wide_files, tmp_path):
    out = tmp_path / "split.gguf"
    paths = convert_checkpoint(checkpoints["wide"], out, "q4_k_m", split_max_size=1_000_000, progress=False,
                               quiet=True)
    n = len(paths)
    assert n > 1
    assert [p.name for p in paths] == [f"split-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert not out.exists()
    merged = {}
    for i, p in enumerate(paths):
        kv, tensors, order, _ = read_gguf(p)
        kvd = {k: v for k, _, v in kv}
        assert kvd["split.no"] == i and kvd["split.count"] == n
        for name in order:
            merged[name] = (tensors[name].tensor_type, np.asarray(tensors[name].data).tobytes())
    order, whole = _tensor_bytes(wide_files["q4_k_m"])
    assert merged == whole and list(merged) == order
    assert not list(tmp_path.glob(".*partial*"))


def test_quantize_from_bf16_gguf_matches_direct_conversion(checkpoints, tmp_path):
    bf16 = convert_checkpoint(checkpoints["wide_bf16"], tmp_path / "b.gguf", "bf16", progress=False, quiet=True)[0]
    direct = convert_checkpoint(checkpoints["wide_bf16"], tmp_path / "d.gguf", "q4_k_m", progress=False,
                                quiet=True)[0]
    re = requantize_gguf(bf16, tmp_path / "r.gguf", "q4_k_m", progress=False, quiet=True)[0]
    assert _tensor_bytes(re) == _tensor_bytes(direct)


def test_memory_is_bounded_by_the_chunk_not_the_tensor(checkpoints, tmp_path, monkeypatch):
    """With 16 KB chunks, the Python-side peak while writing stays far below one expert tensor (4 MB of f32):
    tensors are streamed, never materialised whole."""
    import tracemalloc

    from diffgemma_cpp.convert import writer

    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", 4096)
    seen = {}
    real = writer._write_data

    def traced(*args, **kw):
        tracemalloc.start()
        try:
            return real(*args, **kw)
        finally:
            seen["peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    monkeypatch.setattr(writer, "_write_data", traced)
    convert_checkpoint(checkpoints["wide"], tmp_path / "m.gguf", "q8_0", threads=2, progress=False, quiet=True)
    largest_f32 = 8 * 512 * 256 * 4
    assert seen["peak"] < largest_f32 / 8, seen
