"""Hostile model files: a valid tiny GGUF, broken one way at a time, must be refused with a specific
diffgemma_cpp exception whose message names the problem, and must never crash the process.

Every file is loaded in a child process (load_probe), so a crash fails its test instead of killing pytest.
"""
from __future__ import annotations

import math
import re
import struct

import pytest

import engine_fixtures as fx
from diffgemma_cpp import names
from gguf_mutate import VT, Gguf, TensorInfo, pad_to
from load_probe import probe

K = names.key
T = names.tensor
L = names.layer_tensor
F32, F16, Q8_0 = 0, 1, 8


@pytest.fixture(scope="module")
def base() -> Gguf:
    return Gguf.parse(fx.gguf("small", "f32"))


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("malformed")


def _last(g: Gguf) -> str:
    return g.tensors[-1].name


def _nan_at(g: Gguf, name: str, index: int, value: float) -> Gguf:
    return g.with_tensor_bytes(name, 4 * index, struct.pack("<f", value))


def _drop_tokenizer(g: Gguf) -> Gguf:
    for kv in [kv for kv in g.kvs if kv.key.startswith("tokenizer.ggml.")]:
        g = g.drop_kv(kv.key)
    return g


# (id, mutation: Gguf -> bytes, expected exception class name, regex the message must match)
CASES = [
    # ---- header ----
    ("empty-file", lambda g: b"", "ModelLoadError", r"not a GGUF file"),
    ("three-bytes", lambda g: b"GGU", "ModelLoadError", r"not a GGUF file"),
    ("bad-magic", lambda g: g.to_bytes(magic=b"GGML"), "ModelLoadError", r"not a GGUF file.*magic"),
    ("version-1", lambda g: g.to_bytes(version=1), "ModelLoadError", r"GGUFv1 is no longer supported"),
    ("version-0", lambda g: g.to_bytes(version=0), "ModelLoadError", r"bad GGUF version: 0"),
    ("version-99", lambda g: g.to_bytes(version=99), "ModelLoadError", r"version 99.*only supports up to version 3"),
    ("version-big-endian", lambda g: g.to_bytes(version=0x03000000), "ModelLoadError", r"endianness"),
    ("n-tensors-negative", lambda g: g.to_bytes(n_tensors=-1), "ModelLoadError", r"number of tensors is -1"),
    ("n-tensors-huge", lambda g: g.to_bytes(n_tensors=2**62), "ModelLoadError", r"number of tensors|tensor info"),
    # The extra info is read from the padding before the data section: garbage ("tensor info") or, when the
    # padding holds enough zero bytes, an empty tensor whose offset does not follow ("has offset ... expected").
    ("n-tensors-one-more", lambda g: g.to_bytes(n_tensors=len(g.tensors) + 1), "ModelLoadError",
     r"tensor info|has offset \d+, expected \d+"),
    ("n-tensors-zero", lambda g: g.to_bytes(n_tensors=0), "UnsupportedModelError", r"tensor 'token_embd.weight' is missing"),
    ("n-kv-negative", lambda g: g.to_bytes(n_kv=-5), "ModelLoadError", r"number of key value pairs is -5"),
    ("n-kv-huge", lambda g: g.to_bytes(n_kv=2**40), "ModelLoadError", r"key-value pairs"),
    ("n-kv-one-less", lambda g: g.to_bytes(n_kv=len(g.kvs) - 1), "ModelLoadError", r"tensor"),
    # ---- key/value section ----
    ("key-length-beyond-file", lambda g: _raw_key_length(g, 0, 2**40), "ModelLoadError", r"key 0|key-value"),
    ("key-length-over-limit", lambda g: _raw_key_length(g, 3, 2**63 - 1), "ModelLoadError", r"key 3|key-value"),
    ("empty-key", lambda g: _rename_kv(g, 2, ""), "ModelLoadError", r"key 2 is empty"),
    ("duplicate-key", lambda g: _rename_kv(g, 2, g.kvs[1].key), "ModelLoadError", r"duplicate key 'general.type'"),
    ("string-value-beyond-file", lambda g: g.set_kv_raw(K("GENERAL_ARCHITECTURE"), VT.STRING, struct.pack("<Q", 2**33) + b"diffusion-gemma"),
     "ModelLoadError", r"string length 8589934592 exceeds"),
    ("array-length-beyond-file", lambda g: g.set_kv_raw("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**40)),
     "ModelLoadError", r"tokenizer.ggml.tokens|key-value"),
    ("array-of-arrays", lambda g: g.set_kv_raw(K("HEAD_COUNT_KV"), VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1)),
     "ModelLoadError", r"invalid GGUF type 9"),
    ("unknown-value-type", lambda g: g.set_kv_raw(K("BLOCK_COUNT"), 13, struct.pack("<I", 5)), "ModelLoadError",
     r"block_count' has invalid GGUF type 13"),
    ("value-type-max", lambda g: g.set_kv_raw(K("BLOCK_COUNT"), 0xFFFFFFFF, b""), "ModelLoadError", r"invalid GGUF type"),
    ("alignment-not-power-of-2", lambda g: g.add_kv("general.alignment", VT.UINT32, 48).to_bytes(), "ModelLoadError",
     r"alignment 48 is not a power of 2"),
    ("alignment-zero", lambda g: g.add_kv("general.alignment", VT.UINT32, 0).to_bytes(), "ModelLoadError", r"alignment 0"),
    ("alignment-wrong-type", lambda g: g.add_kv("general.alignment", VT.STRING, "32").to_bytes(), "ModelLoadError",
     r"general.alignment' must be of type u32"),
    # ---- tensor infos ----
    ("tensor-name-too-long", lambda g: _rename_tensor(g, 0, "x" * 80), "ModelLoadError", r"tensor name 0 is too long"),
    ("duplicate-tensor-name", lambda g: _rename_tensor(g, 1, g.tensors[0].name), "ModelLoadError",
     r"duplicate tensor name '[\w.]+' for tensors 0 and 1"),
    ("five-dims", lambda g: _tensor_field(g, 0, n_dims=5), "ModelLoadError", r"invalid number of dimensions: 5"),
    ("negative-dim", lambda g: _set_dims(g, 0, [-12, 64, 6]), "ModelLoadError", r"dimension 0 has invalid number of elements: -12"),
    ("element-count-overflow", lambda g: _set_dims(g, 0, [2**32 + 1, 2**32 + 1]), "ModelLoadError", r"total number of elements"),
    ("byte-count-overflow", lambda g: _set_dims(g, 0, [2**31, 2**31, 2]), "ModelLoadError", r"size in bytes|offset"),
    ("huge-dims-last-tensor", lambda g: _set_dims(g, len(g.tensors) - 1, [2**40]), "UnsupportedModelError",
     r"enc_layer_output_scale.weight' has shape \[1099511627776\], expected \[1\]"),
    ("unknown-ggml-type", lambda g: _tensor_field(g, 0, ggml_type=200), "ModelLoadError", r"invalid ggml type 200"),
    ("removed-ggml-type", lambda g: _tensor_field(g, 0, ggml_type=4), "ModelLoadError", r"block size|type 4"),
    ("row-not-multiple-of-block", lambda g: _tensor_field(g, 0, ggml_type=Q8_0), "ModelLoadError",
     r"not a multiple of block size \(32\)"),
    ("offset-outside-file", lambda g: _tensor_field(g, len(g.tensors) - 1, offset=2**60), "ModelLoadError",
     r"has offset 1152921504606846976, expected"),
    ("misaligned-offset", lambda g: _tensor_field(g, 5, offset=g.tensors[5].offset + 1), "ModelLoadError",
     r"has offset \d+, expected"),
    # ---- data section ----
    ("data-one-byte-short", lambda g: g.to_bytes()[:_data_end(g) - 1], "ModelLoadError",
     r"enc_layer_output_scale.weight' \(4 bytes at offset \d+\) lies outside the file"),
    ("no-data-section", lambda g: g.to_bytes()[:g.infos_end], "ModelLoadError", r"truncated|outside the file|data section"),
    ("nan-in-output-norm", lambda g: _nan_at(g, T("OUTPUT_NORM"), 3, math.nan).to_bytes(), "ModelLoadError",
     r"output_norm.weight' holds NaN at index 3"),
    ("inf-in-layer-scale", lambda g: _nan_at(g, L("LAYER_OUTPUT_SCALE", 2), 0, math.inf).to_bytes(), "ModelLoadError",
     r"blk.2.layer_output_scale.weight' holds inf at index 0"),
    ("nan-in-expert-scale", lambda g: _nan_at(g, L("FFN_DOWN_EXPS_SCALE", 1), 5, -math.nan).to_bytes(), "ModelLoadError",
     r"blk.1.ffn_down_exps.scale' holds NaN at index 5"),
    ("neg-inf-in-router-scale", lambda g: _nan_at(g, L("FFN_GATE_INP_SCALE", 0), 63, -math.inf).to_bytes(), "ModelLoadError",
     r"ffn_gate_inp.scale' holds -inf at index 63"),
    # ---- model level: architecture, tensors ----
    ("wrong-arch", lambda g: g.set_kv(K("GENERAL_ARCHITECTURE"), VT.STRING, "llama").to_bytes(), "UnsupportedModelError",
     r"architecture is 'llama'"),
    ("arch-not-a-string", lambda g: g.set_kv(K("GENERAL_ARCHITECTURE"), VT.UINT32, 7).to_bytes(), "UnsupportedModelError",
     r"general.architecture' has type u32, expected a string"),
    ("no-arch", lambda g: g.drop_kv(K("GENERAL_ARCHITECTURE")).to_bytes(), "UnsupportedModelError",
     r"general.architecture' is missing"),
    ("missing-tensor", lambda g: g.relayout(drop={T("OUTPUT_NORM")}).to_bytes(), "UnsupportedModelError",
     r"tensor 'output_norm.weight' is missing"),
    ("missing-layer-tensor", lambda g: g.relayout(drop={L("ATTN_K", 3)}).to_bytes(), "UnsupportedModelError",
     r"tensor 'blk.3.attn_k.weight' is missing"),
    ("missing-embedding", lambda g: g.relayout(drop={T("TOKEN_EMBD")}).to_bytes(), "UnsupportedModelError",
     r"tensor 'token_embd.weight' is missing"),
    ("transposed-tensor", lambda g: g.relayout({L("ATTN_Q", 1): ([128, 64], F32)}).to_bytes(), "UnsupportedModelError",
     r"blk.1.attn_q.weight' has shape \[128, 64\], expected \[64, 128\]"),
    ("norm-in-f16", lambda g: g.relayout({L("ATTN_NORM", 0): ([64], F16)}).to_bytes(), "UnsupportedTypeError",
     r"blk.0.attn_norm.weight' has type f16.*must be f32"),
    ("matrix-in-i32", lambda g: g.relayout({L("FFN_UP", 0): ([64, 40], 26)}).to_bytes(), "UnsupportedTypeError",
     r"blk.0.ffn_up.weight' has type i32"),
    ("vocab-zero-rows", lambda g: _drop_tokenizer(g).relayout({T("TOKEN_EMBD"): ([64, 0], F32)}).to_bytes(),
     "UnsupportedModelError", r"token_embd.weight' has 0 rows"),
    ("vocab-beyond-int32", lambda g: _set_dims(_last_is(_drop_tokenizer(g), T("TOKEN_EMBD")), -1, [64, 2**31 + 7]),
     "UnsupportedModelError", r"token_embd.weight' has 2147483655 rows"),
    ("tokenizer-larger-than-embedding", lambda g: g.relayout({T("TOKEN_EMBD"): ([64, 500], F32)}).to_bytes(),
     "UnsupportedModelError", r"tokenizer has 512 tokens but token_embd has only 500 rows"),
    # ---- tokenizer tables ----
    ("token-types-short", lambda g: g.set_kv("tokenizer.ggml.token_type", VT.ARRAY, [1] * 10, VT.INT32).to_bytes(),
     "ModelLoadError", r"token_type' has 10 entries but 'tokenizer.ggml.tokens' has 512"),
    ("merge-of-unknown-token", lambda g: g.set_kv("tokenizer.ggml.merges", VT.ARRAY, ["zzzq qqqz"], VT.STRING).to_bytes(),
     "ModelLoadError", r"merge 0 .* refers to"),
    ("bos-out-of-range", lambda g: g.set_kv("tokenizer.ggml.bos_token_id", VT.UINT32, 4096).to_bytes(), "ModelLoadError",
     r"bos_token_id' = 4096 is not a token id"),
    ("tokens-not-strings", lambda g: g.set_kv("tokenizer.ggml.tokens", VT.ARRAY, [1, 2, 3], VT.UINT32).to_bytes(),
     "ModelLoadError", r"tokenizer.ggml.tokens' must be an array of str, but it is an array of u32"),
    # ggml skips its element-count check when the count wraps to 0 (2^32 * 2^32 * 6 = 0 mod 2^64): regression
    # for the abort in ggml_backend_tensor_alloc this used to reach through an extra, unused tensor.
    ("extra-tensor-count-wraps", lambda g: _append_tensor(g, "extra.weight", [2**32, 2**32, 6]), "ModelLoadError",
     r"tensor 'extra.weight' has shape \[4294967296, 4294967296, 6, 1\] of type f32, whose size in bytes overflows"),
    ("extra-tensor-beyond-file", lambda g: _append_tensor(g, "extra.weight", [2**20, 2**10]), "ModelLoadError",
     r"tensor 'extra.weight' \(4294967296 bytes at offset \d+\) lies outside the file"),
]


def _data_end(g: Gguf) -> int:
    """File offset just past the last tensor's data (what follows is only padding)."""
    return max(g.data_start + t.offset + t.nbytes for t in g.tensors)


def _last_is(g: Gguf, name: str) -> Gguf:
    """The same file with tensor `name` moved to the end of the tensor infos and of the data."""
    g = g.copy()
    g.tensors = [t for t in g.tensors if t.name != name] + [g.tensor(name)]
    return g.relayout()  # offsets follow the new order


def _append_tensor(g: Gguf, name: str, dims) -> bytes:
    """A tensor info appended after the others with the offset ggml expects next, and no data behind it."""
    g = g.copy()
    end = max(t.offset + pad_to(t.nbytes, g.alignment) for t in g.tensors)
    g.tensors.append(TensorInfo(name, list(dims), F32, end))
    return g.to_bytes()


def _raw_key_length(g: Gguf, i: int, length: int) -> bytes:
    """Overwrite the length prefix of KV i's key in the file bytes (the key text stays)."""
    b = bytearray(g.to_bytes())
    struct.pack_into("<Q", b, g.kvs[i].start, length)
    return bytes(b)


def _rename_kv(g: Gguf, i: int, key: str) -> bytes:
    g = g.copy()
    g.kvs[i].key = key
    return g.to_bytes()


def _rename_tensor(g: Gguf, i: int, name: str) -> bytes:
    g = g.copy()
    g.tensors[i].name = name
    return g.to_bytes()


def _set_dims(g: Gguf, i: int, dims) -> bytes:
    g = g.copy()
    g.tensors[i].dims = list(dims)
    return g.to_bytes()


def _tensor_field(g: Gguf, i: int, *, n_dims=None, ggml_type=None, offset=None) -> bytes:
    """Patch one field of tensor info i in place (n_dims lies about the dims that follow)."""
    t = g.tensors[i]
    b = bytearray(g.to_bytes())
    p = t.start + 8 + len(t.name.encode())
    if n_dims is not None:
        struct.pack_into("<I", b, p, n_dims)
    p += 4 + 8 * len(t.dims)
    if ggml_type is not None:
        struct.pack_into("<I", b, p, ggml_type)
    if offset is not None:
        struct.pack_into("<Q", b, p + 4, offset)
    return bytes(b)


# ---- hyper-parameters: every key the loader reads, with a wrong type, and with values out of range ----
U32_KEYS = ["BLOCK_COUNT", "EMBEDDING_LENGTH", "FEED_FORWARD_LENGTH", "HEAD_COUNT", "EXPERT_COUNT", "EXPERT_USED_COUNT",
            "EXPERT_FEED_FORWARD_LENGTH", "KEY_LENGTH", "KEY_LENGTH_SWA", "CONTEXT_LENGTH", "SLIDING_WINDOW",
            "CANVAS_LENGTH", "VALUE_LENGTH", "VALUE_LENGTH_SWA", "EB_MAX_STEPS", "EB_STABILITY_THRESHOLD"]
F32_KEYS = ["RMS_EPS", "ROPE_FREQ_BASE", "ROPE_FREQ_BASE_SWA", "FINAL_LOGIT_SOFTCAPPING", "EMBED_SCALE", "EB_T_MIN",
            "EB_T_MAX", "EB_ENTROPY_BOUND", "EB_CONFIDENCE_THRESHOLD"]

for ident in U32_KEYS:
    CASES.append((f"type-{ident.lower()}-string", lambda g, k=K(ident): g.set_kv(k, VT.STRING, "4").to_bytes(),
                  "UnsupportedModelError", re.escape(K(ident)) + r"' has type str, expected an integer"))
for ident in F32_KEYS:
    CASES.append((f"type-{ident.lower()}-bool", lambda g, k=K(ident): g.set_kv(k, VT.BOOL, True).to_bytes(),
                  "UnsupportedModelError", re.escape(K(ident)) + r"' has type bool, expected a float"))
CASES += [
    ("type-head-count-kv-floats", lambda g: g.set_kv(K("HEAD_COUNT_KV"), VT.ARRAY, [2.0] * 5, VT.FLOAT32).to_bytes(),
     "UnsupportedModelError", r"head_count_kv' is an array of f32, expected int32"),
    ("type-swa-pattern-scalar", lambda g: g.set_kv(K("SLIDING_WINDOW_PATTERN"), VT.BOOL, True).to_bytes(),
     "UnsupportedModelError", r"sliding_window_pattern' must be an array of bool"),
    ("head-count-kv-short", lambda g: g.set_kv(K("HEAD_COUNT_KV"), VT.ARRAY, [2] * 3, VT.INT32).to_bytes(),
     "UnsupportedModelError", r"head_count_kv' has 3 entries, expected one per layer \(5\)"),
    ("head-count-kv-zero", lambda g: g.set_kv(K("HEAD_COUNT_KV"), VT.ARRAY, [2, 2, 0, 2, 2], VT.INT32).to_bytes(),
     "UnsupportedModelError", r"layer 2: head_count_kv 0 must divide"),
    ("swa-pattern-long", lambda g: g.set_kv(K("SLIDING_WINDOW_PATTERN"), VT.ARRAY, [True] * 9, VT.BOOL).to_bytes(),
     "UnsupportedModelError", r"sliding_window_pattern' has 9 entries"),
    ("block-count-zero", lambda g: g.set_kv(K("BLOCK_COUNT"), VT.UINT32, 0).to_bytes(), "UnsupportedModelError",
     r"block_count must be positive, got 0"),
    ("block-count-negative", lambda g: g.set_kv(K("BLOCK_COUNT"), VT.INT32, -3).to_bytes(), "UnsupportedModelError",
     r"block_count' is negative \(-3\)"),
    ("block-count-huge", lambda g: g.set_kv(K("BLOCK_COUNT"), VT.UINT32, 2**31 + 1).to_bytes(), "UnsupportedModelError",
     r"block_count' = 2147483649 is out of range"),
    ("block-count-u64", lambda g: g.set_kv(K("BLOCK_COUNT"), VT.UINT64, 2**40).to_bytes(), "UnsupportedModelError",
     r"block_count' is out of range \(1099511627776\)"),
    ("block-count-more-than-tensors", lambda g: g.set_kv(K("BLOCK_COUNT"), VT.UINT32, 6).to_bytes(), "UnsupportedModelError",
     r"has 5 entries, expected one per layer \(6\)"),
    ("embedding-length-zero", lambda g: g.set_kv(K("EMBEDDING_LENGTH"), VT.UINT32, 0).to_bytes(), "UnsupportedModelError",
     r"embedding_length must be positive, got 0"),
    ("embedding-length-mismatch", lambda g: g.set_kv(K("EMBEDDING_LENGTH"), VT.UINT32, 65).to_bytes(), "UnsupportedModelError",
     r"token_embd.weight' has shape \[64, 512\], expected \[65, 512\]"),
    ("experts-used-above-count", lambda g: g.set_kv(K("EXPERT_USED_COUNT"), VT.UINT32, 7).to_bytes(), "UnsupportedModelError",
     r"expert_used_count 7 exceeds expert_count 6"),
    ("odd-head-dim", lambda g: g.set_kv(K("KEY_LENGTH"), VT.UINT32, 31).set_kv(K("VALUE_LENGTH"), VT.UINT32, 31).to_bytes(),
     "UnsupportedModelError", r"head dims must be even"),
    ("canvas-length-zero", lambda g: g.set_kv(K("CANVAS_LENGTH"), VT.UINT32, 0).to_bytes(), "UnsupportedModelError",
     r"canvas_length must be positive"),
    ("canvas-length-huge", lambda g: g.set_kv(K("CANVAS_LENGTH"), VT.UINT32, 2**31 - 1).to_bytes(), "UnsupportedModelError",
     r"canvas_length 2147483647 is implausible"),
    ("rms-eps-nan", lambda g: g.set_kv(K("RMS_EPS"), VT.FLOAT32, math.nan).to_bytes(), "UnsupportedModelError",
     r"layer_norm_rms_epsilon' = nan"),
    ("rms-eps-negative", lambda g: g.set_kv(K("RMS_EPS"), VT.FLOAT32, -1e-6).to_bytes(), "UnsupportedModelError",
     r"layer_norm_rms_epsilon' = -1e-06"),
    ("softcap-zero", lambda g: g.set_kv(K("FINAL_LOGIT_SOFTCAPPING"), VT.FLOAT32, 0.0).to_bytes(), "UnsupportedModelError",
     r"final_logit_softcapping' = 0"),
    ("rope-base-inf", lambda g: g.set_kv(K("ROPE_FREQ_BASE"), VT.FLOAT64, math.inf).to_bytes(), "UnsupportedModelError",
     r"rope.freq_base' = inf"),
    ("embed-scale-nan", lambda g: g.set_kv(K("EMBED_SCALE"), VT.FLOAT32, math.nan).to_bytes(), "UnsupportedModelError",
     r"embed_scale' = nan"),
    ("sampler-t-min-zero", lambda g: g.set_kv(K("EB_T_MIN"), VT.FLOAT32, 0.0).to_bytes(), "UnsupportedModelError",
     r"eb_t_min' = 0"),
    ("sampler-steps-zero", lambda g: g.set_kv(K("EB_MAX_STEPS"), VT.UINT32, 0).to_bytes(), "UnsupportedModelError",
     r"eb_max_steps must be positive"),
]


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def _write(outdir, name: str, data):
    path = outdir / f"{name}.gguf"
    path.write_bytes(data.to_bytes() if isinstance(data, Gguf) else data)
    return path


@pytest.fixture(scope="module")
def results(base, outdir):
    """All CASES loaded by one crash-tolerant child; case id -> result."""
    paths = [_write(outdir, cid, make(base)) for cid, make, _, _ in CASES]
    out = probe(paths)
    print(f"malformed files tried: {len(paths)}")
    return {cid: r for (cid, *_), r in zip(CASES, out)}


def test_valid_file_loads(base, outdir):
    # The mutations start from a file that loads, and the writer round-trips it byte for byte.
    assert base.to_bytes() == fx.gguf("small", "f32").read_bytes()
    (r,) = probe([_write(outdir, "valid", base.to_bytes())])
    assert r["outcome"] == "loaded", r


@pytest.mark.parametrize("cid,expected,pattern", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_is_refused(results, cid, expected, pattern):
    r = results[cid]
    assert r["outcome"] != "crashed", f"{cid}: the loader crashed the process:\n{r.get('stderr')}"
    assert r["outcome"] == "raised", f"{cid}: the malformed file loaded"
    assert r["exc"] == expected, f"{cid}: {r['exc']} ({r['msg']}), expected {expected}"
    assert re.search(pattern, r["msg"]), f"{cid}: message {r['msg']!r} does not match {pattern!r}"


def test_truncated_at_every_section_boundary(base, outdir):
    """Cut the file at every boundary (header fields, each key and value, each tensor info, the alignment
    padding, each tensor's data) and one byte before it: always ModelLoadError naming the truncation."""
    data = base.to_bytes()
    # Cutting right after the last tensor's data drops only the final padding: that file is still whole.
    cuts = sorted({c for _, at in base.boundaries() for c in (at - 1, at) if 0 < c < len(data)} - {_data_end(base)})
    paths = [_write(outdir, f"cut-{c}", data[:c]) for c in cuts]
    out = probe(paths)
    print(f"truncated files tried: {len(paths)}")
    bad = []
    for c, r in zip(cuts, out):
        if r["outcome"] != "raised" or r["exc"] != "ModelLoadError" or not re.search(
                r"truncated|outside the file|failed to read|not a GGUF file|exceeds remaining", r["msg"]):
            bad.append((c, r))
    assert not bad, f"{len(bad)} of {len(cuts)} truncations misreported, e.g. {bad[:3]}"


def test_missing_and_non_regular_paths(tmp_path):
    out = probe([tmp_path / "nope.gguf", tmp_path])
    assert [r["exc"] for r in out] == ["ModelFileError", "ModelFileError"], out
    assert "no such model file" in out[0]["msg"]


def test_concurrent_loads_keep_their_own_reasons(results, outdir):
    """ggml's parse errors are captured per thread: loads racing in 6 threads each report their own file's
    reason (the same message as alone), never a neighbour's."""
    import threading

    from diffgemma_cpp import Model

    ids = ["bad-magic", "version-99", "duplicate-key", "unknown-ggml-type", "negative-dim", "alignment-zero"]
    got: dict = {}

    def load(cid):
        for _ in range(20):
            try:
                Model(outdir / f"{cid}.gguf", n_threads=1, n_ctx=64).close()
                got.setdefault(cid, set()).add("loaded")
            except Exception as exc:  # compared below
                got.setdefault(cid, set()).add(str(exc))

    threads = [threading.Thread(target=load, args=(cid,)) for cid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for cid in ids:
        assert got[cid] == {results[cid]["msg"]}, (cid, got[cid])
