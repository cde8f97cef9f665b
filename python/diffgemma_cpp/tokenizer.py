"""The Gemma-4 tokenizer of a GGUF, run by the C library (no Python tokenizer dependency).

    from diffgemma_cpp.tokenizer import Tokenizer
    with Tokenizer.from_gguf("model.gguf") as tok:      # vocab only, no weights
        ids = tok.tokenize("Hello <|turn>user")        # [bos, ...]; "<|turn>" is one token
        tok.detokenize(ids)                            # b"Hello <|turn>user" (bytes, exact)
        stream = tok.stream()                          # UTF-8-safe incremental decoding
        for block in blocks:
            print(stream.push(block), end="")
        print(stream.flush())

Equal to Hugging Face `tokenizers` on the tokenizer.json the GGUF was converted from (see csrc/tokenizer/tokenizer.h for
the exact rules). A Tokenizer is read-only and may be shared by threads; a TokenStream may not.
"""
from __future__ import annotations

from typing import Iterable

from . import errors
from ._lifetime import Closeable
from ._native import check, ffi, lib

__all__ = ["Tokenizer", "TokenStream", "TokenType"]


class TokenType:
    """llama.cpp's token types (tokenizer.ggml.token_type)."""

    UNDEFINED = lib.DIFFGEMMA_TOKEN_TYPE_UNDEFINED
    NORMAL = lib.DIFFGEMMA_TOKEN_TYPE_NORMAL
    UNKNOWN = lib.DIFFGEMMA_TOKEN_TYPE_UNKNOWN
    CONTROL = lib.DIFFGEMMA_TOKEN_TYPE_CONTROL
    USER_DEFINED = lib.DIFFGEMMA_TOKEN_TYPE_USER_DEFINED
    UNUSED = lib.DIFFGEMMA_TOKEN_TYPE_UNUSED
    BYTE = lib.DIFFGEMMA_TOKEN_TYPE_BYTE


def _as_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        # surrogateescape lets a str that came from undecodable bytes round-trip to those bytes.
        return text.encode("utf-8", "surrogateescape")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def _id_array(ids: Iterable[int]):
    ids = list(ids)
    try:
        return ffi.new("int32_t[]", ids), len(ids)
    except (OverflowError, TypeError) as e:
        raise errors.InvalidArgumentError(f"token ids must be int32 integers: {e}") from None


class Tokenizer(Closeable):
    """Tokenizer of a vocab owned by this object (from_gguf) or borrowed from a model (owner keeps it alive)."""

    def __init__(self, vocab_ptr, *, owner=None, owned: bool = False):
        if vocab_ptr == ffi.NULL:
            raise errors.InvalidArgumentError("Tokenizer needs a vocab (got NULL)")
        self._vocab = vocab_ptr
        self._owner = owner  # keeps a model alive while its vocab is in use
        self._owned = owned
        self._eog = None

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        """Load only the vocabulary of a GGUF file."""
        out = ffi.new("diffgemma_vocab **")
        check(lib.diffgemma_vocab_load(str(path).encode(), out))
        return cls(out[0], owned=True)

    # ---- lifetime ----
    def close(self) -> None:
        """Free an owned vocab now (idempotent). Borrowed vocabs are released with their model."""
        if self._owned and self._vocab is not None:
            lib.diffgemma_vocab_free(self._vocab)
        self._vocab = None
        self._owner = None

    @property
    def _ptr(self):
        if self._vocab is None:
            raise errors.InvalidArgumentError("this Tokenizer is closed")
        return self._vocab

    # ---- vocabulary facts ----
    @property
    def n_tokens(self) -> int:
        return lib.diffgemma_vocab_n_tokens(self._ptr)

    def __len__(self) -> int:
        return self.n_tokens

    bos_id = property(lambda self: lib.diffgemma_vocab_bos(self._ptr), doc="BOS id, or -1")
    eos_id = property(lambda self: lib.diffgemma_vocab_eos(self._ptr), doc="EOS id, or -1")
    pad_id = property(lambda self: lib.diffgemma_vocab_pad(self._ptr), doc="padding id, or -1")
    unk_id = property(lambda self: lib.diffgemma_vocab_unk(self._ptr), doc="<unk> id, or -1")
    mask_id = property(lambda self: lib.diffgemma_vocab_mask(self._ptr), doc="<mask> id, or -1")
    add_bos = property(lambda self: bool(lib.diffgemma_vocab_add_bos(self._ptr)),
                       doc="whether prompts start with BOS (tokenizer.ggml.add_bos_token)")

    @property
    def eog_ids(self) -> tuple[int, ...]:
        """Ids that end generation (eos, <turn|>, <|tool_response>, or the GGUF's eos_token_ids)."""
        if self._eog is None:
            n = ffi.new("size_t *")
            buf = ffi.new("int32_t[]", 64)
            status = lib.diffgemma_vocab_eog_ids(self._ptr, buf, 64, n)
            if status == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL:
                buf = ffi.new("int32_t[]", n[0])
                status = lib.diffgemma_vocab_eog_ids(self._ptr, buf, n[0], n)
            check(status)
            self._eog = tuple(buf[0:n[0]])
        return self._eog

    def is_eog(self, token: int) -> bool:
        return bool(lib.diffgemma_vocab_is_eog(self._ptr, token))

    def token_type(self, token: int) -> int:
        """A TokenType value; raises InvalidArgumentError for an id out of range."""
        t = lib.diffgemma_vocab_token_type(self._ptr, self._check_id(token))
        return t

    def token_text(self, token: int) -> str:
        """The token as stored in the vocab ("▁the", "<0x0A>", "<|turn>")."""
        return ffi.string(lib.diffgemma_vocab_token_text(self._ptr, self._check_id(token))).decode("utf-8", "replace")

    def token_id(self, text: str | bytes) -> int | None:
        """Id of the token spelled exactly `text`, or None."""
        b = _as_bytes(text)
        i = lib.diffgemma_vocab_find(self._ptr, b, len(b))
        return None if i < 0 else i

    def _check_id(self, token: int) -> int:
        if not isinstance(token, int) or not 0 <= token < self.n_tokens:
            raise errors.InvalidArgumentError(f"token id {token!r} is out of range (the vocab has {self.n_tokens} tokens)")
        return token

    # ---- text <-> tokens ----
    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text`. add_bos: prepend BOS (if the vocab has one). special: read control tokens
        written in the text ("<|turn>") as single tokens; USER_DEFINED markers ("<|channel>") always are."""
        data = _as_bytes(text)
        n = ffi.new("size_t *")
        cap = len(data) + 1  # at most one token per byte, plus BOS
        out = ffi.new("int32_t[]", cap)
        status = lib.diffgemma_tokenize(self._ptr, data, len(data), int(add_bos), int(special), out, cap, n)
        if status == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL:  # not expected, but the contract allows it
            cap = n[0]
            out = ffi.new("int32_t[]", cap)
            status = lib.diffgemma_tokenize(self._ptr, data, len(data), int(add_bos), int(special), out, cap, n)
        check(status)
        return list(out[0:n[0]])

    def detokenize(self, ids: Iterable[int], special: bool = True) -> bytes:
        """The exact bytes of `ids` (decode with .decode("utf-8", "replace") for display).
        special=False drops control tokens (HF's skip_special_tokens=True)."""
        arr, count = _id_array(ids)
        return self._bytes_call(lambda buf, cap, n: lib.diffgemma_detokenize(self._ptr, arr, count, int(special),
                                                                            buf, cap, n), 16 * count + 16)

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        return self._bytes_call(lambda buf, cap, n: lib.diffgemma_token_to_piece(self._ptr, token, int(special),
                                                                                buf, cap, n), 64)

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """detokenize() decoded as UTF-8, invalid bytes replaced by U+FFFD."""
        return self.detokenize(ids, special).decode("utf-8", "replace")

    def stream(self, special: bool = True) -> "TokenStream":
        """A streaming detokenizer that never splits a UTF-8 character."""
        return TokenStream(self, special)

    @staticmethod
    def _bytes_call(call, guess: int) -> bytes:
        n = ffi.new("size_t *")
        buf = ffi.new("char[]", guess)
        status = call(buf, guess, n)
        if status == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL:
            buf = ffi.new("char[]", n[0])
            status = call(buf, n[0], n)
        check(status)
        return ffi.unpack(buf, n[0])


class TokenStream:
    """Incremental detokenizer: push(ids) returns the text that is complete so far; flush() the rest.

    push_bytes/flush_bytes give the exact bytes (complete UTF-8 characters, plus bytes that can never become
    one); push/flush decode them, so a character split across pushes is never shown half."""

    def __init__(self, tokenizer: Tokenizer, special: bool = True):
        self._tokenizer = tokenizer  # keeps the vocab alive
        out = ffi.new("diffgemma_detokenizer **")
        check(lib.diffgemma_detokenizer_new(tokenizer._ptr, int(special), out))
        self._detok = ffi.gc(out[0], lib.diffgemma_detokenizer_free)

    def push_bytes(self, ids: Iterable[int]) -> bytes:
        arr, count = _id_array(ids)
        n = ffi.new("size_t *")
        cap = 16 * count + 16
        buf = ffi.new("char[]", cap)
        status = lib.diffgemma_detokenizer_push(self._detok, arr, count, buf, cap, n)
        if status == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL:  # the tokens are kept: fetch with a larger buffer
            cap = n[0]
            buf = ffi.new("char[]", cap)
            status = lib.diffgemma_detokenizer_push(self._detok, ffi.NULL, 0, buf, cap, n)
        check(status)
        return ffi.unpack(buf, n[0])

    def flush_bytes(self) -> bytes:
        return Tokenizer._bytes_call(lambda buf, cap, n: lib.diffgemma_detokenizer_flush(self._detok, buf, cap, n), 8)

    def push(self, ids: Iterable[int]) -> str:
        return self.push_bytes(ids).decode("utf-8", "replace")

    def flush(self) -> str:
        return self.flush_bytes().decode("utf-8", "replace")


def utf8_incomplete_tail(data: bytes) -> int:
    """Bytes at the end of `data` that start a UTF-8 character still waiting for more (0..3)."""
    return int(lib.diffgemma_utf8_incomplete_tail(data, len(data)))
