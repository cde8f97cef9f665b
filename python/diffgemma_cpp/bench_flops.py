"""Model geometry from a GGUF and the floating-point work of one encoder chunk / one denoising step.

Counts multiply-adds of the matrix products as 2 FLOPs (the convention GEMM peaks are quoted in); norms,
softmaxes, RoPE and other element-wise work are left out (a few percent at these widths). Used by the
benchmark to turn milliseconds into GFLOP/s and to compare them with the machine's GEMM peak (spec §6).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import names
from .errors import ModelLoadError


@dataclass(frozen=True)
class Shape:
    n_vocab: int
    n_embd: int
    n_ff: int            # dense MLP width (also the self-conditioning MLP's)
    n_head: int
    n_head_kv: tuple     # per layer
    head_dim_swa: int
    head_dim_full: int
    is_swa: tuple        # per layer
    n_swa: int           # sliding window (keys a query sees, itself included)
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    canvas: int

    @property
    def n_layer(self) -> int:
        return len(self.is_swa)


def read_shape(path) -> Shape:
    """The geometry of a DiffusionGemma GGUF (metadata only; the tensors are not read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(Path(path)))
    except Exception as exc:  # gguf-py raises ValueError/struct errors for foreign or corrupt files
        raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from exc
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise ModelLoadError(f"{path}: no general.architecture key")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()

    def get(key, *, array=False):
        field = reader.fields.get(key.replace("%s", arch))
        if field is None:
            raise ModelLoadError(f"{path}: missing metadata key {key.replace('%s', arch)}")
        values = [field.parts[i].tolist()[0] for i in field.data]
        return values if array else values[0]

    n_layer = int(get("%s.block_count"))
    kv = get("%s.attention.head_count_kv", array=True)
    pattern = get("%s.attention.sliding_window_pattern", array=True)
    # The vocabulary is the embedding's row count (a file may carry no tokenizer, e.g. bench models).
    embd = next((t for t in reader.tensors if t.name == names.tensor("TOKEN_EMBD")), None)
    n_vocab = int(embd.shape[1]) if embd is not None and len(embd.shape) > 1 else 0
    tokens = names.key("TOKENIZER_TOKENS")
    if n_vocab == 0 and tokens in reader.fields:
        n_vocab = len(reader.fields[tokens].data)
    return Shape(
        n_vocab=n_vocab,
        n_embd=int(get("%s.embedding_length")), n_ff=int(get("%s.feed_forward_length")),
        n_head=int(get("%s.attention.head_count")),
        n_head_kv=tuple(int(x) for x in (kv if len(kv) == n_layer else kv * n_layer)),
        head_dim_swa=int(get("%s.attention.key_length_swa")), head_dim_full=int(get("%s.attention.key_length")),
        is_swa=tuple(bool(x) for x in pattern), n_swa=int(get("%s.attention.sliding_window")),
        n_expert=int(get("%s.expert_count")), n_expert_used=int(get("%s.expert_used_count")),
        n_ff_exp=int(get("%s.expert_feed_forward_length")), canvas=int(get("diffusion.canvas_length")),
    )


def _layer_flops(s: Shape, il: int, rows: int, n_keys: int) -> float:
    D = s.head_dim_swa if s.is_swa[il] else s.head_dim_full
    q, kv = s.n_head * D, s.n_head_kv[il] * D
    n_kv_proj = 2 if s.is_swa[il] else 1  # full layers have no v_proj (V = raw K)
    proj = 2 * rows * s.n_embd * (q + n_kv_proj * kv + q)           # q, k(, v), o
    attn = 2 * 2 * rows * n_keys * s.n_head * D                      # QK^T and PV
    dense = 3 * 2 * rows * s.n_embd * s.n_ff                         # gate, up, down
    router = 2 * rows * s.n_embd * s.n_expert
    experts = s.n_expert_used * 3 * 2 * rows * s.n_embd * s.n_ff_exp  # gate, up, down of each chosen expert
    return float(proj + attn + dense + router + experts)


def _keys(s: Shape, il: int, n_past: int, rows: int, causal: bool) -> float:
    """Average keys per query row."""
    seen = min(n_past, s.n_swa - 1) if s.is_swa[il] else n_past
    return seen + ((rows + 1) / 2 if causal else rows)


def step_flops(s: Shape, n_past: int, sc_top_k: int = 0) -> dict:
    """FLOPs of one denoising step (decoder pass over the canvas with self-conditioning) after n_past cached
    positions: {"backbone", "head", "sc"} (sc = probs @ E plus the self-conditioning MLP; with sc_top_k > 0
    only k embedding rows per canvas position enter the product)."""
    C = s.canvas
    backbone = sum(_layer_flops(s, il, C, int(_keys(s, il, n_past, C, False))) for il in range(s.n_layer))
    head = 2.0 * C * s.n_embd * s.n_vocab
    kept = min(sc_top_k, s.n_vocab) if sc_top_k > 0 else s.n_vocab
    sc = 2.0 * C * kept * s.n_embd + 3 * 2.0 * C * s.n_embd * s.n_ff
    return {"backbone": backbone, "head": head, "sc": sc}


def encode_flops(s: Shape, n_tokens: int, n_past: int = 0) -> float:
    """FLOPs of encoding n_tokens clean tokens after n_past cached positions (no head; causal attention)."""
    return sum(_layer_flops(s, il, n_tokens, int(_keys(s, il, n_past, n_tokens, True))) for il in range(s.n_layer))
