"""Turn committed token blocks into text that is safe to show as it streams.

Two hazards when streaming generated text:

- a UTF-8 character can be split across two canvases (byte-fallback tokens ``<0xE2>`` ``<0x82>`` ...),
  so bytes are decoded incrementally and an incomplete tail waits for the next canvas;
- a stop string can straddle two canvases, so any tail that could still grow into a stop string is
  held back until the next canvas shows whether it does. A stop string is therefore never emitted.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable

__all__ = ["StopTextStream", "normalise_stop"]


def normalise_stop(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    """``None`` / a string / a list of strings -> a tuple of non-empty stop strings."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    try:
        items = list(stop)
    except TypeError:
        raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"stop must be a string or a list of strings, got an item of type {type(item).__name__}")
    return tuple(s for s in items if s)


class StopTextStream:
    """Feed bytes block by block; get back the text that can be emitted now.

    ``push(data)`` returns newly emittable text; after it, ``stopped`` says whether a stop string was
    found (the text before it has been returned and everything after it is discarded).
    ``finish()`` flushes the held-back tail (an incomplete UTF-8 sequence becomes U+FFFD).
    ``text`` is everything emitted so far.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._stop = stop
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded, not yet emitted: may be the start of a stop string
        self.text = ""
        self.stopped = False
        self.stop_string: str | None = None

    def push(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data, final=False)
        return self._drain(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        cut, which = self._earliest_stop()
        if which is not None:
            out, self._pending = self._pending[:cut], ""
            self.stopped, self.stop_string = True, which
        else:
            keep = 0 if final else self._stop_prefix_tail()
            split = len(self._pending) - keep
            out, self._pending = self._pending[:split], self._pending[split:]
        self.text += out
        return out

    def _earliest_stop(self) -> tuple[int, str | None]:
        best, which = len(self._pending) + 1, None
        for s in self._stop:
            i = self._pending.find(s)
            if 0 <= i < best:
                best, which = i, s
        return best, which

    def _stop_prefix_tail(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest


def decode_preview(detokenize: Callable[[list[int]], bytes], ids: list[int], eos_ids: Iterable[int]) -> str:
    """Readable text of a (noisy) canvas: cut at its first EOS, invalid bytes shown as U+FFFD."""
    eos = set(eos_ids)
    for i, t in enumerate(ids):
        if t in eos:
            ids = ids[:i]
            break
    return detokenize(list(ids)).decode("utf-8", errors="replace")


class ReasoningSplitter:
    """Split streamed answer text into (reasoning, content) deltas, the streaming twin of ``split_reasoning``.

    A text that opens (after whitespace) with ``open_marker`` has its thought, up to ``close_marker``,
    sent as reasoning (stripped), and the rest as content (left-stripped); any other text is all content.
    Feeding the pieces of a text in any split gives the same totals as splitting the whole text.
    """

    def __init__(self, open_marker: str, close_marker: str) -> None:
        self._open, self._close = open_marker, close_marker
        self._state = "start"   # start -> (thinking -> after) | content
        self._buf = ""          # text not yet classified or emitted

    def push(self, text: str) -> tuple[str, str]:
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, str]:
        reasoning = content = ""
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(self._open):
                self._state, self._buf = "thinking", head[len(self._open):]
                self._reasoning_started = False
            elif final or not self._open.startswith(head):
                self._state = "content"
            else:
                return "", ""  # still could be the opening marker
        if self._state == "thinking":
            end = self._buf.find(self._close)
            if end < 0 and not final:
                keep = longest_suffix_prefix(self._buf, self._close)
                body, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                reasoning = self._emit_reasoning(body, final=False)
                return reasoning, ""
            if end < 0:  # the text ended inside the thought (e.g. max_tokens): it is all reasoning
                reasoning, self._buf = self._emit_reasoning(self._buf, final=True), ""
                self._state = "content"
                return reasoning, ""
            reasoning = self._emit_reasoning(self._buf[:end], final=True)
            self._state, self._buf = "after", self._buf[end + len(self._close):]
        if self._state == "after":
            stripped = self._buf.lstrip()
            if stripped or final:
                self._state, self._buf = "content", stripped
            else:
                self._buf = ""
                return reasoning, ""
        if self._state == "content":
            content, self._buf = self._buf, ""
        return reasoning, content

    def _emit_reasoning(self, body: str, final: bool) -> str:
        # Leading whitespace of the thought is dropped; trailing whitespace waits until more text follows it.
        if not self._reasoning_started:
            body = body.lstrip()
            if not body:
                return ""
            self._reasoning_started = True
        if final:
            out = self._held_space + body
            self._held_space = ""
            return out.rstrip()
        trimmed = body.rstrip()
        if trimmed:
            out = self._held_space + trimmed
            self._held_space = body[len(trimmed):]
            return out
        self._held_space += body
        return ""

    _held_space = ""
    _reasoning_started = False


def longest_suffix_prefix(text: str, marker: str) -> int:
    """Length of the longest proper prefix of ``marker`` that ``text`` ends with (text to hold back while
    streaming, in case the marker is still arriving)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
