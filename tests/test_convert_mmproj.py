"""`convert --mmproj`: the vision tower as a projector GGUF in llama.cpp's Gemma-4 layout (clip / gemma4v).

Checks the keys (names, types, values, order), every tensor's name, shape and type against the HF checkpoint,
exact f32 data (the patch kernel's permutation undone equals HF's input_proj), the F16 / BF16 / Q8_0 files, the
text GGUF's image keys and that it is byte-identical with and without --mmproj, and the failure modes (no vision
tower, unwritable path, interruption: no file of either output left behind)."""
import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import tiny_hf
from convert_helpers import dequant, ggml_quantize, hf_tensors, read_gguf
from diffgemma_cpp.convert import cli as convert_cli, convert_checkpoint, writer
from diffgemma_cpp.errors import InvalidArgumentError, ModelFileError, UnsupportedModelError

V = "model.encoder.vision_tower."
LAYERS, HIDDEN, FF, HEADS, HEAD_DIM, PATCH, POOL, NPOS = 2, 64, 96, 4, 16, 16, 3, 64
TEXT_HIDDEN = tiny_hf.CONFIGS["small"]["hidden_size"]

# GGUF layer tensor -> HF suffix under encoder.layers.N. (llama.cpp's gguf-py tensor map for Gemma 4).
LAYER_MAP = {
    "ln1.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.linear.weight",
    "attn_k.weight": "self_attn.k_proj.linear.weight", "attn_v.weight": "self_attn.v_proj.linear.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_out.weight": "self_attn.o_proj.linear.weight", "attn_post_norm.weight": "post_attention_layernorm.weight",
    "ln2.weight": "pre_feedforward_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.linear.weight",
    "ffn_up.weight": "mlp.up_proj.linear.weight", "ffn_down.weight": "mlp.down_proj.linear.weight",
    "ffn_post_norm.weight": "post_feedforward_layernorm.weight",
}
GLOBAL_MAP = {"v.position_embd.weight": V + "patch_embedder.position_embedding_table", "v.std_bias": V + "std_bias",
              "v.std_scale": V + "std_scale",
              "mm.input_projection.weight": "model.encoder.embed_vision.embedding_projection.weight"}
MATRICES = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_out.weight", "ffn_gate.weight", "ffn_up.weight",
            "ffn_down.weight"}


@pytest.fixture(scope="module")
def vis(tmp_path_factory):
    return tiny_hf.make_tiny_vision_checkpoint(tmp_path_factory.mktemp("hfvis") / "vis", seed=3)


@pytest.fixture(scope="module")
def hf(vis):
    return hf_tensors(vis)


@pytest.fixture(scope="module")
def f32_run(vis, tmp_path_factory):
    """One run writing the text GGUF and the projector, both F32."""
    out = tmp_path_factory.mktemp("f32")
    paths = convert_checkpoint(vis, out / "text.gguf", "f32", mmproj=out / "mmproj.gguf", progress=False, quiet=True)
    return out, paths


def _hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_MAP:
        return GLOBAL_MAP[gguf_name]
    _, _, il, rest = gguf_name.split(".", 3)
    return f"{V}encoder.layers.{il}.{LAYER_MAP[rest]}"


def _expected_names():
    names = ["v.patch_embd.weight", "v.position_embd.weight"]
    for il in range(LAYERS):
        names += [f"v.blk.{il}.{n}" for n in LAYER_MAP]
    return names + ["v.std_bias", "v.std_scale", "mm.input_projection.weight"]


def _expected_type(name: str, outtype: str) -> Q:
    if name == "v.patch_embd.weight":
        return Q.F16 if outtype == "f16" else Q.F32
    base = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    if name == "mm.input_projection.weight" or name.rsplit(".", 2)[-2] + ".weight" in MATRICES:
        if base == Q.Q8_0 and name.endswith("ffn_down.weight") and FF % 32:
            return Q.F16
        return base
    return Q.F32  # norms, std_*, the position table


def test_one_run_writes_both_files(f32_run):
    out, paths = f32_run
    assert paths == [out / "text.gguf", out / "mmproj.gguf"]
    assert sorted(p.name for p in out.iterdir()) == ["mmproj.gguf", "text.gguf"]  # no temporary folder left


def test_projector_keys_as_llama_cpp_writes_them(f32_run):
    kv, _, _, _ = read_gguf(f32_run[0] / "mmproj.gguf")
    got = [(k, t) for k, t, _ in kv]
    assert got == [
        ("general.architecture", "STRING"), ("general.type", "STRING"), ("general.name", "STRING"),
        ("general.size_label", "STRING"), ("general.file_type", "UINT32"), ("clip.has_vision_encoder", "BOOL"),
        ("clip.vision.projection_dim", "UINT32"), ("clip.vision.image_size", "UINT32"),
        ("clip.vision.patch_size", "UINT32"), ("clip.vision.embedding_length", "UINT32"),
        ("clip.vision.feed_forward_length", "UINT32"), ("clip.vision.block_count", "UINT32"),
        ("clip.vision.attention.head_count", "UINT32"), ("clip.vision.image_mean", "ARRAY[FLOAT32]"),
        ("clip.vision.image_std", "ARRAY[FLOAT32]"), ("clip.vision.projector_type", "STRING"),
        ("clip.vision.attention.layer_norm_epsilon", "FLOAT32"), ("clip.vision.projector.scale_factor", "UINT32"),
        ("clip.vision.rope.freq_base", "FLOAT32"), ("clip.vision.max_soft_tokens", "UINT32"),
        ("general.quantization_version", "UINT32"),
    ]
    v = {k: val for k, _, val in kv}
    assert v["general.architecture"] == "clip" and v["general.type"] == "mmproj"
    assert v["clip.vision.projector_type"] == "gemma4v" and v["clip.has_vision_encoder"] is True
    assert v["general.name"] == "vis" and v["general.file_type"] == 0
    assert (v["clip.vision.embedding_length"], v["clip.vision.feed_forward_length"], v["clip.vision.block_count"],
            v["clip.vision.attention.head_count"]) == (HIDDEN, FF, LAYERS, HEADS)
    assert v["clip.vision.projection_dim"] == TEXT_HIDDEN
    assert (v["clip.vision.patch_size"], v["clip.vision.image_size"]) == (PATCH, 224)
    assert v["clip.vision.image_mean"] == [0.0, 0.0, 0.0] and v["clip.vision.image_std"] == [1.0, 1.0, 1.0]
    assert v["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert v["clip.vision.projector.scale_factor"] == POOL
    assert v["clip.vision.rope.freq_base"] == 100.0 and v["clip.vision.max_soft_tokens"] == 280


def test_projector_tensors_names_shapes_and_exact_f32_data(f32_run, hf):
    _, tensors, order, _ = read_gguf(f32_run[0] / "mmproj.gguf")
    assert order == _expected_names()
    used = set()
    for name, rt in tensors.items():
        assert Q(int(rt.tensor_type)) == Q.F32, name
        data = dequant(rt)
        if name == "v.patch_embd.weight":
            assert [int(d) for d in rt.shape] == [PATCH, PATCH, 3, HIDDEN]  # ggml ne of a conv kernel
            src = hf[V + "patch_embedder.input_proj.weight"]
            assert src.shape == (HIDDEN, PATCH * PATCH * 3)
            # [n_embd, 3, p, p] back to HF's patch order (row, column, channel)
            np.testing.assert_array_equal(data.transpose(0, 2, 3, 1).reshape(HIDDEN, -1), src)
            assert not np.array_equal(data.reshape(HIDDEN, -1), src)  # the permutation is not the identity
            used.add(V + "patch_embedder.input_proj.weight")
            continue
        src = hf[_hf_name(name)]
        assert tuple(int(d) for d in reversed(rt.shape)) == src.shape, name
        np.testing.assert_array_equal(data, src, err_msg=name)
        used.add(_hf_name(name))
    assert tensors["v.position_embd.weight"].shape.tolist() == [HIDDEN, NPOS, 2]
    assert tensors["mm.input_projection.weight"].shape.tolist() == [HIDDEN, TEXT_HIDDEN]
    vision_keys = {k for k in hf if k.startswith(V) or k.startswith("model.encoder.embed_vision.")}
    assert used == vision_keys and len(vision_keys) == 4 + 13 * LAYERS + 1
    assert np.abs(hf[V + "std_bias"]).max() > 0 and np.abs(hf[V + "std_scale"] - 1).max() > 0  # random, not init


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_projector_types(vis, hf, tmp_path, outtype):
    out = tmp_path / "mmproj.gguf"
    assert convert_checkpoint(vis, None, "auto", mmproj=out, mmproj_outtype=outtype, mmproj_only=True,
                              progress=False, quiet=True) == [out]
    assert [p.name for p in tmp_path.iterdir()] == ["mmproj.gguf"]  # --mmproj-only: no text GGUF
    kv, tensors, order, _ = read_gguf(out)
    assert order == _expected_names()
    assert dict((k, v) for k, _, v in kv)["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]
    for name, rt in tensors.items():
        want = _expected_type(name, outtype)
        assert Q(int(rt.tensor_type)) == want, (name, Q(int(rt.tensor_type)).name, want.name)
        data = dequant(rt) if want != Q.BF16 else _bf16(rt)
        if name == "v.patch_embd.weight":
            data = data.transpose(0, 2, 3, 1).reshape(HIDDEN, -1)
            ref = hf[V + "patch_embedder.input_proj.weight"]
        else:
            ref = hf[_hf_name(name)]
        if want == Q.Q8_0:  # the bytes ggml's own quantizer writes
            assert bytes(np.asarray(rt.data).reshape(-1)) == ggml_quantize(Q.Q8_0, ref.reshape(-1, ref.shape[-1]))
        tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1e-2}[want]
        np.testing.assert_allclose(data, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max())), err_msg=name)


def _bf16(rt) -> np.ndarray:
    raw = np.asarray(rt.data).reshape(-1).view(np.uint8).view("<u2").astype(np.uint32) << 16
    return raw.view(np.float32).reshape(tuple(int(d) for d in reversed(rt.shape)))


def test_default_projector_type_follows_outtype(vis, tmp_path):
    # q4_k_m text: the projector gets the checkpoint's 16-bit float type (f32 source -> f16); q8_0 text -> q8_0.
    convert_checkpoint(vis, tmp_path / "t.gguf", "q4_k_m", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    _, tensors, _, _ = read_gguf(tmp_path / "m.gguf")
    assert Q(int(tensors["v.blk.0.attn_q.weight"].tensor_type)) == Q.F16
    convert_checkpoint(vis, tmp_path / "t8.gguf", "q8_0", mmproj=tmp_path / "m8.gguf", progress=False, quiet=True)
    _, tensors, _, _ = read_gguf(tmp_path / "m8.gguf")
    assert Q(int(tensors["v.blk.0.attn_q.weight"].tensor_type)) == Q.Q8_0


def test_text_gguf_identical_with_and_without_mmproj(vis, f32_run, tmp_path):
    alone = tmp_path / "text.gguf"
    convert_checkpoint(vis, alone, "f32", progress=False, quiet=True)
    assert alone.read_bytes() == (f32_run[0] / "text.gguf").read_bytes()
    kv, tensors, _, _ = read_gguf(alone)
    v = {k: val for k, _, val in kv}
    keys = [k for k, _, _ in kv]
    assert v["diffusion.image_token_id"] == 42 and v["diffusion.vision_bidirectional"] is True
    assert keys.index("diffusion.vision_bidirectional") == keys.index("diffusion.image_token_id") + 1
    assert keys.index("diffusion.image_token_id") == keys.index("diffusion.embed_scale") + 1
    assert not any(n.startswith(("v.", "mm.")) for n in tensors)  # the text file holds no vision tensor
    tokens = v["tokenizer.ggml.tokens"]
    assert tokens[40:43] == ["<|image>", "<image|>", "<|image|>"]


def test_text_image_keys_follow_config(vis, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(vis, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["image_token_id"] = 7
    cfg["text_config"]["use_bidirectional_attention"] = None
    (src / "config.json").write_text(json.dumps(cfg))
    convert_checkpoint(src, tmp_path / "t.gguf", "f32", progress=False, quiet=True)
    v = {k: val for k, _, val in read_gguf(tmp_path / "t.gguf")[0]}
    assert v["diffusion.image_token_id"] == 7 and v["diffusion.vision_bidirectional"] is False
    del cfg["vision_config"]
    (src / "config.json").write_text(json.dumps(cfg))
    convert_checkpoint(src, tmp_path / "t2.gguf", "f32", progress=False, quiet=True)
    keys = [k for k, _, _ in read_gguf(tmp_path / "t2.gguf")[0]]
    assert "diffusion.image_token_id" not in keys and "diffusion.vision_bidirectional" not in keys


def test_original_tiny_tower_converts(tmp_path):
    # save_checkpoint's default tower (1 layer, patch 8, pooling 2, no standardization, no processor config).
    src = tiny_hf.save_checkpoint("small", tmp_path / "small", seed=2)
    out = tmp_path / "m.gguf"
    convert_checkpoint(src, None, "f32", mmproj=out, mmproj_only=True, progress=False, quiet=True)
    kv, tensors, order, _ = read_gguf(out)
    v = {k: val for k, _, val in kv}
    assert (v["clip.vision.patch_size"], v["clip.vision.projector.scale_factor"], v["clip.vision.block_count"]) == \
        (8, 2, 1)
    assert "v.std_bias" not in tensors and len(order) == 2 + 13 + 1
    assert tensors["v.patch_embd.weight"].shape.tolist() == [8, 8, 3, 32]


def _copy(vis, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(vis, src)
    return src


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf" or "partial" in p.name)


def test_no_vision_config_is_a_clear_error(vis, tmp_path):
    src = _copy(vis, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["vision_config"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="no vision_config.*no vision tower.*leave out --mmproj"):
        convert_checkpoint(src, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("field,value,message", [("hidden_activation", "relu", "gelu_pytorch_tanh only"),
                                                  ("use_clipped_linears", True, "use_clipped_linears")])
def test_vision_configs_the_engine_cannot_run_are_refused(vis, tmp_path, field, value, message):
    src = _copy(vis, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vision_config"][field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=message):
        convert_checkpoint(src, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    assert _leftovers(tmp_path) == []


def test_no_vision_tensors_is_a_clear_error(vis, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = _copy(vis, tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith(V)}
    save_file(kept, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match="no vision tower"):
        convert_checkpoint(src, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    kept.update({k: v for k, v in tensors.items() if k.startswith(V) and "layers.1.mlp" not in k})
    kept[V + "std_scale"] = np.ones(HIDDEN + 1, dtype=np.float32)
    save_file(kept, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match=r"3 missing tensor\(s\).*layers\.1\.mlp.*misshapen.*std_scale"):
        convert_checkpoint(src, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    assert _leftovers(tmp_path) == []


def test_unwritable_projector_path_writes_neither_file(vis, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        convert_checkpoint(vis, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "nope" / "m.gguf", progress=False,
                           quiet=True)
    assert _leftovers(tmp_path) == []  # the text GGUF, already written, is not published either


def test_projector_must_not_overwrite_the_text_file(vis, tmp_path):
    with pytest.raises(InvalidArgumentError, match="must not overwrite the text GGUF"):
        convert_checkpoint(vis, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "t.gguf", progress=False, quiet=True)
    with pytest.raises(InvalidArgumentError, match="--mmproj-only needs --mmproj"):
        convert_checkpoint(vis, tmp_path / "t.gguf", "f32", mmproj_only=True, progress=False, quiet=True)
    assert _leftovers(tmp_path) == []


def test_interrupt_while_writing_the_projector_leaves_no_file(vis, tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"previous projector")
    real = writer._encode_chunk
    seen = []

    def encode(t, start, count):
        seen.append(t.name)
        if t.name == "v.blk.1.ffn_up.weight":  # inside the projector, after the whole text file was written
            raise KeyboardInterrupt
        return real(t, start, count)

    monkeypatch.setattr(writer, "_encode_chunk", encode)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(vis, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", progress=False, quiet=True)
    assert "token_embd.weight" in seen and "v.blk.0.attn_q.weight" in seen
    assert _leftovers(tmp_path) == ["m.gguf"] and (tmp_path / "m.gguf").read_bytes() == b"previous projector"


def test_cli_flags_and_dry_run(vis, tmp_path, capsys):
    assert convert_cli.main([str(vis), "--outfile", str(tmp_path / "t.gguf"), "--outtype", "f16", "--mmproj",
                             str(tmp_path / "m.gguf"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "v.patch_embd.weight" in out and "F16" in out and "token_embd.weight" in out
    assert f"would write {tmp_path / 'm.gguf'}" in out and _leftovers(tmp_path) == []
    assert convert_cli.main([str(vis), "--mmproj", str(tmp_path / "m.gguf"), "--mmproj-only", "--mmproj-outtype",
                             "Q8_0", "--no-progress"]) == 0
    assert _leftovers(tmp_path) == ["m.gguf"]
    _, tensors, _, _ = read_gguf(tmp_path / "m.gguf")
    assert Q(int(tensors["mm.input_projection.weight"].tensor_type)) == Q.Q8_0
    with pytest.raises(SystemExit):
        convert_cli.main([str(vis), "--mmproj", str(tmp_path / "x.gguf"), "--mmproj-outtype", "q4_k_m"])
    assert "invalid choice 'q4_k_m'" in capsys.readouterr().err


def test_split_max_size_shards_the_text_file_only(vis, tmp_path):
    paths = convert_checkpoint(vis, tmp_path / "t.gguf", "f32", mmproj=tmp_path / "m.gguf", split_max_size=60_000,
                               progress=False, quiet=True)
    names = [p.name for p in paths]
    assert names[-1] == "m.gguf" and len(names) > 2 and all("-of-" in n for n in names[:-1])
    assert sorted(_leftovers(tmp_path)) == sorted(names)
    assert len(read_gguf(tmp_path / "m.gguf")[2]) == 31
