"""Validate OpenAI-style request bodies and turn them into ``create_completion`` / ``create_chat_completion``
keyword arguments. Every problem becomes a ``RequestError`` naming the offending field.

Accepted besides the OpenAI fields: the block-diffusion sampler settings ``steps``, ``t_min``, ``t_max``,
``entropy_bound``, ``stability_threshold``, ``confidence_threshold`` (send them through the OpenAI client's
``extra_body``), and for chat ``enable_thinking`` / ``chat_template_kwargs`` (vLLM's name).
OpenAI sampling fields that have no meaning for this sampler (``temperature``, ``top_p``, penalties,
``user``, ...) are accepted and ignored, so stock clients work; ``response_format`` asking for JSON is refused,
as silently returning free text would break the caller's parser.

Images come as OpenAI content parts ``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}``
(``detail`` is accepted and ignored). Over HTTP only ``data:`` URLs are taken: the server never fetches a URL and
never reads a file of its own host for a client.
"""

from __future__ import annotations

from typing import Any

from .completion import SAMPLER_OVERRIDES, TOOL_CHOICES

__all__ = ["RequestError", "completion_kwargs", "chat_kwargs", "MAX_STOP_STRINGS"]

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_TOKENS_LIMIT = 1 << 20


class RequestError(ValueError):
    """A bad request: HTTP ``status``, OpenAI error ``type``, the offending ``param``."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 422,
                 error_type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.error_type, self.code = param, status, error_type, code


def _int(body: dict, name: str, *, lo: int, hi: int, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"'{name}' must be an integer in [{lo}, {hi}], got {value!r}", param=name)
    return value


def _number(body: dict, name: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise RequestError(f"'{name}' must be a non-negative number, got {value!r}", param=name)
    return value


def _stop(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise RequestError(f"'stop' allows at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} "
                           "characters", param="stop")
    return stop


def _common(body: dict, max_tokens_field: str = "max_tokens") -> dict:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", status=400)
    if _int(body, "n", lo=1, hi=1, default=1) != 1:
        raise RequestError("'n' must be 1", param="n")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        # Ignoring it would hand back free text to a caller that is about to parse JSON.
        raise RequestError("'response_format' other than {\"type\": \"text\"} is not supported: the sampler "
                           "cannot constrain output to JSON", param="response_format")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", param="stream")
    kwargs = {
        "max_tokens": _int(body, max_tokens_field, lo=1, hi=MAX_TOKENS_LIMIT, default=256),
        "stream": stream,
        "seed": _int(body, "seed", lo=0, hi=(1 << 64) - 1),
        "stop": _stop(body),
        "steps": _int(body, "steps", lo=1, hi=10_000),
    }
    for name in SAMPLER_OVERRIDES:
        kwargs[name] = (_int(body, name, lo=0, hi=10_000) if name == "stability_threshold"
                        else _number(body, name))
    return kwargs


def completion_kwargs(body: Any) -> dict:
    """``/v1/completions`` body -> ``create_completion`` kwargs."""
    kwargs = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the OpenAI client sends a batch of one as a list
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("'prompt' must be a string or a non-empty list of token ids (batches are not "
                               "supported)", param="prompt")
    elif not isinstance(prompt, str):
        raise RequestError("'prompt' is required and must be a string", param="prompt")
    if body.get("echo"):
        raise RequestError("'echo' is not supported", param="echo")
    return {"prompt": prompt, **kwargs}


def _check_content_part(part: Any, where: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise RequestError(f"{where} must be an object with a string 'type'", param=where)
    if part["type"] == "image":  # HF's form names files and objects; a client sends OpenAI's image_url
        raise RequestError(f"{where}: send images as {{\"type\": \"image_url\", \"image_url\": {{\"url\": "
                           "\"data:image/png;base64,...\"}}", param=where, status=400)
    if part["type"] != "image_url":
        return
    info = part.get("image_url")
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str):
        raise RequestError(f"{where}.image_url.url is required (a data:image/...;base64 URL)",
                           param=f"{where}.image_url.url", status=400)
    if not url[:5].lower() == "data:":
        raise RequestError(f"{where}.image_url.url must be a data:image/...;base64 URL: this server never fetches "
                           "URLs nor reads its own files for a client", param=f"{where}.image_url.url",
                           status=400, code="invalid_image_url")


def chat_kwargs(body: Any) -> dict:
    """``/v1/chat/completions`` body -> ``create_chat_completion`` kwargs."""
    field = "max_completion_tokens" if isinstance(body, dict) and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    kwargs = _common(body, field)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is required and must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]")
        if isinstance(message.get("content"), list):
            for j, part in enumerate(message["content"]):
                _check_content_part(part, f"messages[{i}].content[{j}]")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise RequestError("'tools' must be a list of objects", param="tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice not in TOOL_CHOICES:
        raise RequestError(f"'tool_choice' must be one of {', '.join(map(repr, TOOL_CHOICES))}: the engine cannot "
                           "force a tool call", param="tool_choice")
    template_kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(template_kwargs, dict):
        raise RequestError("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    template_kwargs = dict(template_kwargs)
    enable_thinking = body.get("enable_thinking", template_kwargs.pop("enable_thinking", None))
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise RequestError("'enable_thinking' must be true or false", param="enable_thinking")
    reserved = {"messages", "tools", "add_generation_prompt", "documents"} & set(template_kwargs)
    if reserved:
        raise RequestError(f"'chat_template_kwargs' may not set {sorted(reserved)}", param="chat_template_kwargs")
    return {"messages": messages, "tools": tools, "tool_choice": tool_choice, "enable_thinking": enable_thinking,
            "template_kwargs": template_kwargs, **kwargs}
