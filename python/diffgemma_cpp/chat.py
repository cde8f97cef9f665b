"""Chat templates: render a list of messages into the prompt text a model was trained on.

A GGUF carries its template as ``tokenizer.chat_template`` (a Jinja2 program). A GGUF can come from
anywhere, so the template is untrusted code: it runs in jinja2's ``ImmutableSandboxedEnvironment``,
sees only plain JSON-like data (never the caller's own objects), and cannot store dunder attributes.

The rendering matches ``transformers``' ``tokenizer.apply_chat_template(..., tokenize=False)``
for the same template, messages and keyword arguments: same Jinja options (``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``), the same helpers (``raise_exception``, ``strftime_now``, a
``tojson`` that does not HTML-escape and takes ``ensure_ascii / indent / separators / sort_keys``,
``dict``, ``namespace``), message keys whose value is ``None`` dropped, reasoning aliases
(``reasoning_content`` / ``thinking`` / ``reasoning``) filled in, and the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) visible as variables.

Typical use::

    template = ChatTemplate(model.chat_template, bos_token="<bos>", eos_token="<eos>")
    prompt = template.render(messages, add_generation_prompt=True, enable_thinking=False)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Iterable

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ChatTemplateError", "render_chat_template"]

# The names a message's reasoning may arrive under; templates usually read the first.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Appended to the final message for continue_final_message, then cut from the output with everything after it.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """The template is malformed, raised ``raise_exception(...)``, or the messages do not fit it."""


# ---- helpers visible to templates -------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>', '&' and "'"; chat prompts must carry them verbatim.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates, without exposing the ``dict`` type object itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore names, so templates cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates may not store underscore-prefixed attributes on a namespace (got {name!r})")


class _GenerationBlock(jinja2.ext.Extension):
    """Accept HF's ``{% generation %}...{% endgeneration %}`` markers; we only need their text."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller: Any) -> str:
        return caller()


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not parse: {exc.message} (template line {exc.lineno})") from exc


# ---- input sanitising --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Rebuild ``value`` from plain JSON-like types; anything else becomes an inert ``"<TypeName>"``.

    The sandbox only knows the methods of builtin types are harmless, so caller objects (enums, arrays,
    pydantic models, ...) must not reach the template.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return _plain(value.item())  # numpy scalar (an array, e.g. an image's pixels, becomes "<ndarray>")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _normalise_messages(messages: Iterable[Any]) -> list[dict]:
    out = []
    for index, message in enumerate(messages):
        message = _plain(message)
        if not isinstance(message, dict):
            raise ChatTemplateError(f"message {index} must be a dict with 'role' and 'content', got {message!r}")
        # OpenAI-style payloads carry content=None / tool_calls=None; templates handle a missing key instead.
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _check_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ChatTemplateError(f"tools must be a list of JSON-schema dicts, got {type(tools).__name__}")
    for index, tool in enumerate(tools):
        if not isinstance(_plain(tool), dict):
            raise ChatTemplateError(
                f"tool {index} must be a JSON-schema dict (e.g. {{'type': 'function', 'function': {{...}}}}), "
                f"got {type(tool).__name__}")
    return _plain(list(tools))


# ---- public API --------------------------------------------------------------------------------


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to.

    ``special_tokens`` maps template variable names (``bos_token``, ``eos_token``, ``pad_token``,
    ``unk_token``, ...) to their text, as transformers passes its ``special_tokens_map``.
    """

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None,
                 special_tokens: Mapping[str, str] | None = None) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("chat template is empty; pass chat_template=... or use a GGUF that has one")
        self.source = source
        tokens = dict(special_tokens or {})
        if bos_token is not None:
            tokens["bos_token"] = bos_token
        if eos_token is not None:
            tokens["eos_token"] = eos_token
        self.special_tokens = tokens
        self._template = _compile(source)

    def render(self, messages: list[Any], *, tools: list[dict] | None = None, documents: list[dict] | None = None,
               add_generation_prompt: bool = False, continue_final_message: bool | str = False,
               enable_thinking: bool | None = None, **kwargs: Any) -> str:
        """Render ``messages`` (dicts with ``role``, ``content``, optional ``tool_calls``, ...).

        ``add_generation_prompt`` appends the header that starts the assistant's turn.
        ``continue_final_message`` leaves the last message open so the model continues it.
        ``enable_thinking`` is passed to the template only when given, so the template's own default
        applies otherwise. Extra ``kwargs`` become template variables (they override special tokens).
        """
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
        chat = _normalise_messages(messages)
        tool_schemas = _check_tools(tools)
        if documents is not None and not all(isinstance(d, Mapping) for d in documents):
            raise ChatTemplateError("documents must be a list of dicts with 'title' and 'text' keys")
        if enable_thinking is not None:
            kwargs["enable_thinking"] = bool(enable_thinking)
        variables = _plain({**self.special_tokens, **kwargs})

        final_text = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final_text = chat[-1].get(field)
            if not isinstance(final_text, str):
                raise ChatTemplateError(f"continue_final_message: the last message has no text {field!r} to continue")
            fields = [field]
            if field in _REASONING_FIELDS:  # reasoning is copied under several names; tag every copy
                fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final_text]
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG

        try:
            text = self._template.render(messages=chat, tools=tool_schemas, documents=_plain(documents),
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"chat template failed on these messages: {type(exc).__name__}: {exc}") from exc

        if final_text is not None:
            tag = _CONTINUE_TAG.strip()
            if final_text.strip() not in text or tag not in text:
                raise ChatTemplateError("continue_final_message: the template dropped the final message")
            cut = text.rindex(tag)
            # If the template kept the tag's trailing space it preserves spacing; otherwise it trimmed, so trim too.
            text = text[:cut] if text[cut:cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:cut].rstrip()
        return text


def render_chat_template(source: str, messages: list[Any], **kwargs: Any) -> str:
    """One-shot ``ChatTemplate(source).render(messages, **kwargs)`` (special tokens go in ``kwargs``)."""
    return ChatTemplate(source).render(messages, **kwargs)
