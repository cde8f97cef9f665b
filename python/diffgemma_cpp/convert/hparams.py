"""config.json + generation_config.json -> the model geometry and the GGUF metadata keys, in the peer's order.

Accepts both spellings of the full-attention geometry: the released config's `global_head_dim` /
`num_global_key_value_heads`, and the `per_layer_config` that transformers' `save_pretrained` writes.
Sampler defaults are read from the flat generation_config layout and from the nested one
(`sampler_config.entropy_bound`, `linear_temperature_schedule_config{t_min,t_max}`,
`diffusion_stopping_config{stability_threshold,confidence_threshold}`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFValueType as VT

from .. import names
from ..errors import ModelFileError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("DiffusionGemmaForBlockDiffusion", "DiffusionGemma4ModelForBlockDiffusion")
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass
class HParams:
    """The text model's geometry (one entry per layer where layers differ)."""
    n_vocab: int
    n_embd: int
    n_ff: int                      # dense MLP and self-conditioning MLP width
    n_layer: int
    n_head: int
    layer_types: list              # SLIDING / FULL per layer
    n_head_kv: list                # per layer
    head_dim: list                 # per layer
    head_dim_swa: int
    head_dim_full: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ctx_train: int
    rms_eps: float
    sliding_window: int
    softcap: float
    rope_theta_full: float
    rope_theta_swa: float
    partial_rotary_full: float
    rope_factor_full: float
    canvas_length: int
    name: str
    sampler: dict = field(default_factory=dict)   # names.key id -> value, only those present in the files

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING


def _load_json(path: Path, what: str, required: bool = True):
    if not path.is_file():
        if required:
            raise ModelFileError(f"{path.parent}: missing {path.name} ({what})")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable {what} ({exc})") from None


def _need(cfg: dict, key: str, where: str):
    if key not in cfg or cfg[key] is None:
        raise UnsupportedModelError(f"config.json: {where} has no {key!r}")
    return cfg[key]


def load_hparams(directory) -> HParams:
    directory = Path(directory)
    cfg = _load_json(directory / "config.json", "model configuration")
    archs = cfg.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UnsupportedModelError(
            f"{directory}: not a DiffusionGemma checkpoint (architectures {archs or 'missing'}, model_type "
            f"{cfg.get('model_type')!r}); this converter supports {', '.join(SUPPORTED_ARCHITECTURES)}")
    tc = cfg.get("text_config") or cfg
    where = "text_config" if "text_config" in cfg else "the root config"

    n_layer = int(_need(tc, "num_hidden_layers", where))
    layer_types = list(tc.get("layer_types") or [SLIDING if (i + 1) % 6 else FULL for i in range(n_layer)])
    if len(layer_types) != n_layer or any(t not in (SLIDING, FULL) for t in layer_types):
        raise UnsupportedModelError(f"config.json: layer_types {layer_types} does not give {SLIDING!r} or "
                                    f"{FULL!r} for each of the {n_layer} layers")
    head_dim_swa = int(_need(tc, "head_dim", where))
    n_kv_swa = int(_need(tc, "num_key_value_heads", where))
    # Full-attention geometry: explicit per_layer_config wins, else the released top-level spelling.
    plc = {int(k): v for k, v in (tc.get("per_layer_config") or {}).items()}
    full_dim_default = int(tc.get("global_head_dim") or 512)
    full_kv_default = int(tc.get("num_global_key_value_heads") or n_kv_swa)
    head_dim, n_head_kv = [], []
    for i, t in enumerate(layer_types):
        if t == SLIDING:
            head_dim.append(int(plc.get(i, {}).get("head_dim", head_dim_swa)))
            n_head_kv.append(int(plc.get(i, {}).get("num_key_value_heads", n_kv_swa)))
        else:
            head_dim.append(int(plc.get(i, {}).get("head_dim", full_dim_default)))
            n_head_kv.append(int(plc.get(i, {}).get("num_key_value_heads", full_kv_default)))
    full_dims = {d for d, t in zip(head_dim, layer_types) if t == FULL}
    swa_dims = {d for d, t in zip(head_dim, layer_types) if t == SLIDING}
    if len(full_dims) > 1 or len(swa_dims) > 1:
        raise UnsupportedModelError(f"config.json: head_dim must be the same on all layers of one attention type "
                                    f"(sliding {sorted(swa_dims)}, full {sorted(full_dims)})")
    head_dim_full = full_dims.pop() if full_dims else full_dim_default

    rope = tc.get("rope_parameters") or {}
    rope_full = rope.get(FULL) or {"rope_theta": 1e6, "partial_rotary_factor": 0.25}
    rope_swa = rope.get(SLIDING) or {"rope_theta": 1e4}

    canvas = cfg.get("canvas_length")
    if not isinstance(canvas, int) or canvas <= 0:
        raise UnsupportedModelError(f"config.json: canvas_length must be a positive integer at the root, "
                                    f"got {canvas!r}")

    hp = HParams(
        n_vocab=int(_need(tc, "vocab_size", where)),
        n_embd=int(_need(tc, "hidden_size", where)),
        n_ff=int(_need(tc, "intermediate_size", where)),
        n_layer=n_layer,
        n_head=int(_need(tc, "num_attention_heads", where)),
        layer_types=layer_types,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_swa=swa_dims.pop() if swa_dims else head_dim_swa,
        head_dim_full=head_dim_full,
        n_expert=int(_need(tc, "num_experts", where)),
        n_expert_used=int(_need(tc, "top_k_experts", where)),
        n_ff_exp=int(_need(tc, "moe_intermediate_size", where)),
        n_ctx_train=int(tc.get("max_position_embeddings") or 262144),
        rms_eps=float(tc.get("rms_norm_eps") or 1e-6),
        sliding_window=int(_need(tc, "sliding_window", where)),
        softcap=float(tc.get("final_logit_softcapping") or 30.0),
        rope_theta_full=float(rope_full.get("rope_theta", 1e6)),
        rope_theta_swa=float(rope_swa.get("rope_theta", 1e4)),
        partial_rotary_full=float(rope_full.get("partial_rotary_factor", 1.0)),
        rope_factor_full=float(rope_full.get("factor", 1.0)),
        canvas_length=canvas,
        name=model_name(directory),
    )
    hp.sampler = load_sampler_defaults(directory)
    return hp


def model_name(directory) -> str:
    """general.name: the folder's name; for a Hugging Face cache snapshot (.../models--org--name/snapshots/<hash>)
    the repository's name instead of the hash."""
    path = Path(directory).resolve()
    if re.fullmatch(r"[0-9a-f]{40}", path.name) and path.parent.name == "snapshots":
        repo = path.parent.parent.name
        if repo.startswith("models--"):
            return repo.split("--")[-1]
    return path.name


def load_sampler_defaults(directory) -> dict:
    """names.KEY id -> value for every sampler default generation_config.json states (flat or nested)."""
    gc = _load_json(Path(directory) / "generation_config.json", "generation config", required=False) or {}

    def pick(*paths):
        for path in paths:
            node = gc
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                return node
        return None

    found = {
        "EB_MAX_STEPS": pick(("max_denoising_steps",)),
        "EB_T_MIN": pick(("t_min",), ("linear_temperature_schedule_config", "t_min")),
        "EB_T_MAX": pick(("t_max",), ("linear_temperature_schedule_config", "t_max")),
        "EB_ENTROPY_BOUND": pick(("sampler_config", "entropy_bound"), ("entropy_bound",)),
        "EB_STABILITY_THRESHOLD": pick(("stability_threshold",), ("diffusion_stopping_config", "stability_threshold")),
        "EB_CONFIDENCE_THRESHOLD": pick(("confidence_threshold",),
                                        ("diffusion_stopping_config", "confidence_threshold")),
    }
    return {k: v for k, v in found.items() if v is not None}


def load_generation_eos(directory) -> list:
    """generation_config's eos_token_id as a list (empty when absent)."""
    gc = _load_json(Path(directory) / "generation_config.json", "generation config", required=False) or {}
    eos = gc.get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


# Value types of the sampler keys, as PR #24423 writes them.
_SAMPLER_TYPES = {
    "EB_MAX_STEPS": VT.UINT32, "EB_T_MIN": VT.FLOAT32, "EB_T_MAX": VT.FLOAT32, "EB_ENTROPY_BOUND": VT.FLOAT32,
    "EB_STABILITY_THRESHOLD": VT.UINT32, "EB_CONFIDENCE_THRESHOLD": VT.FLOAT32,
}


def embed_scale(n_embd: int, dtype: str) -> float:
    """HF's input-embedding multiplier: sqrt(hidden) cast to the weights' dtype (bf16: 53.0 for 2816)."""
    import numpy as np

    value = np.float32(n_embd ** 0.5)
    if dtype == "BF16":  # round to nearest even on the top 16 bits
        bits = int(value.view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    if dtype == "F16":
        return float(np.float16(value))
    return float(value)


def model_kv(hp: HParams, file_type: int, size_label: str, embed_dtype: str | None = None, extra=()) -> list:
    """(key, value, type, sub_type) for general.* and the model keys, in the order PR #24423's converter writes
    them (gguf-format.md, "Observed" table rows 1-37); general.architecture is written by the writer itself.
    Ours on top: `diffusion.embed_scale` (after the sampler keys) when the embedding's dtype is known, then
    `extra` (the image keys of a checkpoint with a vision tower, mmproj.text_vision_kv)."""
    k = names.key
    kv = [
        (k("GENERAL_TYPE"), "model", VT.STRING, None),
        (k("GENERAL_NAME"), hp.name, VT.STRING, None),
        (k("GENERAL_SIZE_LABEL"), size_label, VT.STRING, None),
        (k("BLOCK_COUNT"), hp.n_layer, VT.UINT32, None),
        (k("CONTEXT_LENGTH"), hp.n_ctx_train, VT.UINT32, None),
        (k("EMBEDDING_LENGTH"), hp.n_embd, VT.UINT32, None),
        (k("FEED_FORWARD_LENGTH"), hp.n_ff, VT.UINT32, None),
        (k("HEAD_COUNT"), hp.n_head, VT.UINT32, None),
        (k("HEAD_COUNT_KV"), list(hp.n_head_kv), VT.ARRAY, VT.INT32),
        (k("ROPE_FREQ_BASE"), hp.rope_theta_full, VT.FLOAT32, None),
        (k("ROPE_FREQ_BASE_SWA"), hp.rope_theta_swa, VT.FLOAT32, None),
        (k("RMS_EPS"), hp.rms_eps, VT.FLOAT32, None),
        (k("EXPERT_COUNT"), hp.n_expert, VT.UINT32, None),
        (k("EXPERT_USED_COUNT"), hp.n_expert_used, VT.UINT32, None),
        (k("KEY_LENGTH"), hp.head_dim_full, VT.UINT32, None),
        (k("VALUE_LENGTH"), hp.head_dim_full, VT.UINT32, None),
        (k("GENERAL_FILE_TYPE"), file_type, VT.UINT32, None),
        (k("FINAL_LOGIT_SOFTCAPPING"), hp.softcap, VT.FLOAT32, None),
        (k("SLIDING_WINDOW"), hp.sliding_window, VT.UINT32, None),
        (k("SHARED_KV_LAYERS"), 0, VT.UINT32, None),
        (k("EMBEDDING_LENGTH_PER_LAYER"), 0, VT.UINT32, None),
        (k("SLIDING_WINDOW_PATTERN"), [t == SLIDING for t in hp.layer_types], VT.ARRAY, VT.BOOL),
        (k("KEY_LENGTH_SWA"), hp.head_dim_swa, VT.UINT32, None),
        (k("VALUE_LENGTH_SWA"), hp.head_dim_swa, VT.UINT32, None),
        (k("EXPERT_FEED_FORWARD_LENGTH"), hp.n_ff_exp, VT.UINT32, None),
        (k("ROPE_DIMENSION_COUNT"), hp.head_dim_full, VT.UINT32, None),
        (k("ROPE_DIMENSION_COUNT_SWA"), hp.head_dim_swa, VT.UINT32, None),
        (k("CAUSAL"), False, VT.BOOL, None),
        (k("CANVAS_LENGTH"), hp.canvas_length, VT.UINT32, None),
    ]
    for ident, vtype in _SAMPLER_TYPES.items():
        if ident in hp.sampler:
            value = hp.sampler[ident]
            kv.append((k(ident), int(value) if vtype == VT.UINT32 else float(value), vtype, None))
    if embed_dtype is not None:
        kv.append((k("EMBED_SCALE"), embed_scale(hp.n_embd, embed_dtype), VT.FLOAT32, None))
    kv.extend(extra)
    kv.append((k("GENERAL_QUANTIZATION_VERSION"), 2, VT.UINT32, None))
    return kv
