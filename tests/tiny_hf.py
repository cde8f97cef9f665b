"""Tiny random DiffusionGemma checkpoints in the Hugging Face layout, for tests.

Builds a `DiffusionGemmaForBlockDiffusion` (transformers 5.23.0) with a handful of named geometries, fills every
weight with non-trivial random values (norms around 1, distinct encoder/decoder layer scalars, random router
scales and per-expert scales) and saves it with `save_pretrained`, next to a real Gemma-style tokenizer
(`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) and a `generation_config.json`.

    from tiny_hf import CONFIGS, build_model, save_checkpoint, train_tiny_gemma_tokenizer
    path = save_checkpoint("small", tmp_path / "small")          # -> directory usable as HF_DIR
    path = make_tiny_vision_checkpoint(tmp_path / "vis", seed=1)  # the same with a 2-layer Gemma 4 vision tower

The tokenizer is a byte-fallback BPE trained here on a small built-in corpus to exactly `vocab_size` tokens,
laid out like Gemma 4's: ids 0..4 are <pad> <eos> <bos> <unk> <mask>, the chat/tool markers sit at their Gemma 4
ids (<|tool_call>=48, <|tool_response>=50, <|"|>=52, <|think|>=98, <|channel>=100, <|turn>=105, <turn|>=106 ...),
id 107 is "\\n", then the 256 byte tokens <0x00>..<0xFF>, then characters and merges. Because of that fixed
prefix a vocabulary needs at least MIN_VOCAB tokens.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import torch

# ---------------------------------------------------------------------------------------------------------------
# Model geometries
# ---------------------------------------------------------------------------------------------------------------

S, F = "sliding_attention", "full_attention"

# Each entry: text_config kwargs (transformers names; `global_head_dim` / `num_global_key_value_heads` are the
# released config's spelling) plus `canvas_length`. Widths are chosen so the quantizers have work to do:
# "small" rows of 64 (q8_0/q4_0 blocks of 32, not K-quant blocks of 256, some rows of 40 that fit no block),
# "wide" rows of 256 (every K-quant applies).
CONFIGS: dict[str, dict] = {
    "small": dict(
        vocab_size=512, hidden_size=64, intermediate_size=40, layer_types=[S, F, S, S, F],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=32, num_global_key_value_heads=1,
        sliding_window=8, num_experts=6, top_k_experts=2, moe_intermediate_size=12,
        canvas_length=12, max_position_embeddings=512,
    ),
    "gqa4": dict(
        vocab_size=640, hidden_size=96, intermediate_size=64, layer_types=[S, S, S, F, S, F],
        num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        global_head_dim=32, num_global_key_value_heads=1,
        sliding_window=6, num_experts=8, top_k_experts=4, moe_intermediate_size=32,
        canvas_length=16, max_position_embeddings=1024,
    ),
    "wide": dict(
        vocab_size=768, hidden_size=256, intermediate_size=512, layer_types=[S, F, F],
        num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        global_head_dim=128, num_global_key_value_heads=1,
        sliding_window=16, num_experts=8, top_k_experts=3, moe_intermediate_size=256,
        canvas_length=8, max_position_embeddings=2048,
    ),
}

ROPE_PARAMETERS = {
    F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
    S: {"rope_type": "default", "rope_theta": 1e4},
}

# The release's generation_config.json (nested sampler layout, model-spec §2.4).
DEFAULT_GENERATION_CONFIG = {
    "max_new_tokens": 256,
    "max_denoising_steps": 48,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "eos_token_id": [1, 106, 50],
    "pad_token_id": 0,
}


def _text_config_kwargs(name: str) -> dict:
    spec = dict(CONFIGS[name])
    spec.pop("canvas_length")
    spec.update(num_hidden_layers=len(spec["layer_types"]), final_logit_softcapping=30.0,
                use_bidirectional_attention="vision", rope_parameters=copy.deepcopy(ROPE_PARAMETERS),
                rms_norm_eps=1e-6)
    return spec


def build_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, weight_scale: float = 0.3,
                self_conditioning_gain: float = 1.0, conditioning: str = "harsh", vision: dict | None = None,
                image_token_ids: dict | None = None):
    """A random `DiffusionGemmaForBlockDiffusion` with geometry CONFIGS[name] (text + a 1-layer vision tower).

    conditioning="harsh" (default): matrices with std `weight_scale` whatever their fan-in, norm weights
    1 +- 0.3: a network that turns a weight NMSE into a ~10^3 (wide) to 10^5 (gqa4) times larger logit NMSE
    (tests/perturbation_gain.py): the strictest test of exact f32 arithmetic, no measure of a quantized file.
    "calm": trained-like statistics instead (`_condition_low_rank`, `CALM`; `weight_scale` unused): 6-15x on
    wide, still far from the trained sudoku model's 0.6x. "trained_like" (`TRAINED_LIKE`): calm plus smaller
    post-norms, keys aligned with queries and layer scalars near 1: 0.7-2.6x over seeds, like the trained model.

    vision: Gemma4VisionConfig kwargs replacing the default 1-layer tower (see make_tiny_vision_checkpoint); the
    tower, its buffers and embed_vision are then drawn at random too (`_randomize_vision`). image_token_ids:
    {"boi_token_id": .., "eoi_token_id": .., "image_token_id": ..} for the root config.
    """
    if conditioning != "harsh" and conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be 'harsh' or one of {sorted(CONDITIONINGS)}, not {conditioning!r}")
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    vision_cfg = Gemma4VisionConfig(**(vision or dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=8, pooling_kernel_size=2, position_embedding_size=64)))
    cfg = DiffusionGemmaConfig(text_config=DiffusionGemmaTextConfig(**_text_config_kwargs(name)),
                               vision_config=vision_cfg, canvas_length=CONFIGS[name]["canvas_length"],
                               **(image_token_ids or {}))
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if vision is not None:
            _randomize_vision(model, torch.Generator().manual_seed(seed + 7919))
        if conditioning != "harsh":
            _condition_low_rank(model.model.decoder, gen, CONDITIONINGS[conditioning])
        else:
            for pname, p in model.model.decoder.named_parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                # Norm weights / scales around 1 (so a dropped or swapped one shows), matrices small and centred.
                p.copy_(1.0 + 0.3 * noise if (p.ndim == 1 or "norm" in pname) else weight_scale * noise)
        # Scales the self-conditioning MLP's output: with random weights its feedback from one denoising step
        # to the next can amplify rounding noise (see tests/engine_fixtures.py).
        model.model.decoder.self_conditioning.down_proj.weight.mul_(self_conditioning_gain)
        _set_layer_scalars(model, gen, conditioning)
    return model.to(dtype)


def _randomize_vision(model, gen: torch.Generator) -> None:
    """Every weight and buffer of the vision tower and embed_vision drawn at random, at sizes that keep a forward
    pass well-conditioned: matrices N(0, 1/fan_in), norm weights 1 +- 0.1, the position tables N(0, 0.5^2),
    std_bias N(0, 0.1^2), std_scale 1 +- 0.2 (HF's init leaves norms at 1, the tables at 1 and std_* at 0 / 1,
    which would hide a swapped or dropped tensor)."""
    enc = model.model.encoder
    named = list(enc.vision_tower.named_parameters()) + list(enc.vision_tower.named_buffers())
    named += [("embed_vision." + n, p) for n, p in enc.embed_vision.named_parameters()]
    for pname, p in named:
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if pname.endswith("std_bias"):
            value = 0.1 * noise
        elif pname.endswith("std_scale"):
            value = 1.0 + 0.2 * noise
        elif "position_embedding_table" in pname:
            value = 0.5 * noise
        elif p.ndim == 1 or "norm" in pname:
            value = 1.0 + 0.1 * noise
        else:
            value = noise / p.shape[-1] ** 0.5
        p.copy_(value.to(p.dtype))


def _set_layer_scalars(model, gen: torch.Generator, conditioning: str) -> None:
    dec = model.model.decoder.layers
    enc = model.model.encoder.language_model.layers
    target = CONDITIONINGS[conditioning].layer_scalar if conditioning != "harsh" else None
    for i, (d, e) in enumerate(zip(dec, enc)):
        jitter = float(torch.rand((), generator=gen))
        scalar = 0.6 + 0.1 * i + 0.05 * jitter if target is None else target * (1.0 + 0.05 * i) + 0.02 * jitter
        d.layer_scalar.fill_(scalar)
        e.layer_scalar.fill_(1.25 * scalar + 0.05)  # never the decoder's, so a swapped pair is detectable


# "calm" and "trained_like" conditioning: what a trained model looks like to rounding error, with nothing trivial
# left (no weight is all ones or shared, so a swapped or dropped tensor still shows in F32 parity).
@dataclasses.dataclass(frozen=True)
class LowRankInit:
    rank: int = 16                 # the residual stream's working subspace (a trained model's is anisotropic)
    bulk: float = 0.1              # full-rank part of every matrix, relative to its low-rank part
    norm_spread: float = 0.1       # norm weights 1 +- 0.1 (a trained Gemma's sit within ~0.1 of their mean)
    attn_logit_std: float = 2.0    # q.k spread: Gemma 4 has no 1/sqrt(D); trained q/k norms set the temperature
    router_logit_std: float = 6.0  # a confident router: the top expert dominates the mix (3.0 left margins of 4e-3)
    vocab_logit_std: float = 4.0   # logits over the vocabulary spread like a trained head's (softcap 30 far away)
    post_norm: float = 1.0         # post-attention and final post-FFW norm weights (the size of a layer's update)
    qk_align: float = 0.0          # share of each key head's projection copied from its query heads'
    layer_scalar: float | None = None  # decoder layer_scalar ~ this (rising 5% a layer); None: build_model's


CALM = LowRankInit()
# calm plus three things a trained model has and calm lacks. Measured on wide, seeds 0-3, the q4_k_m logit NMSE the
# worst of plain / SC / block 2 against the unquantized model (`python tests/perturbation_gain.py --quantized
# q4_k_m --trained-like post_norm=1.0 --trained-like qk_align=0 wide:trained@0 ...` reproduces a row):
#                                           weight-noise amplification   q4_k_m plain / sc / block2
#   calm                                     15.5  6.1  8.8 11.5          4.5e-2 / 1.3e-1 / 2.0e-1
#   calm, layer_scalar 0.6 (~calm)           14.6  5.8  9.4 22.4          4.9e-2 / 7.8e-2 / 1.8e-1
#     + layer_scalar 0.9                     24.8  5.0  3.9 10.0          4.6e-2 / 9.2e-2 / 2.1e-2
#     + keys aligned with queries (0.5)       5.0  2.6 10.4  7.2          2.3e-2 / 5.8e-2 / 6.6e-2
#     + post-norms 0.5                        3.1  2.8  5.6 11.1          1.7e-2 / 3.9e-2 / 2.1e-2
#   trained_like (all three)                  0.77 0.85 0.65 0.84         2.9e-3 / 4.8e-3 / 6.7e-3
#   (the trained sudoku model: 0.58)
# - post-norm weights 0.5: each layer adds an update of 0.5-0.7 times the stream (the trained sudoku model:
#   1.4 in its first layer, then 0.5-0.9; calm 1.2-1.5 in every layer), so no one layer's rounding dominates;
# - keys aligned with queries: attention peaks on related positions (normalized entropy 0.3-0.5, top weight
#   0.5-0.7; the sudoku model 0.1-0.5 and 0.25-0.85) by a margin rounding does not move, where calm's
#   independent q and k spread it (0.67, 0.32), where the softmax is most sensitive;
# - layer_scalar 0.9-1.0 (calm's 0.6-0.8 shrink the stream, so every later update weighs more).
# Not like the sudoku model: the router stays calm's confident one (top-1 probability 0.8, sudoku's 0.18, barely
# trained), so an expert choice that rounding flips carries a small weight (the 3rd of 3, ~0.03).
TRAINED_LIKE = LowRankInit(post_norm=0.5, qk_align=0.5, layer_scalar=0.9)
CONDITIONINGS = {"calm": CALM, "trained_like": TRAINED_LIKE}

# Matrices by which side touches the residual stream (substrings of HF names; experts and the
# self-conditioning MLP included): readers map it to something else, writers add to it.
_READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "router.proj", "embed_tokens")
_WRITERS = ("o_proj", "down_proj")
# Norms whose weight sets the size of a layer's update (the dense/MoE post-norms feed the final post-FFW norm,
# which rescales their sum, so theirs stay ~1).
_POST_BRANCH_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm.")


def _condition_low_rank(decoder, gen: torch.Generator, init: LowRankInit) -> None:
    """Re-draw the decoder's (= the encoder's, tied) weights the way a trained model looks to rounding error.

    Two things make a random network amplify rounding: every product is an incoherent sum, so a weight's
    relative error passes through whole and adds up over the ~20 products in series (a trained model's
    activations line up with its weights: the signal adds coherently, the rounding does not); and the places
    where random magnitudes are extreme: attention temperature, router margins, head logit spread. So: the
    residual stream works in an `init.rank`-dimensional subspace (readers are G Q^T, writers Q G, Q orthonormal,
    plus an `init.bulk` full-rank part), scaled so each product neither grows nor shrinks what goes through it,
    and those three set to trained-like values. Layer scalars are set by build_model (distinct encoder/decoder
    values)."""
    hidden = decoder.embed_tokens.weight.shape[-1]
    basis, _ = torch.linalg.qr(torch.randn(hidden, init.rank, generator=gen, dtype=torch.float64))
    basis = basis.to(torch.float32)
    for pname, p in decoder.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if "q_norm" in pname or "k_norm" in pname:
            # Unit-RMS q and k of dimension D give q.k with std sqrt(D); scale each side by (std/sqrt(D))^(1/2).
            per_side = (init.attn_logit_std / p.shape[0] ** 0.5) ** 0.5
            p.copy_(per_side * (1.0 + init.norm_spread * noise))
        elif any(k in pname for k in _POST_BRANCH_NORMS):
            p.copy_(init.post_norm * (1.0 + init.norm_spread * noise))
        elif p.ndim == 1 or "norm" in pname:
            p.copy_(1.0 + init.norm_spread * noise)
        else:
            low_rank = _low_rank_matrix(pname, p.shape, basis, gen, init)
            p.copy_(low_rank + init.bulk * float(low_rank.std()) * noise)
    if init.qk_align:
        for layer in decoder.layers:
            _align_keys_with_queries(layer.self_attn, init.qk_align)


def _low_rank_matrix(pname: str, shape, basis: torch.Tensor, gen: torch.Generator,
                     init: LowRankInit) -> torch.Tensor:
    hidden, rank = basis.shape
    if any(k in pname for k in _WRITERS):  # [..., hidden, in]: unit-RMS input -> unit-RMS output in the subspace
        g = torch.randn(*shape[:-2], rank, shape[-1], generator=gen) * (hidden / rank / shape[-1]) ** 0.5
        return basis @ g
    if not any(k in pname for k in _READERS):
        raise ValueError(f"low-rank conditioning: no rule for {pname}")
    if "router.proj" in pname:
        scale = init.router_logit_std  # its input rms(r) * scale / sqrt(hidden) has unit norm: row std = logit std
    elif "embed_tokens" in pname:
        scale = init.vocab_logit_std / hidden ** 0.5  # tied head: logits = E . h, h of unit RMS
    else:
        scale = hidden ** -0.5  # unit-RMS input (norm sqrt(hidden), all in the subspace) -> unit-RMS output
    g = torch.randn(*shape[:-1], rank, generator=gen) * scale  # [..., out, rank]
    return g @ basis.T


def _align_keys_with_queries(attn, align: float) -> None:
    """Each key head's projection := align * its first query head's + sqrt(1 - align^2) * its own (same norm).

    q.k then has a positive part x_q . x_k through the same map: a query attends most to positions whose hidden
    state resembles its own (itself, repeats, its neighbours under RoPE), the way trained heads pick out a few
    related keys by a clear margin, rather than spreading over every key by chance."""
    q, k = attn.q_proj.weight, attn.k_proj.weight
    kv_heads, group = k.shape[0] // attn.head_dim, q.shape[0] // k.shape[0]
    first_query_of_group = q.view(kv_heads * group, attn.head_dim, q.shape[-1])[::group]
    k.copy_(align * first_query_of_group.reshape(k.shape) + (1.0 - align ** 2) ** 0.5 * k)


def save_checkpoint(name: str, out_dir, seed: int = 0, generation_config: dict | None = None,
                    dtype: torch.dtype = torch.float32, released_config_layout: bool = True,
                    max_shard_size: str | None = None, weight_scale: float = 0.3,
                    self_conditioning_gain: float = 1.0, conditioning: str = "harsh", vision: dict | None = None,
                    extra_specials: dict | None = None, image_token_ids: dict | None = None) -> Path:
    """Build model `name` and write a complete HF checkpoint directory; returns its path.

    generation_config: the dict written as generation_config.json (default: the release's nested layout);
    pass {} to write none. released_config_layout: rewrite text_config the way the released config.json spells
    it (`global_head_dim` / `num_global_key_value_heads`, no `per_layer_config`); False keeps what
    transformers' `save_pretrained` writes. max_shard_size (e.g. "20KB") forces sharded safetensors + index.
    vision / image_token_ids: see build_model; extra_specials: see train_tiny_gemma_tokenizer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(name, seed=seed, dtype=dtype, weight_scale=weight_scale,
                        self_conditioning_gain=self_conditioning_gain, conditioning=conditioning, vision=vision,
                        image_token_ids=image_token_ids)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    if released_config_layout:
        _rewrite_config_released_layout(out / "config.json", name)
    gc = DEFAULT_GENERATION_CONFIG if generation_config is None else generation_config
    if gc:
        (out / "generation_config.json").write_text(json.dumps(dict(gc, transformers_version="5.23.0"), indent=2))
    elif (out / "generation_config.json").exists():
        (out / "generation_config.json").unlink()
    save_tokenizer(train_tiny_gemma_tokenizer(CONFIGS[name]["vocab_size"], seed=seed, extra_specials=extra_specials),
                   out, extra_specials=extra_specials)
    return out


def image_processor_config(patch_size: int = 16, max_soft_tokens: int = 280, pooling_kernel_size: int = 3) -> dict:
    """preprocessor_config.json of HF's Gemma4ImageProcessor with these settings (its defaults otherwise: RGB,
    bicubic aspect-preserving resize, rescale by 1/255, no mean/std normalization). Written by hand: the class
    needs torchvision, which the test environment lacks."""
    if max_soft_tokens not in (70, 140, 280, 560, 1120):
        raise ValueError(f"max_soft_tokens must be one of 70, 140, 280, 560, 1120 (HF's check), not {max_soft_tokens}")
    return {"image_processor_type": "Gemma4ImageProcessor", "processor_class": "Gemma4Processor",
            "do_convert_rgb": True, "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": False, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
            "patch_size": patch_size, "max_soft_tokens": max_soft_tokens, "pooling_kernel_size": pooling_kernel_size}


# The tiny vision checkpoint's image markers: the Gemma 4 strings, at ids the tiny vocabulary has room for (the
# release's 255999 / 258882 / 258880 are past its end).
TINY_IMAGE_TOKENS = {40: "<|image>", 41: "<image|>", 42: "<|image|>"}  # begin of image, end of image, soft token
TINY_IMAGE_TOKEN_IDS = {"boi_token_id": 40, "eoi_token_id": 41, "image_token_id": 42}


def make_tiny_vision_checkpoint(path, *, seed: int = 0, text: str = "small", vision_hidden: int = 64,
                                vision_intermediate: int = 96, vision_layers: int = 2, vision_heads: int = 4,
                                vision_head_dim: int = 16, patch_size: int = 16, pooling: int = 3,
                                position_embedding_size: int = 64, standardize: bool = True,
                                rope_theta: float = 100.0, max_soft_tokens: int = 280,
                                dtype: torch.dtype = torch.float32, **save_kwargs) -> Path:
    """A complete tiny HF DiffusionGemma checkpoint WITH a Gemma 4 vision tower, for the projector converter
    (`convert --mmproj`) and the vision engine's tests; returns its path.

    Text model: CONFIGS[text] as `save_checkpoint` builds it (text_config.use_bidirectional_attention "vision").
    Vision tower: Gemma4VisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate,
    num_hidden_layers=vision_layers, num_attention_heads = num_key_value_heads = vision_heads,
    head_dim=vision_head_dim, patch_size, pooling_kernel_size=pooling, position_embedding_size, standardize,
    rope_parameters {"rope_type": "axial", "rope_theta": rope_theta}); every weight and the std_bias / std_scale
    buffers are random (`_randomize_vision`), so a dropped, swapped or mis-permuted tensor shows.
    Image tokens: config boi / eoi / image_token_id = 40 / 41 / 42, and the tokenizer holds "<|image>",
    "<image|>", "<|image|>" there (TINY_IMAGE_TOKENS). Also written: preprocessor_config.json
    (`image_processor_config`: HF's Gemma4ImageProcessor with patch_size, max_soft_tokens (one of 70, 140, 280, 560,
    1120) and pooling_kernel_size) and config.json's `vision_soft_tokens_per_image` = max_soft_tokens, as the release has.
    save_kwargs go to `save_checkpoint` (generation_config, max_shard_size, conditioning, ...).

        path = make_tiny_vision_checkpoint(tmp_path / "vis", seed=1)
    """
    vision = dict(hidden_size=vision_hidden, intermediate_size=vision_intermediate, num_hidden_layers=vision_layers,
                  num_attention_heads=vision_heads, num_key_value_heads=vision_heads, head_dim=vision_head_dim,
                  patch_size=patch_size, pooling_kernel_size=pooling, position_embedding_size=position_embedding_size,
                  standardize=standardize, rope_parameters={"rope_type": "axial", "rope_theta": rope_theta})
    out = save_checkpoint(text, path, seed=seed, dtype=dtype, vision=vision, extra_specials=TINY_IMAGE_TOKENS,
                          image_token_ids=TINY_IMAGE_TOKEN_IDS, **save_kwargs)
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor_config(
        patch_size=patch_size, max_soft_tokens=max_soft_tokens, pooling_kernel_size=pooling), indent=2))
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vision_soft_tokens_per_image"] = max_soft_tokens
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def _rewrite_config_released_layout(path: Path, name: str) -> None:
    cfg = json.loads(path.read_text())
    tc = cfg["text_config"]
    tc.pop("per_layer_config", None)
    tc["global_head_dim"] = CONFIGS[name]["global_head_dim"]
    tc["num_global_key_value_heads"] = CONFIGS[name]["num_global_key_value_heads"]
    cfg["eos_token_id"] = [1, 106, 50]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

# Gemma 4 ids of the tokens the chat template and the tool/thinking parser rely on.
GEMMA4_SPECIAL_IDS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 5: "[multimodal]",
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
}
# Markers llama.cpp's Gemma 4 converter re-types USER_DEFINED (rendered in output, parsed by the chat parser).
GEMMA4_VISIBLE_MARKERS = ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                          "<tool_response|>", '<|"|>']
NEWLINE_ID = 107
FIRST_BYTE_ID = 108
SPACE = "\u2581"  # "▁", SentencePiece's visible space
MIN_VOCAB = FIRST_BYTE_ID + 256 + 1  # specials, "\n", bytes, and at least "▁"


def special_tokens(extra: dict | None = None) -> list[str]:
    """Contents of ids 0..106: the Gemma 4 specials (plus `extra`, {id: token}), `<unusedN>` placeholders
    elsewhere."""
    specials = {**GEMMA4_SPECIAL_IDS, **{int(k): v for k, v in (extra or {}).items()}}
    out, unused = [], 0
    for i in range(NEWLINE_ID):
        if i in specials:
            out.append(specials[i])
        else:
            out.append(f"<unused{unused}>")
            unused += 1
    return out


DEFAULT_CORPUS = """\
The quick brown fox jumps over the lazy dog. A diffusion model starts from noise and refines a whole block of
text at once; every step it keeps the tokens it is sure about and draws the others again.
Hello world! How are you today? I am fine, thank you. The weather is sunny, with a light breeze from the west.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 3.14159 2.71828 -7 +12 1e-6
Question: what is the capital of France? Answer: Paris is the capital of France.
The model reads the prompt, writes a canvas of tokens, and repeats until the answer is complete.
Small models are useful for tests because they load quickly and their results are easy to check by hand.
{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}
Mixture of experts: a router picks a few experts for each token and mixes their outputs with learned weights.
Attention lets every position look at the others; sliding windows keep only the recent neighbours in view.
Café, naïve, résumé, Straße, 東京, こんにちは, 안녕하세요, Привет, مرحبا, 😀 👍 🚀 — punctuation… “quotes” ‘single’.
She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers.
In the beginning the canvas is random; after a few steps it reads like a sentence, then like an answer.
The converter writes every tensor once, in order, and renames the file only when everything has been written.
Tabs\tand\tnewlines\nare whitespace too, and so are    runs of spaces.
"""


def train_tiny_gemma_tokenizer(vocab_size: int, seed: int = 0, corpus: str | None = None,
                               extra_specials: dict | None = None):
    """A Gemma-4-style byte-fallback BPE `tokenizers.Tokenizer` with exactly `vocab_size` tokens.

    Layout: see module docstring. The merges are learned greedily (most frequent adjacent pair, ties broken by
    a seeded shuffle) on `corpus` split into SentencePiece-style words (each starting at a "▁"); characters
    the vocabulary has no room for are left to byte fallback. extra_specials ({id: token}, ids below 107 not
    taken by a Gemma 4 special) adds special tokens in place of `<unusedN>` placeholders. Raises ValueError if
    vocab_size < MIN_VOCAB or the corpus is too small to learn enough merges.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} < {MIN_VOCAB}: the Gemma 4 layout needs 107 specials, "
                         f"'\\n', 256 byte tokens and '{SPACE}'")
    rng = random.Random(seed)
    text = (DEFAULT_CORPUS if corpus is None else corpus).replace(" ", SPACE)
    words = Counter(_sentencepiece_words(text))

    for i in extra_specials or {}:
        if not 0 <= int(i) < NEWLINE_ID or int(i) in GEMMA4_SPECIAL_IDS:
            raise ValueError(f"extra special token id {i}: must be below {NEWLINE_ID} and not a Gemma 4 special's")
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(special_tokens(extra_specials))}
    vocab["\n"] = NEWLINE_ID
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = FIRST_BYTE_ID + b
    budget = vocab_size - len(vocab)

    chars = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    order = [c for c in sorted(chars, key=lambda c: (-chars[c], c)) if c not in (SPACE, "\n")]
    # Give characters at most half of what is left; rare ones go to byte fallback, the rest is for merges.
    alphabet = [SPACE] + order[: max(0, budget // 2 - 1)]
    for c in alphabet:
        vocab[c] = len(vocab)

    known = set(alphabet) | {"\n"}
    seqs = {w: [c if c in known else None for c in w] for w in words}  # None = byte-fallback gap, never merged
    merges: list[tuple[str, str]] = []
    tie = {}  # seeded tie-break rank per pair, fixed on first sight
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                if a is not None and b is not None:
                    pairs[(a, b)] += words[w]
        fresh = [p for p in pairs if a_b_join(p) not in vocab]
        if not fresh:
            # Out of pairs: promote another character, or give up.
            spare = [c for c in order if c not in vocab]
            if not spare:
                raise ValueError(f"corpus too small to reach vocab_size {vocab_size} (stopped at {len(vocab)})")
            vocab[spare[0]] = len(vocab)
            known.add(spare[0])
            seqs = {w: [c if c in known else None for c in w] for w in words}
            seqs = _apply_merges(seqs, merges)
            continue
        for p in fresh:
            tie.setdefault(p, rng.random())
        best = max(fresh, key=lambda p: (pairs[p], tie[p]))
        merges.append(best)
        vocab[a_b_join(best)] = len(vocab)
        seqs = _apply_merges(seqs, [best])

    model = BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens(extra_specials)])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B:1",
                                                       special_tokens=[("<bos>", 2)])
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def a_b_join(pair: tuple[str, str]) -> str:
    return pair[0] + pair[1]


def _sentencepiece_words(text: str):
    """Split at each "▁" (kept at the start of the following word) and around newlines."""
    word = ""
    for c in text:
        if c == SPACE or c == "\n":
            if word:
                yield word
            word = "" if c == "\n" else c
            if c == "\n":
                yield "\n"
        else:
            word += c
    if word:
        yield word


def _apply_merges(seqs: dict, merges: list[tuple[str, str]]) -> dict:
    out = {}
    for w, seq in seqs.items():
        for a, b in merges:
            i, merged = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            seq = merged
        out[w] = seq
    return out


# A small Gemma-4-shaped chat template (turn markers, optional thinking flag); our own, not Google's.
CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- if enable_thinking is defined and enable_thinking -%}
{{- '<|turn>system\\n<|think|><turn|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{%- if message['content'] is string -%}
{%- set text = message['content'] -%}
{%- else -%}
{%- set parts = namespace(text='') -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'image' -%}{%- set parts.text = parts.text + '<|image|>' -%}
{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}
{%- endfor -%}
{%- set text = parts.text -%}
{%- endif -%}
{{- '<|turn>' + role + '\\n' + text | trim + '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- endif -%}
"""


def save_tokenizer(tok, out_dir, extra_specials: dict | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja the way transformers does."""
    from transformers import PreTrainedTokenizerFast

    specials = {**GEMMA4_SPECIAL_IDS, **{int(k): v for k, v in (extra_specials or {}).items()}}
    markers = [t for i, t in sorted(specials.items()) if i > 4]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                 pad_token="<pad>", mask_token="<mask>", extra_special_tokens=markers,
                                 add_bos_token=True, add_eos_token=False, padding_side="left")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "GemmaTokenizer"
    cfg_path.write_text(json.dumps(cfg, indent=2))


if __name__ == "__main__":  # python tests/tiny_hf.py NAME OUT_DIR
    import sys

    print(save_checkpoint(sys.argv[1], sys.argv[2]))
