"""``Model``: a loaded DiffusionGemma GGUF plus one generation context (KV cache), over the C library.

    from diffgemma_cpp import Model
    with Model("m.gguf") as m:
        ids = m.generate_ids(m.tokenize("Hello"), max_new_tokens=256, seed=1)
        print(m.create_completion("Hello", max_tokens=256)["choices"][0]["text"])

Seeds: an explicit ``seed`` (per call, or the Model's) makes generation deterministic across runs and
thread counts; ``seed=None`` everywhere draws a fresh seed per call.

Thread contract: see ``diffgemma_cpp.completion`` (one generation at a time per Model; a concurrent call
raises ``ModelBusyError``; ``cancel()`` is safe from any thread).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import errors
from ._lifetime import Closeable
from ._native import check, ffi, lib, string
from .completion import SAMPLER_OVERRIDES, CompletionMixin
from .tokenizer import Tokenizer

__all__ = ["Model", "Block"]

_KV_TYPES = {"f32": lib.DIFFGEMMA_KV_F32, "f16": lib.DIFFGEMMA_KV_F16}


@dataclass
class Block:
    """One committed canvas: ids cut before the first EOS (EOS excluded), whether EOS ended generation,
    the denoising steps it took, and the whole canvas as HF's generate returns it (padded after the EOS)."""

    ids: list
    eos: bool
    steps: int
    canvas: list


class _StepRelay:
    """Carries a Python on_step callable through C and brings its exception back out."""

    def __init__(self, fn):
        self.fn = fn
        self.error: BaseException | None = None


@ffi.def_extern()
def _dg_py_step_callback(block, step, n_steps, canvas, canvas_length, user_data):
    relay = ffi.from_handle(user_data)
    try:
        if relay.fn is not None:
            relay.fn(step, n_steps, list(ffi.unpack(canvas, canvas_length)))
        return 0
    except BaseException as exc:  # includes KeyboardInterrupt: Ctrl-C cancels within one step
        relay.error = exc
        return 1


def _c_int(name: str, value) -> int:
    """A Python int for an int32_t field (bool and other types refused); the range is the C library's check."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    return max(min(value, 2**31 - 1), -(2**31))


def _ids(values, what: str):
    arr = np.ascontiguousarray(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64))
    if arr.ndim != 1:
        raise errors.InvalidArgumentError(f"{what} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
        raise errors.InvalidArgumentError(f"{what} holds ids outside the int32 range")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _float_list(name: str, value) -> list:
    """tensor_split as a list of floats ([3, 1], or "3,1" as the CLI gives it); [] for None."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.replace("/", ",").split(",") if v.strip()]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise errors.InvalidArgumentError(f"{name} must be a list of numbers (each device's share), got {value!r}") from None
    if not values or any(not (v >= 0.0) or v == float("inf") for v in values) or sum(values) <= 0:
        raise errors.InvalidArgumentError(f"{name} must hold finite shares >= 0, not all zero, got {value!r}")
    return values


def _name_list(name: str, value) -> str:
    """devices / rpc_servers as the C library's comma-separated text (a list, or already a string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v and "," not in v for v in value):
        return ",".join(value)
    raise errors.InvalidArgumentError(f"{name} must be a list of names or a comma-separated string, got {value!r}")


class Model(CompletionMixin, Closeable):
    """A DiffusionGemma GGUF loaded for generation (weights memory-mapped, one KV cache)."""

    def __init__(self, model_path, *, n_gpu_layers: int = 0, main_gpu: int = -1, tensor_split=None, devices=None,
                 rpc_servers=None, cpu_moe: bool = False, n_cpu_moe: int = 0, fit: bool = False,
                 n_threads: int | None = None, fixed_threads: bool = False, n_ctx: int | None = None,
                 n_batch: int | None = None, seed: int | None = None, kv_type: str = "f32", sc_top_k: int = 0,
                 sc_top_k_renormalize: bool = False, mmproj=None, verbose: bool = False):
        """n_gpu_layers: 0 (default) runs on the CPU; k offloads the last k layers; -1 offloads every layer and the
        head, which keeps the logits and the sampler on the last layer's device. The offloaded layers are shared
        over the offload devices (`diffgemma_cpp.gpus()`, in that order, or those `devices` names, e.g.
        ["RPC0", "CUDA0"]) in consecutive runs, earlier layers on earlier devices: by `tensor_split` (each
        device's share, e.g. [3, 1]) or, without it, by each device's free memory. main_gpu=k puts every
        offloaded layer on device k instead. rpc_servers (["host:port", ...]) registers the devices of ggml RPC
        servers (`diffgemma-cpp rpc-server`) first: unauthenticated, so loopback, an SSH tunnel or a private
        network only. cpu_moe=True keeps every
        layer's expert weights in host memory (the MoE then runs on the CPU), n_cpu_moe=k those of the first k
        layers. The memory plan is printed before the weights are uploaded; a model that does not fit fails
        with OutOfMemoryError saying how much is missing and which setting fits, or with fit=True loads with
        that setting (more experts in host memory, then fewer layers; the plan's first line says which).

        sc_top_k: 0 (default) runs the exact self-conditioning product softmax(S) @ E over the whole
        vocabulary; k in 1..n_vocab keeps only each canvas row's k most probable tokens (faster, approximate;
        bench/README.md lists the measured logit and token error). sc_top_k_renormalize rescales the kept
        probabilities to sum to 1.

        n_threads: compute threads at most (default: one per physical core we may use). More than the CPUs this
        process may use is capped there, with a warning, and each pass runs only as many threads as the machine
        has CPUs free just then, so other busy programs never make us many times slower (ggml's barriers spin).
        fixed_threads=True runs exactly n_threads on every pass instead (scaling studies).

        mmproj: the vision projector GGUF (`diffgemma-cpp convert --mmproj`, or a published mmproj-*.gguf of the
        same layout); then prompts may hold images (generate_blocks(images=...), chat content parts)."""
        self._model = None
        self._ctx = None
        # The calls and open streams using the C handles right now (see _using). Whether a call may run at
        # all is the C library's decision: one call at a time per context, none that touches the cache while a
        # generation is open (DIFFGEMMA_ERR_BUSY -> ModelBusyError).
        self._users_lock = threading.Lock()
        self._users = 0
        self._close_pending = False
        self.model_path = str(model_path)
        if not Path(model_path).is_file():
            raise errors.ModelFileError(f"no such model file: {model_path}")
        if mmproj is not None and not Path(mmproj).is_file():
            raise errors.ModelFileError(f"no such projector file: {mmproj}")
        if kv_type not in _KV_TYPES:
            raise errors.InvalidArgumentError(f"kv_type must be one of {sorted(_KV_TYPES)}, got {kv_type!r}")
        for name, value in (("n_threads", n_threads), ("n_ctx", n_ctx), ("n_batch", n_batch)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise errors.InvalidArgumentError(f"{name} must be a positive integer or None, got {value!r}")
        for name, value, low in (("n_gpu_layers", n_gpu_layers, -1), ("main_gpu", main_gpu, -1), ("n_cpu_moe", n_cpu_moe, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= 2**31:
                raise errors.InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("cpu_moe", cpu_moe), ("fit", fit), ("fixed_threads", fixed_threads)):
            if not isinstance(value, bool):
                raise errors.InvalidArgumentError(f"{name} must be True or False, got {value!r}")
        if isinstance(sc_top_k, bool) or not isinstance(sc_top_k, int) or sc_top_k < 0:
            raise errors.InvalidArgumentError(f"sc_top_k must be 0 (exact) or a positive integer, got {sc_top_k!r}")
        self.verbose = verbose
        self.seed = seed
        self.sc_top_k = sc_top_k
        mp = ffi.new("diffgemma_model_params *")
        lib.diffgemma_model_default_params(mp)
        mp.n_gpu_layers = n_gpu_layers
        mp.main_gpu = main_gpu
        mp.cpu_moe = int(cpu_moe)
        mp.n_cpu_moe = n_cpu_moe
        mp.fit = int(fit)
        mp.n_threads = n_threads or 0
        # The C strings and the split array must outlive the load call: keep them in locals until it returns.
        split = _float_list("tensor_split", tensor_split)
        split_c = ffi.new("float[]", split) if split else ffi.NULL
        devices_c = ffi.new("char[]", _name_list("devices", devices).encode()) if devices else ffi.NULL
        rpc_c = ffi.new("char[]", _name_list("rpc_servers", rpc_servers).encode()) if rpc_servers else ffi.NULL
        mp.tensor_split = split_c
        mp.n_tensor_split = len(split)
        mp.devices = devices_c
        mp.rpc_servers = rpc_c
        mmproj_c = ffi.new("char[]", str(mmproj).encode()) if mmproj is not None else ffi.NULL
        mp.mmproj_path = mmproj_c
        out = ffi.new("diffgemma_model **")
        check(lib.diffgemma_model_load(self.model_path.encode(), mp, out))
        self._model = out[0]
        # The GPU memory plan (placement.h): shown whenever something is offloaded, as users need to see where
        # their memory went; also logged at INFO by the C library before the upload.
        self.memory_plan = string(lib.diffgemma_model_memory_plan(self._model))
        if self.memory_plan:
            print(self.memory_plan, file=sys.stderr)
        cp = ffi.new("diffgemma_context_params *")
        lib.diffgemma_context_default_params(cp)
        cp.n_ctx = n_ctx or 0
        cp.n_batch = n_batch or 0
        cp.n_threads = n_threads or 0
        cp.fixed_threads = int(fixed_threads)
        cp.kv_type = _KV_TYPES[kv_type]
        cp.sc_top_k = min(sc_top_k, 2**31 - 1)  # the C side rejects k > n_vocab with the model's n_vocab in the message
        cp.sc_top_k_renormalize = int(bool(sc_top_k_renormalize))
        cout = ffi.new("diffgemma_context **")
        try:
            check(lib.diffgemma_context_new(self._model, cp, cout))
        except BaseException:
            self.close()
            raise
        self._ctx = cout[0]
        vocab = lib.diffgemma_model_get_vocab(self._model)
        self.tokenizer = Tokenizer(vocab, owner=self) if vocab != ffi.NULL else None
        self.metadata = {string(lib.diffgemma_model_meta_key(self._model, i)): string(lib.diffgemma_model_meta_value(self._model, i))
                         for i in range(lib.diffgemma_model_meta_count(self._model))}

    # ---- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the context and the weights (idempotent). Called while a generation runs (from another thread,
        from its on_step callback, or with a generate_blocks stream still open), it cancels that generation and
        the memory is freed as soon as the generation lets go of the model."""
        lock = getattr(self, "_users_lock", None)
        if lock is None:  # __init__ failed before the handles existed
            return
        with lock:
            in_use = self._users > 0
            self._close_pending = True  # no new user from here on
        if in_use:
            self.cancel()  # freeing now would pull the cache and weights from under the running C call
        else:
            self._free()

    def _free(self) -> None:
        # The tokenizer borrows the model's vocab: detach it first, so a Tokenizer kept by the caller raises
        # "closed" instead of reading freed memory.
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.close()
        if getattr(self, "_ctx", None) is not None:
            lib.diffgemma_context_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None) is not None:
            lib.diffgemma_model_free(self._model)
            self._model = None

    @contextlib.contextmanager
    def _using(self):
        """Holds the C handles for a call or a stream: a close() meanwhile frees them when the last user leaves."""
        with self._users_lock:
            if self._ctx is None or self._close_pending:
                raise errors.InvalidArgumentError("this Model is closed")
            self._users += 1
        try:
            yield self._ctx
        finally:
            with self._users_lock:
                self._users -= 1
                free_now = self._users == 0 and self._close_pending
            if free_now:
                self._free()

    @property
    def _c(self):
        if self._ctx is None or self._close_pending:
            raise errors.InvalidArgumentError("this Model is closed")
        return self._ctx

    # ---- facts ------------------------------------------------------------------------------------
    n_vocab = property(lambda self: lib.diffgemma_model_n_vocab(self._model))
    n_embd = property(lambda self: lib.diffgemma_model_n_embd(self._model))
    n_layer = property(lambda self: lib.diffgemma_model_n_layer(self._model))
    canvas_length = property(lambda self: lib.diffgemma_model_canvas_length(self._model))
    n_ctx = property(lambda self: lib.diffgemma_n_ctx(self._c))
    n_past = property(lambda self: lib.diffgemma_n_past(self._c), doc="positions in the KV cache")
    kv_cache_bytes = property(lambda self: int(lib.diffgemma_kv_cache_bytes(self._c)),
                              doc="bytes of the KV cache (sliding layers hold a ring, not n_ctx positions)")

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def eos_ids(self) -> list:
        return list(self.tokenizer.eog_ids) if self.tokenizer else []

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise errors.UnsupportedModelError(f"{self.model_path} has no tokenizer (tokenizer.ggml.* keys)")
        return self.tokenizer

    def tokenize(self, text, add_bos: bool = True, special: bool = True) -> list:
        return self._require_tokenizer().tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> bytes:
        return self._require_tokenizer().detokenize(list(ids))

    # ---- low-level passes (tests, tools) -----------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache."""
        with self._using() as ctx:
            check(lib.diffgemma_kv_truncate(ctx, 0))

    def encode(self, ids, images=None) -> None:
        """Encoder pass: append clean tokens to the KV cache; the i-th run of image tokens in `ids` is images[i]."""
        arr = _ids(ids, "ids")
        with self._using() as ctx:
            self._set_images(ctx, images)
            check(lib.diffgemma_encode(ctx, ffi.from_buffer("int32_t[]", arr), len(arr)))

    # ---- images ---------------------------------------------------------------------------------
    @property
    def has_vision(self) -> bool:
        """True when a projector is loaded (Model(..., mmproj=...))."""
        self._c  # raises if closed
        return bool(lib.diffgemma_model_has_vision(self._model))

    @property
    def image_token(self) -> int | None:
        """The image soft-token id a prompt holds one run of per image (None when the model has none)."""
        self._c
        token = lib.diffgemma_model_image_token(self._model)
        return None if token < 0 else int(token)

    def image_n_tokens(self, width: int, height: int) -> int:
        """Soft tokens an image of width x height becomes (raises without a projector or for a bad size)."""
        self._c
        n = lib.diffgemma_image_n_tokens(self._model, _c_int("width", width), _c_int("height", height))
        if n < 0:
            check(n)
        return int(n)

    def image_embed(self, image) -> np.ndarray:
        """The projector's output for one image, [n_tokens, n_embd] float32 (what replaces its soft tokens)."""
        from .images import c_images

        (img,) = self._images([image])
        c_image, _keep = c_images([img])
        out = np.empty((self.image_n_tokens(img.width, img.height), self.n_embd), dtype=np.float32)
        n = ffi.new("int32_t *")
        with self._using() as ctx:
            check(lib.diffgemma_image_embed(ctx, c_image, ffi.from_buffer("float[]", out), out.size, n))
        return out

    @staticmethod
    def _images(images) -> list:
        """The images as diffgemma_cpp.images.Image (anything load_image takes: Image, (h, w, 3) uint8 array,
        path, bytes, data: URL, PIL image)."""
        from .images import Image, load_image

        return [image if isinstance(image, Image) else load_image(image) for image in (images or [])]

    def _set_images(self, ctx, images) -> None:
        """Give the context the images of the prompt that follows (none clears them)."""
        from .images import c_images

        images = self._images(images)
        array, _keep = c_images(images) if images else (ffi.NULL, None)
        check(lib.diffgemma_set_images(ctx, array, len(images)))

    def decoder_logits(self, canvas_ids, sc_logits=None) -> np.ndarray:
        """Softcapped logits [canvas_length, n_vocab] of one decoder pass; the KV cache is unchanged.

        sc_logits: None, or HF's ``self_conditioning_logits`` (the previous step's temperature-scaled
        logits), shape [canvas_length, n_vocab]."""
        self._c  # raises if closed
        C, V = self.canvas_length, self.n_vocab
        canvas = _ids(canvas_ids, "canvas_ids")
        if canvas.shape != (C,):
            raise errors.InvalidArgumentError(f"canvas_ids must hold canvas_length={C} ids, got {canvas.shape[0]}")
        sc_ptr = ffi.NULL
        if sc_logits is not None:
            sc = np.ascontiguousarray(np.asarray(sc_logits, dtype=np.float32))
            if sc.shape == (1, C, V):
                sc = sc[0]
            if sc.shape != (C, V):
                raise errors.InvalidArgumentError(f"sc_logits must have shape ({C}, {V}), got {sc.shape}")
            sc_ptr = ffi.from_buffer("float[]", sc)
        out = np.empty((C, V), dtype=np.float32)
        with self._using() as ctx:
            check(lib.diffgemma_decoder_logits(ctx, ffi.from_buffer("int32_t[]", canvas), sc_ptr,
                                               ffi.from_buffer("float[]", out)))
        return out

    def dump_tensors(self, names: str, *, canvas=None, sc_logits=None, prompt=None) -> dict:
        """Named intermediate tensors of one encoder (``prompt``) or decoder (``canvas``) pass, {name: array}:
        see ``diffgemma_cpp.tensor_dump``."""
        from .tensor_dump import dump_tensors
        return dump_tensors(self, names, canvas=canvas, sc_logits=sc_logits, prompt=prompt)

    # ---- generation ------------------------------------------------------------------------------
    def generation_params(self, n_prompt: int, max_new_tokens, steps=None, seed=None, sampler: dict | None = None,
                          budget_name: str = "max_new_tokens"):
        """The C sampler settings of one generation, checked by the C library as diffgemma_generate_begin will
        check them (settings, and whether n_prompt tokens plus the canvases fit n_ctx), before any work.
        sampler: overrides of SAMPLER_OVERRIDES (None keeps the model's default). seed None: the Model's, else a
        fresh one. budget_name: what the caller's API calls max_new_tokens, for the hint of a context overflow."""
        ctx = self._c  # a closed Model says so here, before its zeroed facts are used
        p = ffi.new("diffgemma_sampler_params *")
        lib.diffgemma_sampler_default_params(self._model, p)
        # Python's side only converts values to C's types; their ranges are the C library's to check.
        p.max_new_tokens = _c_int("max_new_tokens", max_new_tokens)
        if steps is not None:
            p.steps = _c_int("steps", steps)
        for name, value in (sampler or {}).items():
            if name not in SAMPLER_OVERRIDES:
                raise TypeError(f"unexpected sampler setting {name!r}; the overrides are {', '.join(SAMPLER_OVERRIDES)}")
            if value is not None:
                setattr(p, name, value)
        if seed is None:
            seed = self.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise errors.InvalidArgumentError(f"seed must be a non-negative integer, got {seed!r}")
        p.seed = seed % (1 << 64)
        try:
            check(lib.diffgemma_generate_check(ctx, n_prompt, p))
        except errors.ContextOverflowError as exc:
            if budget_name == "max_new_tokens":
                raise
            raise errors.ContextOverflowError(str(exc).replace("max_new_tokens", budget_name)) from None
        return p

    def _replay(self, replay, n_steps_max: int, keep: list):
        """Pack {"init": [...], "sampled": [[...]], "renoise": [[...]]} (per block) into a diffgemma_replay."""
        if replay is None:
            return ffi.NULL
        C = self.canvas_length
        try:
            init = np.asarray(replay["init"], dtype=np.int32).reshape(-1, C)
            n_blocks = init.shape[0]
            steps = max(len(b) for b in replay["sampled"])
            sampled = np.zeros((n_blocks, steps, C), dtype=np.int32)
            renoise = np.zeros((n_blocks, steps, C), dtype=np.int32)
            for b in range(n_blocks):
                s = np.asarray(replay["sampled"][b], dtype=np.int32).reshape(-1, C)
                r = np.asarray(replay["renoise"][b], dtype=np.int32).reshape(-1, C)
                sampled[b, : len(s)] = s
                renoise[b, : len(r)] = r
        except (KeyError, ValueError, TypeError) as exc:
            raise errors.InvalidArgumentError(f"replay must be {{'init', 'sampled', 'renoise'}} per block of {C} ids: {exc}") from exc
        # Steps the caller did not record were never executed by the reference; pad so the C side accepts them.
        steps_needed = max(steps, n_steps_max)
        if steps_needed > steps:
            pad = np.zeros((n_blocks, steps_needed - steps, C), dtype=np.int32)
            sampled = np.concatenate([sampled, pad], 1)
            renoise = np.concatenate([renoise, pad], 1)
        arrays = [np.ascontiguousarray(a) for a in (init, sampled, renoise)]
        keep.extend(arrays)
        r = ffi.new("diffgemma_replay *")
        r.init = ffi.from_buffer("int32_t[]", arrays[0])
        r.sampled = ffi.from_buffer("int32_t[]", arrays[1])
        r.renoise = ffi.from_buffer("int32_t[]", arrays[2])
        r.n_blocks = n_blocks
        r.n_steps = steps_needed
        keep.append(r)
        return r

    def generate_ids(self, prompt_ids, max_new_tokens: int = 256, steps: int | None = None, t_min=None, t_max=None,
                     entropy_bound=None, stability_threshold=None, confidence_threshold=None, seed: int | None = None,
                     replay=None, on_step: Callable | None = None, images=None) -> list:
        """Prompt plus the committed canvases, exactly as HF's ``generate(...).sequences[0]`` (whole canvases;
        after the first EOS the rest of its canvas is pad)."""
        prompt = _ids(prompt_ids, "prompt_ids").tolist()
        blocks = list(self.generate_blocks(prompt, max_new_tokens, steps=steps, seed=seed, t_min=t_min, t_max=t_max,
                                           entropy_bound=entropy_bound, stability_threshold=stability_threshold,
                                           confidence_threshold=confidence_threshold, replay=replay, on_step=on_step,
                                           images=images))
        self.last_steps = sum(b.steps for b in blocks)
        return prompt + [t for b in blocks for t in b.canvas]

    def generate_blocks(self, prompt_ids, max_new_tokens: int = 256, steps: int | None = None, seed: int | None = None,
                        t_min=None, t_max=None, entropy_bound=None, stability_threshold=None, confidence_threshold=None,
                        on_step: Callable | None = None, replay=None, budget_name: str = "max_new_tokens",
                        images=None) -> Iterator[Block]:
        """Yield each committed canvas as soon as it is denoised (see Block). The KV cache keeps the prompt
        prefix between calls, so a chat's history is not re-encoded. Raises Cancelled after cancel().
        The settings are checked now; the generation begins at the first next(). replay: recorded draws
        {"init", "sampled", "renoise"} per block (reproduces another implementation token for token).
        budget_name: what the caller's API calls max_new_tokens, for the hint of a context overflow.
        images: the prompt's images in order (the i-th run of image_token ids is images[i]): Image objects of
        diffgemma_cpp.images, or anything its load_image takes ((h, w, 3) uint8 arrays, paths, ...); each is
        checked now."""
        prompt = _ids(prompt_ids, "prompt_ids")
        images = self._images(images)
        if images and not self.has_vision:
            raise errors.ImageError("this model has no vision projector: load it with Model(..., mmproj=...) "
                                              "to give it images")
        for image in images:  # sizes and the pixel cap, at once
            self.image_n_tokens(image.width, image.height)
        p = self.generation_params(len(prompt), max_new_tokens, steps, seed,
                                   dict(t_min=t_min, t_max=t_max, entropy_bound=entropy_bound,
                                        stability_threshold=stability_threshold,
                                        confidence_threshold=confidence_threshold), budget_name)
        keep: list = []
        rp = self._replay(replay, p.steps, keep)
        return self._canvases(prompt, p, rp, keep, on_step, images)

    def _canvases(self, prompt, p, rp, keep: list, on_step, images) -> Iterator[Block]:
        """The C generation as an iterator: begin at the first next(), one diffgemma_generate_next per canvas, and
        diffgemma_generate_end when the consumer stops early. `keep` holds the replay arrays alive meanwhile."""
        C = self.canvas_length
        relay = _StepRelay(on_step)
        handle = ffi.new_handle(relay)
        canvas = np.empty(C, dtype=np.int32)
        info = ffi.new("diffgemma_canvas_info *")
        with self._using() as ctx:
            self._set_images(ctx, images)
            check(lib.diffgemma_generate_begin(ctx, ffi.from_buffer("int32_t[]", prompt), len(prompt), p, rp))
            try:
                while not info.done:
                    self._c  # close() was called while the stream was paused: end it with that reason
                    status = lib.diffgemma_generate_next(ctx, lib._dg_py_step_callback, handle,
                                                         ffi.from_buffer("int32_t[]", canvas), info)
                    if relay.error is not None:
                        raise relay.error
                    check(status)
                    ids = canvas.tolist()
                    yield Block(ids[: info.n_content], bool(info.eos), int(info.steps), ids)
            finally:
                lib.diffgemma_generate_end(ctx)

    def cancel(self) -> None:
        """Stop the running generation within one denoising step (safe from any thread)."""
        if self._ctx is not None:
            lib.diffgemma_cancel(self._ctx)
