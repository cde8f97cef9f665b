"""A tiny stand-in for the block-diffusion engine, for testing the text layer without a model.

It speaks the engine API the completion layer needs (``diffgemma_cpp.completion.Engine``, which ``Model``
implements) and "generates" a scripted answer: each canvas is revealed over ``steps`` denoising steps (the
preview shows noise being replaced), then committed. Like the engine it checks steps and seed when the blocks are
made and refuses a second generation while one runs (ModelBusyError); it records every generation.

Vision as the engine has it (``has_vision=True`` stands for a loaded projector): ``image_token``, ``image_n_tokens``
(HF Gemma4Processor's count for the release settings, or ``image_n_tokens=`` a function), and ``generate_blocks(...,
images=...)``, checked as the C library checks them (one run of image tokens per image, of the image's length) and
recorded. ``n_ctx`` makes it check that the prompt plus the canvases fit, as the engine does.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass

from diffgemma_cpp.completion import CompletionMixin
from diffgemma_cpp.errors import Cancelled, ContextOverflowError, InvalidArgumentError, ModelBusyError
from diffgemma_cpp.names import key

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<turn|>", "<|turn>", "<|channel>", "<channel|>", "<|think|>",
            "<|\"|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
            "<|image>", "<|image|>", "<image|>"]
BYTE_BASE = len(SPECIALS)  # token BYTE_BASE + b is the byte b
PAD, EOS, BOS, UNK, END_TURN = 0, 1, 2, 3, 4
BOI, IMAGE, EOI = (SPECIALS.index(t) for t in ("<|image>", "<|image|>", "<image|>"))


def gemma4_image_tokens(width: int, height: int, patch: int = 16, pooling: int = 3, max_soft: int = 280) -> int:
    """Soft tokens of one image under HF Gemma4Processor's rule: the aspect-preserving size with at most
    max_soft * pooling^2 patches whose sides are multiples of patch * pooling, one token per pooled cell."""
    side = patch * pooling
    factor = math.sqrt(max_soft * pooling * pooling * patch * patch / (width * height))
    h, w = math.floor(factor * height / side) * side, math.floor(factor * width / side) * side
    longest = (max_soft // (pooling * pooling)) * side
    if h == 0 and w == 0:
        raise InvalidArgumentError(f"a {width}x{height} image is too thin")
    if h == 0:
        h, w = side, min(math.floor(width / height) * side, longest)
    elif w == 0:
        w, h = side, min(math.floor(height / width) * side, longest)
    return (h // patch) * (w // patch) // (pooling * pooling)


@dataclass
class Block:
    ids: list
    eos: bool
    steps: int
    canvas: list


class FakeModel(CompletionMixin):
    def __init__(self, answer: str | bytes | list | None = "", *, eos: bool = True, canvas_length: int = 8,
                 steps: int = 3, step_delay: float = 0.0, chat_template: str | None = None,
                 model_path: str = "/models/fake-diffgemma.gguf", has_vision: bool = False,
                 image_n_tokens=None, n_ctx: int | None = None) -> None:
        self.canvas_length = canvas_length
        self.n_vocab = BYTE_BASE + 256
        self.eos_ids = [EOS, END_TURN]
        self.metadata = {key("TOKENIZER_BOS_ID"): BOS, key("TOKENIZER_EOS_ID"): EOS,
                         key("TOKENIZER_PAD_ID"): PAD, key("TOKENIZER_UNK_ID"): UNK}
        self.chat_template = chat_template
        self.model_path = model_path
        self.tokenizer = None  # the special ids come from the metadata
        self.has_vision = has_vision
        self.image_token = IMAGE
        self._image_n_tokens = image_n_tokens or gemma4_image_tokens
        self.n_ctx = n_ctx
        self.steps = steps
        self.step_delay = step_delay
        self.set_answer(answer, eos=eos)
        self.calls: list[dict] = []
        self._running = 0
        self._running_lock = threading.Lock()
        self._cancel = threading.Event()
        self.step_started = threading.Event()

    def set_answer(self, answer, *, eos: bool = True) -> None:
        """The scripted output: text (tokenized with specials), bytes, or ids; EOS appended if ``eos``."""
        if isinstance(answer, str):
            ids = self.tokenize(answer, add_bos=False)
        elif isinstance(answer, bytes):
            ids = [BYTE_BASE + b for b in answer]
        else:
            ids = list(answer or [])
        self.answer_ids = ids + ([END_TURN] if eos else [])

    # ---- tokenizer ---------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        ids = [BOS] if add_bos else []
        i = 0
        while i < len(text):
            if special:
                match = next((s for s in SPECIALS if text.startswith(s, i)), None)
                if match:
                    ids.append(SPECIALS.index(match))
                    i += len(match)
                    continue
            ids.extend(BYTE_BASE + b for b in text[i].encode("utf-8"))
            i += 1
        return ids

    def detokenize(self, ids) -> bytes:
        out = bytearray()
        for t in ids:
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} out of range")
            out += bytes([t - BYTE_BASE]) if t >= BYTE_BASE else SPECIALS[t].encode()
        return bytes(out)

    # ---- engine ------------------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancel.set()

    def image_n_tokens(self, width: int, height: int) -> int:
        if not self.has_vision:
            raise InvalidArgumentError("no projector loaded")
        return self._image_n_tokens(width, height)

    def _check_images(self, prompt_ids, images) -> None:
        runs, previous = [], None
        for t in prompt_ids:
            if t == self.image_token:
                if previous != self.image_token:
                    runs.append(0)
                runs[-1] += 1
            previous = t
        if images and not self.has_vision:
            raise InvalidArgumentError("images given but no projector is loaded")
        if len(runs) != len(images or []):
            raise InvalidArgumentError(f"the prompt has {len(runs)} image token runs for {len(images or [])} images")
        for i, (run, image) in enumerate(zip(runs, images or [])):
            if run != self.image_n_tokens(image.width, image.height):
                raise InvalidArgumentError(f"image {i}: run of {run} tokens for a {image.width}x{image.height} image")

    def generate_blocks(self, prompt_ids, max_new_tokens=256, steps=None, seed=None, t_min=None, t_max=None,
                        entropy_bound=None, stability_threshold=None, confidence_threshold=None, on_step=None,
                        budget_name="max_new_tokens", images=None):
        for name, value, low in (("steps", steps, 1), ("seed", seed, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        self._check_images(list(prompt_ids), images)
        if self.n_ctx is not None:
            need = len(prompt_ids) + -(-max_new_tokens // self.canvas_length) * self.canvas_length
            if need > self.n_ctx:
                raise ContextOverflowError(f"prompt ({len(prompt_ids)} tokens) + {budget_name} ({max_new_tokens}) "
                                           f"needs {need} positions; the context holds {self.n_ctx}")
        call = dict(prompt_ids=list(prompt_ids), max_new_tokens=max_new_tokens, steps=steps, seed=seed, t_min=t_min,
                    t_max=t_max, entropy_bound=entropy_bound, stability_threshold=stability_threshold,
                    confidence_threshold=confidence_threshold, images=images)
        return self._generate(call, max_new_tokens, steps or self.steps, seed, on_step)

    def _generate(self, call, max_new_tokens, steps, seed, on_step):
        with self._running_lock:
            if self._running:
                raise ModelBusyError("the fake engine is already generating")
            self._running += 1
            self.calls.append(call)
        self._cancel.clear()
        try:
            rng = random.Random(seed)
            C = self.canvas_length
            n_canvases = -(-max_new_tokens // C)
            for b in range(n_canvases):
                truth = (self.answer_ids[b * C:(b + 1) * C] + [PAD] * C)[:C]
                canvas = [rng.randrange(BYTE_BASE, self.n_vocab) for _ in range(C)]
                for step in range(1, steps + 1):
                    self.step_started.set()
                    if self._cancel.is_set():
                        raise Cancelled("generation cancelled")
                    if self.step_delay:
                        time.sleep(self.step_delay)
                    shown = C * step // steps
                    canvas = truth[:shown] + canvas[shown:]
                    if on_step is not None:
                        on_step(step, steps, list(canvas))
                ids = truth
                eos_at = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
                if eos_at is not None:
                    yield Block(ids=ids[:eos_at], eos=True, steps=steps, canvas=truth)
                    return
                if b * C + C >= len(self.answer_ids):  # ran out of script: pad like a real model would not
                    ids = [t for t in ids if t != PAD]
                yield Block(ids=ids, eos=False, steps=steps, canvas=truth)
        finally:
            with self._running_lock:
                self._running -= 1
