"""A random-weight DiffusionGemma GGUF at the RELEASED shapes, for speed measurements (issue 8).

    python bench/make_real_shape_gguf.py -o /tmp/real4.gguf --layers 4            # 4 of the 30 layers
    python bench/make_real_shape_gguf.py -o /tmp/smoke.gguf --layers 1 --vocab 32768

Geometry is the release's (model-spec.md §2.2): hidden 2816, dense/self-conditioning FFN 2112, 16 query heads,
sliding layers 8 KV heads x 256, full layers 2 KV heads x 512 (no attn_v), pattern 5 sliding : 1 full,
128 experts top-8 of width 704, vocabulary 262144, canvas 256. `--layers N` keeps the first N layers of the
release pattern (n_layer = N in the metadata) with the types those layers have in the 30-layer file, so
per-layer costs can be measured and extrapolated to 30. The 30-layer plan is the published Q4_K_M's mix
(gguf-format.md §8: 692 tensors, f32 423, q4_K 194, q5_0 33, q8_0 28, q6_K 14; 15.6 GiB).

Tensor names, order, metadata keys and the per-tensor types come from the converter (names table, `model_kv`,
`_layer_specs`, `assign_types` for the q4_k_m recipe), and the file is written by the converter's streaming
writer (temporary folder + rename, so an interrupted run leaves no half-written GGUF).

Speed: nothing is quantized. For each ggml type a pool of random BLOCK BYTES is made once (random codes, with
the block scales fixed so the dequantized weights have mean ~0 and std `WEIGHT_STD`), and every tensor is a
window into that pool at its own offset. The pool's block count is a prime larger than any writer chunk, so
rows do not repeat in step with the row length. Writing is then memory-copy bound (the 262144 x 2816 embedding,
605 MB of Q6_K, takes about a second here). Weight std 0.02 with RMSNorm everywhere keeps activations and logits
O(1) (logit std ~1.06); norms are 1, router scales 1, q/k norms 256^-1/4 or 512^-1/4 so that q.k (scale 1.0)
has std ~1, and the two post-sublayer norms a gain that makes the softmaxes neither one-hot nor flat
(`residual_gain`).

No tokenizer is written: the engine loads without one, and benchmarks feed token ids.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from diffgemma_cpp import names
from diffgemma_cpp.convert import writer
from diffgemma_cpp.convert.encode import row_bytes
from diffgemma_cpp.convert.hparams import FULL, SLIDING, HParams, model_kv
from diffgemma_cpp.convert.pipeline import size_label
from diffgemma_cpp.convert.quant_rules import OUTTYPES, assign_types
# The converter's own per-layer and global tensor tables (GGUF id, HF suffix, HF shape), so the names, order
# and shapes cannot drift from what `convert` writes.
from diffgemma_cpp.convert.tensors import (
    _GLOBAL_SPECS, _layer_specs, ROLE_BY_ID, OutTensor, RowSource, array_source, rope_freqs)

RELEASE_LAYERS = 30
RELEASE_VOCAB = 262144
RELEASE_EXPERTS = 128
WEIGHT_STD = 0.02
ROUTER_STD = 1.0      # router logits = rms(x) * 2816^-1/2 @ W: std ~ROUTER_STD, a spread-out but not flat routing
POOL_MIN_BYTES = 16 << 20
RESIDUAL_RMS = 6.0      # see residual_gain; 6 gives per-position entropies from ~0.7 to ~9 nats
OUTTYPE_CHOICES = ("q4_k_m", "q8_0", "f16")


def release_hparams(n_layers: int = RELEASE_LAYERS, n_vocab: int = RELEASE_VOCAB,
                    n_expert: int = RELEASE_EXPERTS) -> HParams:
    """The released text model's geometry (model-spec.md §2.2) with the first n_layers layers of its pattern."""
    if not 1 <= n_layers <= RELEASE_LAYERS:
        raise ValueError(f"--layers must be in 1..{RELEASE_LAYERS}, got {n_layers}")
    if n_vocab < 256 or n_vocab > RELEASE_VOCAB:
        raise ValueError(f"--vocab must be in 256..{RELEASE_VOCAB}, got {n_vocab}")
    if not 8 <= n_expert <= RELEASE_EXPERTS:
        raise ValueError(f"--experts must be in 8..{RELEASE_EXPERTS} (top-8 routing), got {n_expert}")
    layer_types = ([SLIDING] * 5 + [FULL]) * 5
    layer_types = layer_types[:n_layers]
    return HParams(
        n_vocab=n_vocab, n_embd=2816, n_ff=2112, n_layer=n_layers, n_head=16, layer_types=layer_types,
        n_head_kv=[8 if t == SLIDING else 2 for t in layer_types],
        head_dim=[256 if t == SLIDING else 512 for t in layer_types], head_dim_swa=256, head_dim_full=512,
        n_expert=n_expert, n_expert_used=8, n_ff_exp=704, n_ctx_train=262144, rms_eps=1e-6, sliding_window=1024,
        softcap=30.0, rope_theta_full=1e6, rope_theta_swa=1e4, partial_rotary_full=0.25, rope_factor_full=1.0,
        canvas_length=256, name=f"diffgemma-real-shape-random-{n_layers}L")


# ---------------------------------------------------------------------------------------------------------------
# Random blocks
# ---------------------------------------------------------------------------------------------------------------

def _f16_bytes(value: float) -> np.ndarray:
    return np.array([value], dtype="<f2").view(np.uint8)


def _q4_k_scales() -> np.ndarray:
    """Q4_K's 12 packed bytes for sub-block scale 8 and min 60 on all 8 sub-blocks: with dmin = d the weights are
    d * (8 q - 60), q in 0..15, i.e. mean 0 and std 8 d sqrt(255/12)."""
    sc, m = 8, 60
    out = np.empty(12, dtype=np.uint8)
    out[0:4] = (sc & 63) | ((sc >> 4) << 6)       # scales of sub-blocks 0-3, top bits of 4-7's scales
    out[4:8] = (m & 63) | ((m >> 4) << 6)         # mins of sub-blocks 0-3, top bits of 4-7's mins
    out[8:12] = (sc & 15) | ((m & 15) << 4)       # low nibbles of sub-blocks 4-7's scale and min
    return out


def _fill_block_fields(qtype: Q, blocks: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Overwrite the scale fields of random `blocks` ([n, type_size] uint8) so the codes dequantize to mean ~0 and
    std `std` (the codes stay uniform random). Symmetric types (code - offset) are off-centre by half a step, so
    their block scale gets a random sign: that cancels the bias across blocks."""
    n = blocks.shape[0]
    uniform_std = lambda levels: np.sqrt((levels * levels - 1) / 12.0)  # noqa: E731  (std of a uniform code)

    def signed_f16(value: float) -> np.ndarray:  # [n, 2] bytes of +-value
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        return (signs * value).astype("<f2").view(np.uint8).reshape(n, 2)

    if qtype == Q.Q8_0:                           # [d f16][32 x int8]: w = d q
        blocks[:, 0:2] = signed_f16(std / uniform_std(256))
    elif qtype == Q.Q5_0:                         # [d f16][qh 4][qs 16]: w = d (q - 16), q 5-bit
        blocks[:, 0:2] = signed_f16(std / uniform_std(32))
    elif qtype == Q.Q4_0:                         # [d f16][qs 16]: w = d (q - 8)
        blocks[:, 0:2] = signed_f16(std / uniform_std(16))
    elif qtype == Q.Q4_K:                         # [d f16][dmin f16][scales 12][qs 128]: w = d sc q - dmin m
        d = std / (8 * uniform_std(16))
        blocks[:, 0:2] = _f16_bytes(d)
        blocks[:, 2:4] = _f16_bytes(d)
        blocks[:, 4:16] = _q4_k_scales()
    elif qtype == Q.Q6_K:                         # [ql 128][qh 64][scales 16 x int8][d f16]: w = d s (q - 32)
        scale = 4
        blocks[:, 192:208] = np.where(rng.random((n, 16)) < 0.5, -scale, scale).astype(np.int8).view(np.uint8)
        blocks[:, 208:210] = _f16_bytes(std / (scale * uniform_std(64)))
    else:
        raise ValueError(f"no random-block generator for {qtype.name}")


class BlockPool:
    """Random blocks of one ggml type, handed out as windows: tensor rows [start, start+count) are the pool's
    blocks from (tensor offset + start * blocks per row) on, wrapping around the (prime) pool length."""

    def __init__(self, qtype: Q, max_chunk_blocks: int, rng: np.random.Generator, std: float = WEIGHT_STD):
        self.qtype = qtype
        self.block_elems, self.type_size = GGML_QUANT_SIZES[qtype]
        self.n = _next_prime(max(max_chunk_blocks + 1, POOL_MIN_BYTES // self.type_size))
        if qtype in (Q.F16, Q.F32):  # float types: one "block" is one element
            values = rng.standard_normal(self.n, dtype=np.float32) * std
            blocks = values.astype("<f2" if qtype == Q.F16 else "<f4").view(np.uint8).reshape(self.n, self.type_size)
        else:
            blocks = np.frombuffer(rng.bytes(self.n * self.type_size), dtype=np.uint8).reshape(self.n, self.type_size)
            blocks = blocks.copy()
            _fill_block_fields(qtype, blocks, std, rng)
        self.doubled = np.concatenate([blocks, blocks])  # a window of <= n blocks never needs to wrap

    def source(self, n_rows: int, row_len: int, offset: int) -> RowSource:
        if row_len % self.block_elems:
            raise ValueError(f"{self.qtype.name}: row length {row_len} is not a multiple of {self.block_elems}")
        per_row = row_len // self.block_elems

        def read_raw(start: int, count: int) -> np.ndarray:
            first, n_blocks = (offset + start * per_row) % self.n, count * per_row
            if n_blocks <= self.n:
                return self.doubled[first:first + n_blocks].reshape(-1)
            idx = (first + np.arange(n_blocks)) % self.n  # only for chunks larger than the pool (not the writer's)
            return self.doubled[idx].reshape(-1)

        def read(start: int, count: int):
            raise RuntimeError("random block sources hold no float data")  # the writer copies raw bytes

        return RowSource(n_rows, row_len, self.qtype.name, read, read_raw, int(self.qtype), origin="random blocks")


def _next_prime(n: int) -> int:
    def is_prime(k: int) -> bool:
        if k < 2 or k % 2 == 0:
            return k == 2
        f = 3
        while f * f <= k:
            if k % f == 0:
                return False
            f += 2
        return True

    while not is_prime(n):
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------
# The plan: tensors in the converter's order, types from its recipe, random sources
# ---------------------------------------------------------------------------------------------------------------

def residual_gain(n_layers: int) -> float:
    """Weight of the two post-sublayer norms (attention, FFN) that gives the residual stream an RMS of about
    RESIDUAL_RMS after n_layers layers. With all gains 1 the canvas token's own embedding dominates the final
    hidden state, and the tied head then puts ~all probability on the input token (entropy ~0 at every
    position); a larger residual gives spread-out, trained-model-like softmaxes instead."""
    return float(np.sqrt(max(1.0, RESIDUAL_RMS ** 2 - 1.0) / (2 * n_layers)))


def _vector(ident: str, hp: HParams, ne0: int) -> np.ndarray:
    """1-D tensors: norms 1 (RMSNorm multiplies as stored), scalars 1, q/k norms D^-1/4 (see the docstring),
    the post-sublayer norms residual_gain."""
    if ident in ("ATTN_Q_NORM", "ATTN_K_NORM"):
        return np.full(ne0, ne0 ** -0.25, dtype=np.float32)
    if ident in ("POST_ATTENTION_NORM", "POST_FFW_NORM"):
        return np.full(ne0, residual_gain(hp.n_layer), dtype=np.float32)
    return np.ones(ne0, dtype=np.float32)


def plan_types(hp: HParams, outtype: str = "q4_k_m") -> tuple:
    """(names-table ids, OutTensors) in the converter's file order, with the recipe's types; no sources yet.

    The types are those of the first hp.n_layer layers of the whole 30-layer file: the recipe gives more bits
    to some layers by their position among all 30 (attn_v, ffn_down, ffn_down_exps), so the recipe runs on the
    full plan and the later layers are dropped afterwards."""
    if outtype not in OUTTYPE_CHOICES:
        raise ValueError(f"--outtype must be one of {', '.join(OUTTYPE_CHOICES)}, got {outtype!r}")
    n_keep = hp.n_layer
    hp = release_hparams(RELEASE_LAYERS, hp.n_vocab, hp.n_expert)
    specs = [("ROPE_FREQS", None, (hp.head_dim_full // 2,)), ("TOKEN_EMBD", None, (hp.n_vocab, hp.n_embd))]
    specs += [(ident, None, shape_fn(hp)) for ident, _, shape_fn in _GLOBAL_SPECS]
    idents, tensors = [], []
    for ident, _, shape in specs:
        idents.append(ident)
        tensors.append(OutTensor(names.tensor(ident), tuple(reversed(shape)), ROLE_BY_ID[ident], None, None))
    for il in range(hp.n_layer):
        for ident, _, shape in _layer_specs(hp, il) + [("ENC_LAYER_OUTPUT_SCALE", None, (1,))]:
            idents.append(ident)
            tensors.append(OutTensor(names.layer_tensor(ident, il), tuple(reversed(shape)), ROLE_BY_ID[ident], il,
                                     None))
    assign_types(tensors, OUTTYPES[outtype], n_layer=hp.n_layer)
    keep = [i for i, t in enumerate(tensors) if t.layer is None or t.layer < n_keep]
    return [idents[i] for i in keep], [tensors[i] for i in keep]


def plan(hp: HParams, outtype: str = "q4_k_m", seed: int = 0) -> list:
    """OutTensors in the converter's file order, each with its type and a random source."""
    idents, tensors = plan_types(hp, outtype)
    rng = np.random.default_rng(seed)
    max_chunk_elems = writer.CHUNK_ELEMENTS
    pools: dict = {}
    for ident, t in zip(idents, tensors):
        qtype = Q(t.qtype)
        n_rows = int(np.prod(t.ne[1:])) if len(t.ne) > 1 else 1
        if t.n_dims == 1 and ident == "ROPE_FREQS":
            t.source = array_source(rope_freqs(hp))
        elif t.n_dims == 1:
            t.source = array_source(_vector(ident, hp, t.ne[0]))
        elif t.role == "router" or qtype == Q.F32:
            t.source = array_source(rng.standard_normal((n_rows, t.ne[0]), dtype=np.float32)
                                    * (ROUTER_STD if t.role == "router" else WEIGHT_STD))
        else:
            if qtype not in pools:
                block = GGML_QUANT_SIZES[qtype][0]
                pools[qtype] = BlockPool(qtype, max_chunk_elems // block + 1, rng)
            offset = zlib.crc32(t.name.encode()) % pools[qtype].n
            t.source = pools[qtype].source(n_rows, t.ne[0], offset)
    return tensors


def file_bytes(tensors) -> int:
    """Tensor data bytes of a plan (sources not needed)."""
    return sum(row_bytes(t.qtype, t.ne[0]) * int(np.prod(t.ne[1:])) for t in tensors)


def build(outfile, n_layers: int = RELEASE_LAYERS, n_vocab: int = RELEASE_VOCAB, outtype: str = "q4_k_m",
          n_expert: int = RELEASE_EXPERTS, seed: int = 0, threads: int | None = None,
          progress: bool = False) -> dict:
    """Write the GGUF; returns {"path", "bytes", "seconds", "n_layers", "types": {type: count}}."""
    _ensure_tqdm()
    t0 = time.perf_counter()
    hp = release_hparams(n_layers, n_vocab, n_expert)
    tensors = plan(hp, outtype, seed)
    ot = OUTTYPES[outtype]
    kv = model_kv(hp, int(ot.file_type), size_label(tensors))
    paths = writer.write_gguf(Path(outfile), kv, tensors, threads=threads, progress=progress)
    counts: dict = {}
    for t in tensors:
        counts[Q(t.qtype).name] = counts.get(Q(t.qtype).name, 0) + 1
    return {"path": str(paths[0]), "bytes": os.path.getsize(paths[0]), "seconds": time.perf_counter() - t0,
            "n_layers": n_layers, "n_vocab": n_vocab, "n_expert": n_expert, "outtype": outtype,
            "types": dict(sorted(counts.items()))}


def _ensure_tqdm() -> None:
    """The writer imports tqdm for its progress bar; the bare GPU image may lack it (our package is installed
    there with --no-deps). A no-progress stand-in is enough for `progress=False`."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        class _NoBar:
            def __init__(self, *a, **k): pass
            def update(self, *a): pass
            def set_postfix_str(self, *a, **k): pass
            def close(self): pass

        sys.modules["tqdm"] = types.SimpleNamespace(tqdm=_NoBar)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--outfile", required=True, help="GGUF to write (written atomically)")
    ap.add_argument("--layers", type=int, default=RELEASE_LAYERS, help="first N layers of the release (1..30)")
    ap.add_argument("--vocab", type=int, default=RELEASE_VOCAB, help="vocabulary rows (smaller for CPU smoke runs)")
    ap.add_argument("--experts", type=int, default=RELEASE_EXPERTS,
                    help="experts per layer (test-only shrink; the release has 128)")
    ap.add_argument("--outtype", default="q4_k_m", choices=OUTTYPE_CHOICES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="writer threads (default: all cores)")
    args = ap.parse_args(argv)
    try:
        info = build(args.outfile, args.layers, args.vocab, args.outtype, args.experts, args.seed, args.threads,
                     progress=sys.stderr.isatty())
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the converter's ModelFileError (disk full, missing folder) and the like
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {info['path']}: {info['bytes'] / 2**30:.2f} GiB, {info['n_layers']} layers, vocab {info['n_vocab']}, "
          f"{info['outtype']} ({', '.join(f'{k} x{v}' for k, v in info['types'].items())}) in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
