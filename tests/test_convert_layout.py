"""Converter output layout: every key (name, type, order, value) and every tensor (name, order, shape, type,
exact f32 values) of tiny random DiffusionGemma checkpoints, per gguf-format.md; tokenizer data token for token."""
import json
import math
import shutil

import numpy as np
import pytest

import tiny_hf
from convert_helpers import (EXPECTED_KEYS, GLOBAL_ORDER, LAYER_ORDER, checkpoints, hf_name, hf_tensors,  # noqa: F401
                             read_gguf)
from diffgemma_cpp.convert import convert_checkpoint

CONFIG_NAMES = list(tiny_hf.CONFIGS)


@pytest.fixture(scope="module")
def f32_files(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_f32")
    return {n: convert_checkpoint(checkpoints[n], out / f"{n}.gguf", "f32", progress=False, quiet=True)[0]
            for n in CONFIG_NAMES}


def _kv(path):
    kv, tensors, order, _ = read_gguf(path)
    return {k: v for k, _, v in kv}, kv, tensors, order


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_keys_names_types_and_order(f32_files, name):
    _, kv, _, _ = _kv(f32_files[name])
    assert [(k, t) for k, t, _ in kv] == EXPECTED_KEYS


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_key_values_follow_the_config(f32_files, checkpoints, name):
    values, _, _, _ = _kv(f32_files[name])
    spec = tiny_hf.CONFIGS[name]
    lt = spec["layer_types"]
    sliding = [t == "sliding_attention" for t in lt]
    expect = {
        "general.architecture": "diffusion-gemma", "general.type": "model",
        "diffusion-gemma.block_count": len(lt), "diffusion-gemma.context_length": spec["max_position_embeddings"],
        "diffusion-gemma.embedding_length": spec["hidden_size"],
        "diffusion-gemma.feed_forward_length": spec["intermediate_size"],
        "diffusion-gemma.attention.head_count": spec["num_attention_heads"],
        "diffusion-gemma.attention.head_count_kv": [spec["num_key_value_heads"] if s else
                                                    spec["num_global_key_value_heads"] for s in sliding],
        "diffusion-gemma.rope.freq_base": 1e6, "diffusion-gemma.rope.freq_base_swa": 1e4,
        "diffusion-gemma.expert_count": spec["num_experts"], "diffusion-gemma.expert_used_count": spec["top_k_experts"],
        "diffusion-gemma.attention.key_length": spec["global_head_dim"],
        "diffusion-gemma.attention.value_length": spec["global_head_dim"],
        "general.file_type": 0, "diffusion-gemma.final_logit_softcapping": 30.0,
        "diffusion-gemma.attention.sliding_window": spec["sliding_window"],
        "diffusion-gemma.attention.shared_kv_layers": 0, "diffusion-gemma.embedding_length_per_layer_input": 0,
        "diffusion-gemma.attention.sliding_window_pattern": sliding,
        "diffusion-gemma.attention.key_length_swa": spec["head_dim"],
        "diffusion-gemma.attention.value_length_swa": spec["head_dim"],
        "diffusion-gemma.expert_feed_forward_length": spec["moe_intermediate_size"],
        "diffusion-gemma.rope.dimension_count": spec["global_head_dim"],
        "diffusion-gemma.rope.dimension_count_swa": spec["head_dim"],
        "diffusion-gemma.attention.causal": False, "diffusion.canvas_length": spec["canvas_length"],
        "diffusion.eb_max_steps": 48, "diffusion.eb_stability_threshold": 1,
        "diffusion.embed_scale": float(np.float32(math.sqrt(spec["hidden_size"]))),
        "general.quantization_version": 2, "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.eos_token_ids": [1, 106, 50], "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.mask_token_id": 4,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False,
    }
    for key, want in expect.items():
        assert values[key] == (pytest.approx(want) if isinstance(want, float) else want), key
    for key, want in {"diffusion.eb_t_min": 0.4, "diffusion.eb_t_max": 0.8, "diffusion.eb_entropy_bound": 0.1,
                      "diffusion.eb_confidence_threshold": 0.005,
                      "diffusion-gemma.attention.layer_norm_rms_epsilon": 1e-6}.items():
        assert values[key] == pytest.approx(want, rel=1e-6), key
    assert values["tokenizer.chat_template"] == (checkpoints[name] / "chat_template.jinja").read_text()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_tensor_names_order_shapes_and_exact_values(f32_files, checkpoints, name):
    _, _, tensors, order = _kv(f32_files[name])
    lt = tiny_hf.CONFIGS[name]["layer_types"]
    expected = list(GLOBAL_ORDER)
    for il, t in enumerate(lt):
        expected += [f"blk.{il}.{s}" for s in LAYER_ORDER if not (s == "attn_v.weight" and t == "full_attention")]
    assert order == expected
    assert "output.weight" not in tensors
    src = hf_tensors(checkpoints[name])
    for gname, rt in tensors.items():
        assert rt.tensor_type.name == "F32", gname
        if gname == "rope_freqs.weight":
            continue
        ref = src[hf_name(gname)]
        ne = [int(d) for d in rt.shape]
        assert ne == list(reversed(ref.shape)), gname  # ggml ne = HF shape reversed, no transposes
        np.testing.assert_array_equal(np.asarray(rt.data).reshape(ref.shape), ref, err_msg=gname)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_layer_scalars_encoder_and_decoder_kept_apart(f32_files, checkpoints, name):
    _, _, tensors, _ = _kv(f32_files[name])
    src = hf_tensors(checkpoints[name])
    for il in range(len(tiny_hf.CONFIGS[name]["layer_types"])):
        dec = float(tensors[f"blk.{il}.layer_output_scale.weight"].data[0])
        enc = float(tensors[f"blk.{il}.enc_layer_output_scale.weight"].data[0])
        assert dec == src[f"model.decoder.layers.{il}.layer_scalar"][0]
        assert enc == src[f"model.encoder.language_model.layers.{il}.layer_scalar"][0]
        assert dec != enc


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_rope_freqs_matches_hf_proportional_rope(f32_files, name):
    """1.0 where HF's full-attention inv_freq is non-zero, 1e30 (angle 0) where it is zero."""
    import torch
    from transformers import DiffusionGemmaTextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, _, tensors, _ = _kv(f32_files[name])
    cfg = DiffusionGemmaTextConfig(**tiny_hf._text_config_kwargs(name))
    inv_freq, _ = ROPE_INIT_FUNCTIONS["proportional"](cfg, torch.device("cpu"), layer_type="full_attention")
    got = np.asarray(tensors["rope_freqs.weight"].data)
    assert got.shape == inv_freq.shape
    np.testing.assert_array_equal(got == 1.0, inv_freq.numpy() != 0)
    assert np.all(got[inv_freq.numpy() == 0] == np.float32(1e30))


def test_tokenizer_data_token_for_token(f32_files, checkpoints):
    """tokens, types, merges and special ids equal tokenizer.json as llama.cpp's own HF-vocab reader sees it
    (gguf.LlamaHfVocab, with the Gemma 4 USER_DEFINED markers), but for one intentional difference: special added
    tokens that transformers does not list in all_special_ids (the <unusedN>) are CONTROL here, NORMAL there, so
    that our tokenizer cuts them out of the text whole, as HF `tokenizers` does."""
    import gguf

    path = checkpoints["small"]
    values, _, _, _ = _kv(f32_files["small"])
    tj = json.loads((path / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    assert values["tokenizer.ggml.tokens"] == [by_id[i] for i in range(len(by_id))]
    assert values["tokenizer.ggml.merges"] == [" ".join(m) for m in tj["model"]["merges"]]
    assert values["tokenizer.ggml.scores"] == [-1000.0] * len(by_id)

    ref = gguf.LlamaHfVocab(path)
    ref_tokens, ref_types = [], []
    for text, _score, toktype in ref.all_tokens():
        ref_tokens.append(text.decode())
        ref_types.append(gguf.TokenType.USER_DEFINED if text.decode() in tiny_hf.GEMMA4_VISIBLE_MARKERS else toktype)
    assert values["tokenizer.ggml.tokens"] == ref_tokens
    types = values["tokenizer.ggml.token_type"]
    special_added = {a["id"] for a in tj["added_tokens"] if a["special"]}
    differ = {i for i, (ours, theirs) in enumerate(zip(types, ref_types)) if ours != theirs}
    # The one intentional difference: exactly the special added tokens llama.cpp leaves NORMAL, all <unusedN>.
    expected_differ = {i for i in special_added if ref_types[i] == gguf.TokenType.NORMAL}
    assert differ == expected_differ
    assert len(differ) == sum(t.startswith("<unused") for t in ref_tokens) > 80
    assert all(ref_tokens[i].startswith("<unused") for i in differ)
    assert all(types[i] == gguf.TokenType.CONTROL for i in differ)
    assert len(types) == len(ref_types)
    assert types[48] == types[50] == types[52] == types[100] == gguf.TokenType.USER_DEFINED
    assert types[105] == types[106] == types[2] == gguf.TokenType.CONTROL
    assert types[tiny_hf.FIRST_BYTE_ID + 0x41] == gguf.TokenType.BYTE
    assert types[tiny_hf.NEWLINE_ID] == gguf.TokenType.NORMAL


def test_embedding_trimmed_to_the_tokenizer(checkpoints, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(checkpoints["small"], src)
    tiny_hf.save_tokenizer(tiny_hf.train_tiny_gemma_tokenizer(448), src)
    out = convert_checkpoint(src, tmp_path / "t.gguf", "f32", progress=False, quiet=True)[0]
    values, _, tensors, _ = _kv(out)
    assert [int(d) for d in tensors["token_embd.weight"].shape] == [64, 448]
    assert len(values["tokenizer.ggml.tokens"]) == 448
    ref = hf_tensors(src)["model.decoder.embed_tokens.weight"][:448]
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(ref.shape), ref)


NESTED_GC = {"max_denoising_steps": 32,
             "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.25},
             "linear_temperature_schedule_config": {"t_min": 0.3, "t_max": 0.9},
             "diffusion_stopping_config": {"stability_threshold": 2, "confidence_threshold": 0.01},
             "eos_token_id": [1, 106]}
FLAT_GC = {"max_denoising_steps": 32, "t_min": 0.3, "t_max": 0.9, "stability_threshold": 2,
           "confidence_threshold": 0.01, "sampler_config": {"entropy_bound": 0.25}, "eos_token_id": [1, 106]}


@pytest.mark.parametrize("gc", [NESTED_GC, FLAT_GC], ids=["nested", "flat"])
def test_sampler_defaults_from_either_generation_config_layout(checkpoints, tmp_path, gc):
    src = tmp_path / "hf"
    shutil.copytree(checkpoints["small"], src)
    (src / "generation_config.json").write_text(json.dumps(gc))
    values, _, _, _ = _kv(convert_checkpoint(src, tmp_path / "s.gguf", "f32", progress=False, quiet=True)[0])
    assert values["diffusion.eb_max_steps"] == 32
    assert values["diffusion.eb_stability_threshold"] == 2
    for key, want in {"diffusion.eb_t_min": 0.3, "diffusion.eb_t_max": 0.9, "diffusion.eb_entropy_bound": 0.25,
                      "diffusion.eb_confidence_threshold": 0.01}.items():
        assert values[key] == pytest.approx(want, rel=1e-6)
    assert values["tokenizer.ggml.eos_token_ids"] == [1, 106]


def test_no_generation_config_means_no_sampler_keys(checkpoints, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(checkpoints["small"], src)
    (src / "generation_config.json").unlink()
    values, _, _, _ = _kv(convert_checkpoint(src, tmp_path / "s.gguf", "f32", progress=False, quiet=True)[0])
    assert not [k for k in values if k.startswith("diffusion.eb_")]
    assert "tokenizer.ggml.eos_token_ids" not in values  # only <eos> itself is known
    assert values["tokenizer.ggml.eos_token_id"] == 1


def _same_content(a, b):
    kva, ta, oa, _ = read_gguf(a)
    kvb, tb, ob, _ = read_gguf(b)
    strip = lambda kv: [(k, t, v) for k, t, v in kv if k != "general.name"]  # noqa: E731
    assert strip(kva) == strip(kvb)
    assert oa == ob
    for n in oa:
        assert ta[n].tensor_type == tb[n].tensor_type
        assert np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes(), n


def test_transformers_config_layout_and_sharded_checkpoint_give_the_same_file(checkpoints, tmp_path):
    """per_layer_config (what save_pretrained writes) == global_head_dim (the released config); a sharded
    checkpoint with an index == the single-file one."""
    alt = tiny_hf.save_checkpoint("gqa4", tmp_path / "alt", seed=1, released_config_layout=False,
                                  max_shard_size="40KB")
    assert "per_layer_config" in json.loads((alt / "config.json").read_text())["text_config"]
    assert (alt / "model.safetensors.index.json").is_file()
    assert len(list(alt.glob("*.safetensors"))) > 3
    a = convert_checkpoint(checkpoints["gqa4"], tmp_path / "a.gguf", "q8_0", progress=False, quiet=True)[0]
    b = convert_checkpoint(alt, tmp_path / "b.gguf", "q8_0", progress=False, quiet=True)[0]
    _same_content(a, b)


def test_encoder_language_model_names_are_a_fallback_and_vision_is_dropped(checkpoints, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "hf"
    shutil.copytree(checkpoints["small"], src)
    tensors = load_file(str(src / "model.safetensors"))
    moved = tensors.pop("model.decoder.layers.3.mlp.up_proj.weight")
    tensors["model.encoder.language_model.layers.3.mlp.up_proj.weight"] = moved
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = convert_checkpoint(src, tmp_path / "fb.gguf", "f32", progress=False)[0]
    assert "dropping 16 vision-tower tensors" in capsys.readouterr().out
    _, _, got, _ = _kv(out)
    np.testing.assert_array_equal(np.asarray(got["blk.3.ffn_up.weight"].data).reshape(moved.shape), moved)
