"""The tensor dump: named intermediate tensors of one pass (``diffgemma_set_tensor_callback``), to bisect a
mismatch against a reference (HF's forward hooks) layer by layer without editing code.

    with Model("m.gguf") as m:
        m.encode(prompt_ids)
        t = m.dump_tensors("l_out-*,logits", canvas=canvas_ids)
        t["l_out-0"]  # np.ndarray [canvas_length, n_embd]

Names: the C header's "tensor dump" section (ARCHITECTURE.md, "Named graph nodes").
"""
from __future__ import annotations

import numpy as np

from . import errors
from ._native import check, ffi, lib


class _Collector:
    def __init__(self):
        self.tensors: dict = {}
        self.error: BaseException | None = None


@ffi.def_extern()
def _dg_py_tensor_callback(name, n_dims, ne, data, user_data):
    collector = ffi.from_handle(user_data)
    try:
        shape = tuple(int(ne[i]) for i in reversed(range(n_dims)))  # ggml's ne[0] varies fastest: NumPy's last axis
        values = np.frombuffer(ffi.buffer(data, 4 * int(np.prod(shape))), dtype=np.float32).reshape(shape).copy()
        collector.tensors[ffi.string(name).decode()] = values
    except BaseException as exc:  # never let an exception escape into C
        collector.error = exc


def dump_tensors(model, names: str, *, canvas=None, sc_logits=None, prompt=None) -> dict:
    """Runs one pass with the dump on and returns {name: float32 array}, shaped as NumPy reads ggml's layout
    (``l_out-3``: [tokens, n_embd]). With ``prompt``: the encoder pass over those ids (appended to the KV cache,
    like ``encode``); with ``canvas``: one decoder pass (``decoder_logits``; the cache is unchanged).

    names: comma-separated names, each may end in ``*`` (a prefix): ``"l_out-*,logits"``."""
    if (prompt is None) == (canvas is None):
        raise errors.InvalidArgumentError("dump_tensors needs exactly one of prompt= (encoder) and canvas= (decoder)")
    collector = _Collector()
    handle = ffi.new_handle(collector)
    with model._using() as ctx:
        check(lib.diffgemma_set_tensor_callback(ctx, names.encode(), lib._dg_py_tensor_callback, handle))
    try:
        if prompt is not None:
            model.encode(prompt)
        else:
            model.decoder_logits(canvas, sc_logits)
    finally:
        with model._using() as ctx:
            check(lib.diffgemma_set_tensor_callback(ctx, ffi.NULL, ffi.NULL, ffi.NULL))
    if collector.error is not None:
        raise collector.error
    return collector.tensors
