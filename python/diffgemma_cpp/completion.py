"""OpenAI-shaped completions on top of the block-diffusion engine (the llama-cpp-python surface).

``CompletionMixin`` is mixed into ``Model``; what it needs from the engine is the ``Engine`` protocol below. It
adds ``create_completion`` (also ``__call__``) and ``create_chat_completion``.

Block diffusion commits a whole canvas (``canvas_length`` tokens, 256 for DiffusionGemma) at a time, so:

- the engine denoises whole canvases, but never more than ``max_tokens`` tokens come back: the last canvas
  is cut there (``finish_reason == "length"`` when the cap, not an EOS or a stop string, ended the text);
- ``stream=True`` yields one chunk per committed canvas, then a final chunk carrying
  ``finish_reason`` (and ``usage``);
- ``on_step(step, total, canvas_text)`` previews the canvas being denoised after every step.

Thread contract
---------------
One generation at a time per ``Model`` (the engine decides: ``generate_blocks`` refuses a second one). A second
call made while one is running (from another thread, or by starting a new call while iterating a stream) raises
``ModelBusyError`` at once; it never blocks, corrupts state or crashes. A non-streaming call holds the model for its whole run; a
stream holds it from its first ``next()`` until it is exhausted, closed (``.close()``, ``break`` out of
a ``for`` loop then dropping it) or garbage-collected. ``Model.cancel()`` may be called from any
thread (or a signal handler): the running generation stops within one denoising step and returns with
``finish_reason == "cancelled"`` and the text of the canvases committed before it. Several models
may run in parallel threads. Servers that want queueing put their own lock in front (``server.py``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from .chat import ChatTemplate
from .errors import Cancelled, ImageError, InvalidArgumentError
from .images import BOI_TEXT, EOI_TEXT, expand_image_markers, load_image, split_image_parts
from .textstream import ReasoningSplitter, StopTextStream, decode_preview, normalise_stop
from .tool_calls import ToolCallSplitter, messages_for_template, openai_tool_call, split_tool_calls

__all__ = ["CompletionMixin", "Engine", "SAMPLER_OVERRIDES", "TOOL_CHOICES"]

# Sampler settings a call may override; None keeps the model's (GGUF / built-in) default.
SAMPLER_OVERRIDES = ("t_min", "t_max", "entropy_bound", "stability_threshold", "confidence_threshold")

# tool_choice values we honour: the model cannot be forced to call a tool, only told about tools or not.
TOOL_CHOICES = ("auto", "none")

# Markers of Gemma-4's thinking channel. The answer's reasoning is split off into reasoning_content.
THOUGHT_OPEN = "<|channel>thought"
THOUGHT_CLOSE = "<channel|>"

class Engine(Protocol):
    """What the completion layer needs from the engine it is mixed into (``Model``; the tests' fake engine)."""

    model_path: str
    metadata: dict
    chat_template: str | None
    tokenizer: Any  # a Tokenizer (token_text, bos_id ...), or None: the special ids then come from metadata
    n_vocab: int
    eos_ids: list

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list: ...

    def detokenize(self, ids) -> bytes: ...

    # Vision (optional: an engine without these is text only). has_vision: a projector is loaded; image_token: the
    # image soft-token id (None when the model has none); image_n_tokens(width, height): the soft tokens (projector
    # rows) one image becomes.
    has_vision: bool
    image_token: int | None

    def image_n_tokens(self, width: int, height: int) -> int: ...

    def generate_blocks(self, prompt_ids, max_new_tokens: int, *, steps, seed, on_step, budget_name: str,
                        images=None, **sampler) -> Iterator[Any]:
        """Checks the settings at once (InvalidArgumentError, ContextOverflowError); the returned iterator begins
        the generation at its first next() (ModelBusyError when another one runs) and yields committed canvases
        (``ids``, ``eos``, ``steps``); closing it ends the generation. ``images`` (a list of
        ``diffgemma_cpp.images.Image``, passed only when the prompt has any): image i fills the i-th run of
        ``image_token`` ids in the prompt."""
        ...

    def cancel(self) -> None: ...


class CompletionMixin:
    """Text in, text out, over an ``Engine``. See the module docstring for the thread contract."""

    # ---- small helpers --------------------------------------------------------------------

    def _model_name(self: Engine) -> str:
        name = getattr(self, "model_name", None)  # optional: the server's --alias
        return str(name) if name else Path(self.model_path).name

    def _special_id(self: Engine, name: str) -> int | None:
        """``bos`` / ``eos`` / ``unk`` / ``pad`` id: from the tokenizer when there is one, else the metadata."""
        from .names import key

        value = getattr(self.tokenizer, f"{name}_id", None) if self.tokenizer is not None else None
        if value is None:
            ident = {"bos": "TOKENIZER_BOS_ID", "eos": "TOKENIZER_EOS_ID", "unk": "TOKENIZER_UNK_ID",
                     "pad": "TOKENIZER_PAD_ID"}[name]
            value = (self.metadata or {}).get(key(ident))
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # metadata read back as text
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    def _special_token_text(self: Engine, token_id: int | None) -> str | None:
        if token_id is None:
            return None
        try:
            if self.tokenizer is not None:
                return self.tokenizer.token_text(token_id)  # the token's spelling, as HF's special_tokens_map has it
            return self.detokenize([token_id]).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - a missing token only means the template cannot name it
            return None

    def _template_special_tokens(self) -> dict:
        tokens = {}
        for name in ("bos", "eos", "unk", "pad"):
            text = self._special_token_text(self._special_id(name))
            if text is not None:
                tokens[f"{name}_token"] = text
        return tokens

    def _bos_id(self) -> int | None:
        return self._special_id("bos")

    def _prompt_ids(self, prompt: Any, add_bos: bool) -> list[int]:
        if isinstance(prompt, str):
            ids = list(self.tokenize(prompt, add_bos=add_bos, special=True))
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
        else:
            raise InvalidArgumentError("prompt must be a string or a list of token ids")
        bos = self._bos_id()
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # a template or prompt that already starts with <bos>: don't double it
        if not ids:
            raise InvalidArgumentError("prompt is empty: give at least one token of text")
        if any(t < 0 or t >= self.n_vocab for t in ids):
            raise InvalidArgumentError(f"prompt token ids must be in [0, {self.n_vocab})")
        return ids

    @staticmethod
    def _check_max_tokens(max_tokens: Any) -> int:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidArgumentError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        return max_tokens

    def _blocks(self: Engine, prompt_ids: list[int], max_tokens: int, steps: Any, seed: Any, sampler: dict,
                on_step: Callable[[int, int, str], None] | None, images: list | None = None) -> Iterator[Any]:
        step_cb = None
        if on_step is not None:
            eos_ids = list(self.eos_ids)

            def step_cb(step: int, total: int, canvas_ids: list[int]) -> None:
                on_step(step, total, decode_preview(self.detokenize, canvas_ids, eos_ids))

        if images:  # only then: a text prompt runs on engines that know nothing of images
            sampler = {**sampler, "images": images}
        return self.generate_blocks(prompt_ids, max_tokens, steps=steps, seed=seed, on_step=step_cb,
                                    budget_name="max_tokens", **sampler)

    # ---- the generation core --------------------------------------------------------------

    def _run(self, prompt_ids: list[int], *, max_tokens: int, stop: tuple[str, ...],
             blocks: Iterator[Any]) -> Iterator[tuple[str, dict | None]]:
        """Yield ``(text, None)`` per committed canvas of ``blocks``, then ``(tail_text, summary)`` once."""
        stream = StopTextStream(stop)
        n_completion, n_steps, n_canvases = 0, 0, 0
        finish = "length"
        try:
            for block in blocks:
                n_canvases += 1
                n_steps += int(getattr(block, "steps", 0) or 0)
                ids = list(block.ids)[: max_tokens - n_completion]  # OpenAI clients rely on the cap
                cut = len(ids) < len(block.ids)
                n_completion += len(ids)
                text = stream.push(self.detokenize(ids))
                if stream.stopped or (block.eos and not cut):
                    finish = "stop"
                if stream.stopped or block.eos or n_completion >= max_tokens:
                    yield text, None
                    break
                yield text, None
        except Cancelled:
            finish = "cancelled"
        finally:
            blocks.close()  # stop the engine at this canvas when the consumer stops early
        tail = stream.finish()
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n_completion,
                 "total_tokens": len(prompt_ids) + n_completion,
                 "canvases": n_canvases, "denoising_steps": n_steps}
        yield tail, {"finish_reason": finish, "usage": usage, "text": stream.text}

    def _run_to_end(self, settings: dict) -> dict:
        """Run a whole non-streaming generation; return _run's summary."""
        return list(self._run(**settings))[-1][1]

    @staticmethod
    def _sampler(kwargs: dict) -> dict:
        unknown = set(kwargs) - set(SAMPLER_OVERRIDES)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}; "
                            f"sampler overrides are {', '.join(SAMPLER_OVERRIDES)}")
        return {k: kwargs.get(k) for k in SAMPLER_OVERRIDES}

    # ---- create_completion ----------------------------------------------------------------

    def create_completion(self, prompt: str | list[int], max_tokens: int = 256, *, stream: bool = False,
                          seed: int | None = None, stop: str | list[str] | None = None, steps: int | None = None,
                          on_step: Callable[[int, int, str], None] | None = None, images: list | None = None,
                          **sampler: Any) -> Any:
        """Complete ``prompt`` (text, or token ids). Returns an OpenAI ``text_completion`` dict,
        or with ``stream=True`` an iterator of ``text_completion`` chunks (one per committed canvas).

        At most ``max_tokens`` tokens come back (the last canvas is cut). ``seed`` fixes the random draws (same seed,
        same prompt, same settings -> same text). ``stop`` ends the text before the first stop string.
        ``steps`` caps denoising steps per canvas. Sampler overrides: ``t_min``, ``t_max``,
        ``entropy_bound``, ``stability_threshold``, ``confidence_threshold``.
        ``images`` (anything ``diffgemma_cpp.images.load_image`` takes) go where the text prompt holds the image
        token's text (Gemma-4: ``<|image|>``), one each, in order, as HF's processor takes a text with images.
        """
        if images:
            if not isinstance(prompt, str) or not isinstance(images, (list, tuple)):
                raise InvalidArgumentError("images need a text prompt holding one image marker (<|image|>) per "
                                           "image, and a list of images")
            self._vision_required()
            images = [load_image(image) for image in images]
            prompt = self._image_prompt_ids(prompt, images)
        settings = self._settings(prompt, max_tokens, stop, steps, seed, sampler, on_step, add_bos=True,
                                  images=images or None)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self._model_name()}
        if stream:
            return self._stream_completion(settings, meta)
        summary = self._run_to_end(settings)
        return {**meta, "object": "text_completion",
                "choices": [{"text": summary["text"], "index": 0, "logprobs": None,
                             "finish_reason": summary["finish_reason"]}],
                "usage": summary["usage"]}

    __call__ = create_completion

    def _settings(self, prompt, max_tokens, stop, steps, seed, sampler, on_step, add_bos, images=None) -> dict:
        """Everything checked before any work (the engine checks its own settings when the blocks are made; the
        generation itself begins at the first canvas asked for)."""
        if on_step is not None and not callable(on_step):
            raise InvalidArgumentError("on_step must be callable as on_step(step, total, canvas_text)")
        prompt_ids = self._prompt_ids(prompt, add_bos)
        max_tokens = self._check_max_tokens(max_tokens)
        stop = normalise_stop(stop)
        blocks = self._blocks(prompt_ids, max_tokens, steps, seed, self._sampler(sampler), on_step, images)
        return dict(prompt_ids=prompt_ids, max_tokens=max_tokens, stop=stop, blocks=blocks)

    def _stream_completion(self, settings: dict, meta: dict) -> Iterator[dict]:
        with contextlib.closing(self._run(**settings)) as parts:
            for text, summary in parts:
                chunk = {**meta, "object": "text_completion",
                         "choices": [{"text": text, "index": 0, "logprobs": None,
                                      "finish_reason": summary and summary["finish_reason"]}]}
                if summary:
                    chunk["usage"] = summary["usage"]
                yield chunk

    # ---- images ---------------------------------------------------------------------------

    def _vision_required(self) -> None:
        if not getattr(self, "has_vision", False):
            raise ImageError("this model has no vision projector, so it cannot take images: load it with its "
                             "projector (Model(..., mmproj='mmproj.gguf'); on the command line --mmproj)")

    def _single_token(self, text: str) -> int:
        ids = list(self.tokenize(text, add_bos=False, special=True))
        if len(ids) != 1:
            raise ImageError(f"this model's vocabulary has no {text!r} token, which images need")
        return ids[0]

    def _image_prompt_ids(self, text: str, images: list) -> list[int]:
        """A rendered chat prompt with its image markers expanded (``images.expand_image_markers``)."""
        image_token = getattr(self, "image_token", None)
        marker = self._special_token_text(image_token)
        if image_token is None or not marker:
            raise ImageError("this model names no image token, so it cannot take images")
        return expand_image_markers(
            text, images, marker=marker, image_token=image_token, boi=self._single_token(BOI_TEXT),
            eoi=self._single_token(EOI_TEXT), n_tokens=self.image_n_tokens,
            tokenize=lambda piece, add_bos: self.tokenize(piece, add_bos=add_bos, special=True))

    def _chat_prompt(self, messages: Any, **render: Any) -> tuple[Any, list | None]:
        """``(prompt, images)``: the rendered text, or, when the messages hold image parts, the token ids with
        each image's soft tokens in place and the decoded images in prompt order."""
        template_messages, sources = split_image_parts(messages_for_template(messages))
        if not sources:
            return self.apply_chat_template(template_messages, **render), None
        self._vision_required()  # before decoding anything
        images = [load_image(source) for source in sources]
        text = self.apply_chat_template(template_messages, **render)
        return self._image_prompt_ids(text, images), images

    # ---- create_chat_completion -----------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], *, chat_template: str | None = None,
                            tools: list[dict] | None = None, add_generation_prompt: bool = True,
                            enable_thinking: bool | None = None, **template_kwargs: Any) -> str:
        """Render ``messages`` with ``chat_template`` or, by default, the GGUF's ``tokenizer.chat_template``.

        Image content parts (OpenAI ``image_url`` or HF ``image``) render as HF's processor renders them: each as
        the template writes an image (for Gemma-4 the marker ``<|image|>``, expanded only when generating)."""
        messages, _ = split_image_parts(messages)
        source = chat_template if chat_template is not None else self.chat_template
        if not source:
            raise InvalidArgumentError("this model has no chat template (tokenizer.chat_template); "
                                       "pass chat_template=... or use create_completion with your own prompt")
        template = ChatTemplate(source, special_tokens=self._template_special_tokens())
        return template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                               enable_thinking=enable_thinking, **template_kwargs)

    def create_chat_completion(self, messages: list[dict], max_tokens: int = 256, *, stream: bool = False,
                               seed: int | None = None, stop: str | list[str] | None = None,
                               steps: int | None = None, on_step: Callable[[int, int, str], None] | None = None,
                               chat_template: str | None = None, tools: list[dict] | None = None,
                               tool_choice: str | None = None, enable_thinking: bool | None = None,
                               template_kwargs: dict | None = None, **sampler: Any) -> Any:
        """Answer a conversation. Returns an OpenAI ``chat.completion`` dict, or with ``stream=True``
        an iterator of ``chat.completion.chunk`` dicts (one per committed canvas).

        The prompt is ``messages`` rendered by the chat template (``chat_template`` overrides the
        GGUF's) with the assistant's generation prompt. ``enable_thinking`` switches Gemma-4's thinking
        channel; a thought block in the answer goes to ``message.reasoning_content`` (``delta.reasoning_content``
        when streaming).
        With ``tools``, the model's Gemma-4 tool calls become ``message.tool_calls`` (OpenAI shape, ``arguments``
        a JSON string; ``delta.tool_calls`` when streaming, each call whole in one chunk) and ``finish_reason``
        is ``"tool_calls"``. ``tool_choice`` is ``"auto"`` (the default) or ``"none"`` (the tools are neither
        shown to the model nor parsed). Assistant messages may carry ``tool_calls`` with JSON-string
        ``arguments`` and tool messages only a ``tool_call_id``, as OpenAI clients send them.
        Consecutive turns share the rendered prefix, so the engine reuses its KV cache for the history.
        Images: a user message's ``content`` may be a list of parts, OpenAI's ``{"type": "text", "text": ...}`` and
        ``{"type": "image_url", "image_url": {"url": ...}}`` (a ``data:image/...;base64,`` URL, a ``file://`` URL or
        a local path; never fetched from the network) or HF's ``{"type": "image", "image" | "url" | "path": ...}``
        (also a PIL image, a numpy array or a ``diffgemma_cpp.images.Image``). They need a model loaded with its
        vision projector (``ImageError`` otherwise); each image becomes ``image_n_tokens(width, height)`` prompt
        tokens, so a prompt that no longer fits the context raises ``ContextOverflowError``.
        Other arguments are as for ``create_completion``.
        """
        if tool_choice is not None and tool_choice not in TOOL_CHOICES:
            raise InvalidArgumentError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)}, got {tool_choice!r} "
                                       "(a tool call cannot be forced)")
        if tool_choice == "none":
            tools = None
        prompt, images = self._chat_prompt(messages, chat_template=chat_template, tools=tools,
                                           enable_thinking=enable_thinking, **(template_kwargs or {}))
        parse_calls = bool(tools)
        # The template writes <bos> itself when it wants one; _prompt_ids drops a doubled one.
        settings = self._settings(prompt, max_tokens, stop, steps, seed, sampler, on_step, add_bos=True,
                                  images=images)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self._model_name()}
        if stream:
            return self._stream_chat(settings, meta, parse_calls)
        summary = self._run_to_end(settings)
        message = {"role": "assistant", **split_reasoning(summary["text"])}
        finish = summary["finish_reason"]
        if parse_calls:
            content, calls = split_tool_calls(message["content"])
            if calls:
                message["content"] = content if content.strip() else None
                message["tool_calls"] = [openai_tool_call(name, arguments) for name, arguments in calls]
                finish = _tool_calls_finish(finish)
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": summary["usage"]}

    def _stream_chat(self, settings: dict, meta: dict, parse_calls: bool) -> Iterator[dict]:
        first = True
        splitter = ReasoningSplitter(THOUGHT_OPEN, THOUGHT_CLOSE)
        call_splitter = ToolCallSplitter() if parse_calls else None
        n_calls = 0
        with contextlib.closing(self._run(**settings)) as parts:
            for text, summary in parts:
                reasoning, content = splitter.push(text)
                if summary:
                    more_reasoning, more_content = splitter.finish()
                    reasoning, content = reasoning + more_reasoning, content + more_content
                calls = []
                if call_splitter is not None:
                    content, calls = call_splitter.push(content)
                    if summary:
                        more_content, more_calls = call_splitter.finish()
                        content, calls = content + more_content, calls + more_calls
                delta = {"role": "assistant"} if first else {}
                if reasoning:
                    delta["reasoning_content"] = reasoning
                delta["content"] = content
                if calls:
                    delta["tool_calls"] = [{"index": n_calls + i, **openai_tool_call(name, arguments)}
                                           for i, (name, arguments) in enumerate(calls)]
                    n_calls += len(calls)
                first = False
                finish = summary and summary["finish_reason"]
                if finish and n_calls:
                    finish = _tool_calls_finish(finish)
                chunk = {**meta, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                if summary:
                    chunk["usage"] = summary["usage"]
                yield chunk


def _tool_calls_finish(finish_reason: str) -> str:
    # The answer ended on its own after calling tools: OpenAI says "tool_calls". A cut-off ("length") or
    # cancelled answer keeps its reason, so the caller sees that it was not finished.
    return "tool_calls" if finish_reason == "stop" else finish_reason


def split_reasoning(text: str) -> dict:
    """``{"content": ...}``, plus ``reasoning_content`` when the text opens with a thought block.

    A thought that never closes (the text ran out while thinking) is all reasoning.
    """
    stripped = text.lstrip()
    if not stripped.startswith(THOUGHT_OPEN):
        return {"content": text}
    body = stripped[len(THOUGHT_OPEN):]
    end = body.find(THOUGHT_CLOSE)
    if end < 0:
        return {"content": "", "reasoning_content": body.strip()}
    return {"content": body[end + len(THOUGHT_CLOSE):].lstrip(), "reasoning_content": body[:end].strip()}
