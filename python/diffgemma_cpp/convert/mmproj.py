"""The vision tower of a DiffusionGemma checkpoint -> a projector ("mmproj") GGUF in llama.cpp's Gemma-4 layout.

DiffusionGemma uses Gemma 4's vision block unchanged: a patch embedder (a linear map of each 16x16x3 patch plus
a learned x/y position table), a stack of Gemma-style transformer layers, a k x k average pool scaled by
sqrt(hidden), an optional standardization (bias and scale buffers) and `embed_vision`, an RMS-normalized linear
map into the text model's width. The file written here is what llama.cpp's converter writes for Gemma 4
(`general.architecture` "clip", projector type "gemma4v", `v.*` / `mm.*` tensors), so its clip loader and ours
read the same file. MMPROJ_FORMAT.md lists the keys, the tensors and every difference from llama.cpp's output.

Only the patch embedding is rearranged: HF's `input_proj` [n_embd, p*p*3] reads each patch in (row, column,
channel) order, the GGUF holds it as a convolution kernel [n_embd, 3, p, p] (ggml ne [p, p, 3, n_embd]). Every
other tensor is the HF tensor with its dimensions reversed, as in the text model.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType as VT

from .. import names
from ..errors import InvalidArgumentError, ModelFileError, UnsupportedModelError
from .checkpoint import Checkpoint
from .quant_formats import QuantScheme
from .quant_rules import OUTTYPES, PROJECTOR_OUTTYPE_CHOICES, fits
from .tensors import OutTensor, RowSource, _Resolver, _source, raise_if_mismatched

logger = logging.getLogger("diffgemma_cpp.convert")

VISION = "model.encoder.vision_tower."
EMBED_VISION = "model.encoder.embed_vision."

# Values (not names) of the projector file, as llama.cpp writes them.
CLIP_ARCH = "clip"
GGUF_TYPE_MMPROJ = "mmproj"
PROJECTOR_GEMMA4V = "gemma4v"
# llama.cpp's converter writes a fixed, unused image size for Gemma 4 (its images are sized dynamically).
LLAMA_CPP_IMAGE_SIZE = 224
DEFAULT_MAX_SOFT_TOKENS = 280     # HF Gemma4ImageProcessor.max_soft_tokens
DEFAULT_IMAGE_MEAN = [0.0, 0.0, 0.0]  # HF Gemma4ImageProcessor: no normalization (the model rescales itself)
DEFAULT_IMAGE_STD = [1.0, 1.0, 1.0]

# --outtype values the projector can be written in; for any other text type it gets `projector_outtype`'s.
PROJECTOR_OUTTYPES = {k: OUTTYPES[k] for k in PROJECTOR_OUTTYPE_CHOICES}


@dataclass
class VisionHParams:
    """The vision tower's geometry and the projector keys' values."""
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    head_dim: int
    patch_size: int
    pooling: int
    n_pos: int                    # rows of each of the two position tables
    standardize: bool
    rope_theta: float
    eps: float
    n_embd_text: int
    max_soft_tokens: int
    image_mean: list = field(default_factory=lambda: list(DEFAULT_IMAGE_MEAN))
    image_std: list = field(default_factory=lambda: list(DEFAULT_IMAGE_STD))


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable ({exc})") from None


def _image_processor_config(directory: Path) -> dict:
    """The image processor's settings: preprocessor_config.json, then processor_config.json's "image_processor"
    (the later file wins, as in llama.cpp's converter); {} when the checkpoint has neither."""
    out: dict = {}
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        cfg = _load_json(pre)
        if isinstance(cfg, dict):
            out.update(cfg)
    proc = directory / "processor_config.json"
    if proc.is_file():
        cfg = _load_json(proc)
        if isinstance(cfg, dict):
            out.update(cfg)
            if isinstance(cfg.get("image_processor"), dict):
                out.update(cfg["image_processor"])
    return out


def _int(vc: dict, key: str, default=None) -> int:
    value = vc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"config.json: vision_config.{key} must be a positive integer, got {value!r}")
    return value


def load_vision_hparams(directory) -> VisionHParams | None:
    """The vision tower's hparams from config.json (None when it has no vision_config)."""
    directory = Path(directory)
    cfg = _load_json(directory / "config.json")
    vc = cfg.get("vision_config")
    if not vc:
        return None
    if not isinstance(vc, dict):
        raise UnsupportedModelError(f"config.json: vision_config is not an object ({type(vc).__name__})")
    if vc.get("model_type", "gemma4_vision") != "gemma4_vision":
        raise UnsupportedModelError(f"config.json: vision_config.model_type {vc.get('model_type')!r}; only Gemma 4's "
                                    "vision tower (gemma4_vision) can be converted")
    # The engine's tower computes HF's default MLP activation exactly (csrc/graph/vision_graph.cpp); another
    # would convert fine and then compute the wrong function.
    activation = vc.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise UnsupportedModelError(f"config.json: vision_config.hidden_activation {activation!r}; the engine's tower "
                                    "computes gelu_pytorch_tanh only")
    if vc.get("use_clipped_linears"):
        raise UnsupportedModelError("config.json: vision_config.use_clipped_linears is true; the projector converter "
                                    "supports only plain linears (the released DiffusionGemma has none clipped)")
    tc = cfg.get("text_config") or cfg
    n_embd, n_head = _int(vc, "hidden_size"), _int(vc, "num_attention_heads")
    head_dim = _int(vc, "head_dim", n_embd // n_head)
    n_kv = _int(vc, "num_key_value_heads", n_head)
    if head_dim * n_head != n_embd or n_kv != n_head:
        raise UnsupportedModelError(
            f"config.json: vision_config has {n_head} heads of {head_dim} ({n_kv} key/value heads) for a width of "
            f"{n_embd}; the projector layout (llama.cpp's gemma4v) needs heads x head_dim = hidden_size and as many "
            "key/value heads as query heads")
    rope = vc.get("rope_parameters") or {}
    proc = _image_processor_config(directory)
    soft = proc.get("max_soft_tokens", cfg.get("vision_soft_tokens_per_image", DEFAULT_MAX_SOFT_TOKENS))
    if isinstance(soft, bool) or not isinstance(soft, int) or soft <= 0:
        raise UnsupportedModelError(f"max_soft_tokens (image processor) / vision_soft_tokens_per_image must be a "
                                    f"positive integer, got {soft!r}")
    mean = proc.get("image_mean", DEFAULT_IMAGE_MEAN)
    std = proc.get("image_std", DEFAULT_IMAGE_STD)
    for what, v in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise UnsupportedModelError(f"image processor config: {what} must be 3 numbers, got {v!r}")
    text_width = tc.get("hidden_size")
    if isinstance(text_width, bool) or not isinstance(text_width, int) or text_width <= 0:
        raise UnsupportedModelError(f"config.json: text hidden_size must be a positive integer, got {text_width!r}")
    return VisionHParams(
        n_embd=n_embd, n_ff=_int(vc, "intermediate_size"), n_layer=_int(vc, "num_hidden_layers"), n_head=n_head,
        head_dim=head_dim, patch_size=_int(vc, "patch_size", 16), pooling=_int(vc, "pooling_kernel_size", 3),
        n_pos=_int(vc, "position_embedding_size", 10240), standardize=bool(vc.get("standardize", False)),
        rope_theta=float(rope.get("rope_theta", 100.0)), eps=float(vc.get("rms_norm_eps", 1e-6)),
        n_embd_text=text_width, max_soft_tokens=soft,
        image_mean=[float(x) for x in mean], image_std=[float(x) for x in std])


def text_vision_kv(directory, n_vocab: int, log=print) -> list:
    """The text GGUF's image keys (ours): the image soft-token id and whether an image's span attends
    bidirectionally in the encoder. Only for a checkpoint with a vision tower (none otherwise), and only when the
    id is a token of the vocabulary (a text-only model whose class merely requires a stub tower, like the Sudoku
    demo's, gets none)."""
    cfg = _load_json(Path(directory) / "config.json")
    if not cfg.get("vision_config"):
        return []
    token = cfg.get("image_token_id", 258880)  # DiffusionGemmaConfig's default
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise UnsupportedModelError(f"config.json: image_token_id must be a non-negative integer, got {token!r}")
    if token >= n_vocab:
        log(f"image_token_id {token} is outside the vocabulary ({n_vocab} tokens): the model is written without "
            "image keys (it takes no images)")
        return []
    tc = cfg.get("text_config") or cfg
    return [(names.key("IMAGE_TOKEN_ID"), token, VT.UINT32, None),
            (names.key("VISION_BIDIRECTIONAL"), tc.get("use_bidirectional_attention") == "vision", VT.BOOL, None)]


def _patch_kernel_source(src: RowSource, n_embd: int, p: int) -> RowSource:
    """HF input_proj [n_embd, p*p*3] (each row a patch in (row, column, channel) order) as the rows of the conv
    kernel [n_embd, 3, p, p]: output row (e*3 + c)*p + y holds pixels x = 0..p-1 of row y, channel c."""
    rows_per_embd = 3 * p

    def read(start: int, count: int) -> np.ndarray:
        e0, e1 = start // rows_per_embd, (start + count - 1) // rows_per_embd + 1
        hf = src.read(e0, e1 - e0).reshape(e1 - e0, p, p, 3).transpose(0, 3, 1, 2).reshape(-1, p)
        off = start - e0 * rows_per_embd
        return np.ascontiguousarray(hf[off:off + count])

    return RowSource(n_embd * rows_per_embd, p, src.dtype, read, origin=src.origin)


# Per-layer tensors: (names-table id, HF suffix under encoder.layers.N., HF shape fn).
def _layer_specs(v: VisionHParams):
    E, F, D = v.n_embd, v.n_ff, v.head_dim
    return [
        ("V_LN1", "input_layernorm.weight", (E,)),
        ("V_ATTN_Q", "self_attn.q_proj.linear.weight", (E, E)),
        ("V_ATTN_K", "self_attn.k_proj.linear.weight", (E, E)),
        ("V_ATTN_V", "self_attn.v_proj.linear.weight", (E, E)),
        ("V_ATTN_Q_NORM", "self_attn.q_norm.weight", (D,)),
        ("V_ATTN_K_NORM", "self_attn.k_norm.weight", (D,)),
        ("V_ATTN_OUT", "self_attn.o_proj.linear.weight", (E, E)),
        ("V_ATTN_POST_NORM", "post_attention_layernorm.weight", (E,)),
        ("V_LN2", "pre_feedforward_layernorm.weight", (E,)),
        ("V_FFN_GATE", "mlp.gate_proj.linear.weight", (F, E)),
        ("V_FFN_UP", "mlp.up_proj.linear.weight", (F, E)),
        ("V_FFN_DOWN", "mlp.down_proj.linear.weight", (E, F)),
        ("V_FFN_POST_NORM", "post_feedforward_layernorm.weight", (E,)),
    ]


def has_vision_tensors(ckpt: Checkpoint) -> bool:
    return any(n.startswith(VISION) for n in ckpt.names())


def plan_mmproj_tensors(v: VisionHParams, ckpt: Checkpoint, scheme: QuantScheme | None = None) -> list:
    """The projector's tensors in file order, each with its source. Raises UnsupportedModelError listing every
    missing or misshapen tensor at once."""
    if not has_vision_tensors(ckpt):
        raise UnsupportedModelError(f"the checkpoint has no vision tower (no {VISION}* tensors): nothing to write "
                                    "as a projector; leave out --mmproj")
    res = _Resolver(ckpt, scheme)
    out: list[OutTensor] = []

    def add(ident: str, layer, suffix: str, shape: tuple, prefix: str = VISION, role: str = "weight"):
        found = res.find(suffix, shape, prefixes=(prefix,))
        if found is None:
            return None
        name = names.tensor(ident) if layer is None else names.layer_tensor(ident, layer)
        t = OutTensor(name, tuple(reversed(shape)), role, layer, _source(found), found.name)
        out.append(t)
        return t

    p, E = v.patch_size, v.n_embd
    found = res.find("patch_embedder.input_proj.weight", (E, p * p * 3), prefixes=(VISION,))
    if found is not None:
        out.append(OutTensor(names.tensor("V_PATCH_EMBD"), (p, p, 3, E), "patch_embd", None,
                             _patch_kernel_source(_source(found), E, p), found.name))
    add("V_POSITION_EMBD", None, "patch_embedder.position_embedding_table", (2, v.n_pos, E), role="position")
    for il in range(v.n_layer):
        for ident, suffix, shape in _layer_specs(v):
            add(ident, il, f"encoder.layers.{il}.{suffix}", shape, role="norm" if len(shape) == 1 else "weight")
    if v.standardize:
        add("V_STD_BIAS", None, "std_bias", (E,), role="norm")
        add("V_STD_SCALE", None, "std_scale", (E,), role="norm")
    add("MM_INPUT_PROJECTION", None, "embedding_projection.weight", (v.n_embd_text, E), prefix=EMBED_VISION)

    raise_if_mismatched(res, "the vision tower does not match config.json's vision_config")
    res.finder.mark_ignored()
    extra = [n for n in ckpt.names() if (n.startswith(VISION) or n.startswith(EMBED_VISION)) and n not in res.used]
    if extra:
        raise UnsupportedModelError(f"the vision tower has {len(extra)} tensor(s) the projector layout has no place "
                                    f"for: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    return out


def projector_outtype(outtype: str, source_dtypes=()) -> str:
    """The projector's type for a conversion's --outtype: the same for f32 / f16 / bf16 / q8_0; for `auto` and the
    quantized text recipes, the checkpoint's 16-bit float type (bf16 for a bf16 checkpoint, else f16), as the
    usual mmproj files are."""
    key = outtype.lower()
    if key in PROJECTOR_OUTTYPES:
        return key
    return "bf16" if "BF16" in set(source_dtypes) else "f16"


def assign_mmproj_types(tensors, outtype: str) -> int:
    """Set `.qtype` on every projector tensor (llama.cpp's rules for Gemma 4's projector) and return the
    general.file_type: 1-D tensors (norms, std_bias / std_scale) and the position table stay F32; the patch
    kernel is F16 in an f16 file and F32 otherwise; the matrices get the type asked for, F16 where a row does not
    split into whole q8_0 blocks."""
    key = outtype.lower()
    if key not in PROJECTOR_OUTTYPES:
        raise InvalidArgumentError(f"projector type {outtype!r}: choose one of {', '.join(PROJECTOR_OUTTYPES)}")
    base, file_type = PROJECTOR_OUTTYPES[key].default, PROJECTOR_OUTTYPES[key].file_type
    fell_back = []
    for t in tensors:
        if t.n_dims < 2 or t.role == "position":
            t.qtype = Q.F32
        elif t.role == "patch_embd":
            t.qtype = Q.F16 if base == Q.F16 else Q.F32
        elif fits(base, t.ne[0]):
            t.qtype = base
        else:
            t.qtype = Q.F16
            fell_back.append(f"{t.name} (rows of {t.ne[0]})")
    if fell_back:
        logger.warning("%d projector tensor(s) written as F16, as their rows do not split into whole %s blocks: %s",
                       len(fell_back), base.name, ", ".join(fell_back[:6]) + (" ..." if len(fell_back) > 6 else ""))
    return int(file_type)


def mmproj_kv(v: VisionHParams, name: str, size_label: str, file_type: int) -> list:
    """(key, value, type, sub_type) of the projector file in llama.cpp's order (general.architecture "clip" is
    written by the writer), then ours: the pooling factor, the RoPE base and the soft tokens per image."""
    k = names.key
    return [
        (k("GENERAL_TYPE"), GGUF_TYPE_MMPROJ, VT.STRING, None),
        (k("GENERAL_NAME"), name, VT.STRING, None),
        (k("GENERAL_SIZE_LABEL"), size_label, VT.STRING, None),
        (k("GENERAL_FILE_TYPE"), file_type, VT.UINT32, None),
        (k("CLIP_HAS_VISION_ENCODER"), True, VT.BOOL, None),
        (k("CLIP_VISION_PROJECTION_DIM"), v.n_embd_text, VT.UINT32, None),
        (k("CLIP_VISION_IMAGE_SIZE"), LLAMA_CPP_IMAGE_SIZE, VT.UINT32, None),
        (k("CLIP_VISION_PATCH_SIZE"), v.patch_size, VT.UINT32, None),
        (k("CLIP_VISION_EMBEDDING_LENGTH"), v.n_embd, VT.UINT32, None),
        (k("CLIP_VISION_FEED_FORWARD_LENGTH"), v.n_ff, VT.UINT32, None),
        (k("CLIP_VISION_BLOCK_COUNT"), v.n_layer, VT.UINT32, None),
        (k("CLIP_VISION_HEAD_COUNT"), v.n_head, VT.UINT32, None),
        (k("CLIP_VISION_IMAGE_MEAN"), list(v.image_mean), VT.ARRAY, VT.FLOAT32),
        (k("CLIP_VISION_IMAGE_STD"), list(v.image_std), VT.ARRAY, VT.FLOAT32),
        (k("CLIP_VISION_PROJECTOR_TYPE"), PROJECTOR_GEMMA4V, VT.STRING, None),
        (k("CLIP_VISION_LAYER_NORM_EPS"), v.eps, VT.FLOAT32, None),
        (k("CLIP_VISION_SCALE_FACTOR"), v.pooling, VT.UINT32, None),
        (k("CLIP_VISION_ROPE_FREQ_BASE"), v.rope_theta, VT.FLOAT32, None),
        (k("CLIP_VISION_MAX_SOFT_TOKENS"), v.max_soft_tokens, VT.UINT32, None),
        (k("GENERAL_QUANTIZATION_VERSION"), 2, VT.UINT32, None),
    ]
