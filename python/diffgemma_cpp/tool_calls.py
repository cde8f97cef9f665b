"""Gemma-4 tool calls in generated text -> OpenAI ``tool_calls``.

Gemma-4 writes a tool call as text between two special tokens, in its own notation rather than JSON::

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3,metric:true}<tool_call|>

Keys are bare, strings sit between ``<|"|>`` delimiters (so they may hold ``,`` ``}`` ``:`` or quotes),
numbers, ``true``, ``false`` and ``null`` are bare, and ``{...}`` / ``[...]`` nest. Several calls follow
each other with nothing between them. ``ToolCallSplitter`` takes the answer's content as it streams and
separates text from finished calls; ``split_tool_calls`` does the same for a whole text. A call that does
not parse, or that the text ends inside, stays in the content verbatim: nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .errors import InvalidArgumentError
from .textstream import longest_suffix_prefix

__all__ = ["TOOL_CALL_OPEN", "TOOL_CALL_CLOSE", "STRING_DELIMITER", "ToolCallSyntaxError", "ToolCallSplitter",
           "parse_tool_call", "parse_tool_arguments", "split_tool_calls", "openai_tool_call", "messages_for_template"]

TOOL_CALL_OPEN = "<|tool_call>"
TOOL_CALL_CLOSE = "<tool_call|>"
STRING_DELIMITER = '<|"|>'

_CALL_HEAD = re.compile(r"\s*call:([^{}\s]+)\s*")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_WORDS = {"true": True, "false": False, "null": None}
# Deeper nesting is refused rather than recursed into: generated text is untrusted, Python's stack is not.
MAX_NESTING = 64


class ToolCallSyntaxError(ValueError):
    """A ``<|tool_call>`` body that is not ``call:NAME{...}`` in Gemma-4's notation."""


def parse_tool_call(body: str) -> tuple[str, dict]:
    """The text between the markers, ``call:NAME{...}``, as ``(NAME, arguments)``."""
    head = _CALL_HEAD.match(body)
    if head is None:
        raise ToolCallSyntaxError(f"a tool call must start with 'call:NAME{{', got {body[:40]!r}")
    arguments = parse_tool_arguments(body[head.end():])
    return head.group(1), arguments


def parse_tool_arguments(text: str) -> dict:
    """``{key:value,...}`` in Gemma-4's notation as a dict (the whole text must be one object)."""
    parser = _ArgumentParser(text)
    parser.skip_space()
    if not parser.at("{"):
        raise ToolCallSyntaxError(f"tool call arguments must be an object '{{...}}', got {text[:40]!r}")
    value = parser.value()
    parser.skip_space()
    if parser.pos != len(text):
        raise ToolCallSyntaxError(f"unexpected text after the arguments at offset {parser.pos}: "
                                  f"{text[parser.pos:parser.pos + 20]!r}")
    return value


class _ArgumentParser:
    """Recursive descent over one argument object; ``pos`` is the offset into ``text``."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.depth = text, 0, 0

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, token: str) -> None:
        if not self.at(token):
            found = self.text[self.pos:self.pos + 20] or "the end of the call"
            raise ToolCallSyntaxError(f"expected {token!r} at offset {self.pos}, found {found!r}")
        self.pos += len(token)

    def value(self) -> Any:
        self.skip_space()
        if self.at(STRING_DELIMITER):
            return self.string()
        if self.at("{"):
            return self.container("{", "}", keyed=True)
        if self.at("["):
            return self.container("[", "]", keyed=False)
        return self.bare()

    def string(self) -> str:
        self.expect(STRING_DELIMITER)
        end = self.text.find(STRING_DELIMITER, self.pos)
        if end < 0:
            raise ToolCallSyntaxError(f"string opened at offset {self.pos - len(STRING_DELIMITER)} never closes")
        value, self.pos = self.text[self.pos:end], end + len(STRING_DELIMITER)
        return value

    def word(self, stops: str, what: str) -> str:
        """The stripped text up to the next character in ``stops``; it must not be empty."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        word = self.text[start:self.pos].strip()
        if not word:
            raise ToolCallSyntaxError(f"expected {what} at offset {start}")
        return word

    def container(self, opener: str, closer: str, keyed: bool) -> dict | list:
        if self.depth == MAX_NESTING:
            raise ToolCallSyntaxError(f"arguments nest deeper than {MAX_NESTING} levels at offset {self.pos}")
        self.depth += 1
        items = self.items(opener, closer, keyed)
        self.depth -= 1
        return items

    def items(self, opener: str, closer: str, keyed: bool) -> dict | list:
        self.expect(opener)
        items: dict | list = {} if keyed else []
        self.skip_space()
        if self.at(closer):
            self.pos += 1
            return items
        while True:
            if keyed:
                name = self.key()
                self.skip_space()
                self.expect(":")
                items[name] = self.value()
            else:
                items.append(self.value())
            self.skip_space()
            if self.at(closer):
                self.pos += 1
                return items
            self.expect(",")

    def key(self) -> str:
        self.skip_space()
        if self.at(STRING_DELIMITER):
            return self.string()
        return self.word(":,{}[]", "a key")

    def bare(self) -> Any:
        # A number, true / false / null, or (as models sometimes write) an unquoted string up to the next
        # ',' or closing bracket of this level.
        word = self.word(",}]", "a value")
        if word in _WORDS:
            return _WORDS[word]
        if _INTEGER.fullmatch(word):
            return int(word)
        if _NUMBER.fullmatch(word):
            return float(word)
        return word


class ToolCallSplitter:
    """Split streamed content into text and finished tool calls.

    ``push(text)`` returns ``(text_delta, calls)`` where ``calls`` are the ``(name, arguments)`` completed by
    this piece; ``finish()`` flushes what was held back. Text that might be the start of ``<|tool_call>`` is
    held until it is known; a call is held until ``<tool_call|>``. Feeding a text in any split gives the
    same totals as ``split_tool_calls`` on the whole text.
    """

    def __init__(self) -> None:
        self._buf = ""           # text not yet emitted
        self._in_call = False    # _buf holds a call body whose closing marker has not come yet

    def push(self, text: str) -> tuple[str, list[tuple[str, dict]]]:
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[tuple[str, dict]]]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[tuple[str, dict]]]:
        out, calls = [], []
        while True:
            if self._in_call:
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    if final:  # the text ended inside a call: keep it as written
                        out.append(TOOL_CALL_OPEN + self._buf)
                        self._buf, self._in_call = "", False
                    break
                body, self._buf = self._buf[:end], self._buf[end + len(TOOL_CALL_CLOSE):]
                self._in_call = False
                try:
                    calls.append(parse_tool_call(body))
                except ToolCallSyntaxError:
                    out.append(TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE)
                continue
            start = self._buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                out.append(self._buf[:start])
                self._buf, self._in_call = self._buf[start + len(TOOL_CALL_OPEN):], True
                continue
            keep = 0 if final else longest_suffix_prefix(self._buf, TOOL_CALL_OPEN)
            out.append(self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return "".join(out), calls


def split_tool_calls(text: str) -> tuple[str, list[tuple[str, dict]]]:
    """``(text without the calls, [(name, arguments), ...])`` for a whole answer."""
    splitter = ToolCallSplitter()
    text_part, calls = splitter.push(text)
    tail, more = splitter.finish()
    return text_part + tail, calls + more


def openai_tool_call(name: str, arguments: dict) -> dict:
    """One entry of an OpenAI ``message.tool_calls`` list (``arguments`` as a JSON string)."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def messages_for_template(messages: Any) -> Any:
    """OpenAI-style messages as chat templates expect them, without changing the caller's objects.

    OpenAI clients send an assistant's ``tool_calls[].function.arguments`` as a JSON string and answer with
    ``{"role": "tool", "tool_call_id": ...}``; templates (Gemma-4's included) render arguments from a dict
    and name a tool response after its function. So JSON-string arguments become dicts, and a tool message
    without a ``name`` gets the name of the call its ``tool_call_id`` answers. Anything else passes through
    unchanged (the template layer reports malformed messages).
    """
    if not isinstance(messages, (list, tuple)):
        return messages
    names_by_id: dict[str, str] = {}
    out = []
    for index, message in enumerate(messages):
        if callable(getattr(message, "model_dump", None)):  # e.g. the openai package's message objects
            message = message.model_dump(exclude_none=True)
        if isinstance(message, dict) and isinstance(message.get("tool_calls"), list):
            message = {**message, "tool_calls": [_call_for_template(call, index, j, names_by_id)
                                                 for j, call in enumerate(message["tool_calls"])]}
        elif (isinstance(message, dict) and message.get("role") == "tool" and message.get("name") is None
              and isinstance(message.get("tool_call_id"), str) and message["tool_call_id"] in names_by_id):
            message = {**message, "name": names_by_id[message["tool_call_id"]]}
        out.append(message)
    return out


def _call_for_template(call: Any, index: int, j: int, names_by_id: dict[str, str]) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return call
    if isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
        names_by_id[call["id"]] = function["name"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return call
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"messages[{index}].tool_calls[{j}].function.arguments is not valid JSON "
                                   f"({exc.msg} at offset {exc.pos}): {arguments[:60]!r}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgumentError(f"messages[{index}].tool_calls[{j}].function.arguments must be a JSON object, "
                                   f"got {type(parsed).__name__}")
    return {**call, "function": {**function, "arguments": parsed}}
