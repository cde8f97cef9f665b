"""Loading a vocab from a GGUF: facts read from it, a specific error for each kind of broken file, and the C
API's buffer and argument contracts."""
from __future__ import annotations

import gguf
import pytest

from tiny_hf import train_tiny_gemma_tokenizer
from tokenizer_gguf import T, vocab_fields, write_vocab_gguf

from diffgemma_cpp import errors
from diffgemma_cpp._native import ffi, lib
from diffgemma_cpp.names import key
from diffgemma_cpp.tokenizer import Tokenizer, TokenType, utf8_incomplete_tail


@pytest.fixture(scope="module")
def hf():
    return train_tiny_gemma_tokenizer(600, seed=2)


@pytest.fixture(scope="module")
def good_path(hf, tmp_path_factory):
    return write_vocab_gguf(hf, tmp_path_factory.mktemp("vocab") / "good.gguf")


@pytest.fixture
def tok(good_path):
    with Tokenizer.from_gguf(good_path) as t:
        yield t


def test_facts_read_from_the_gguf(tok, hf):
    assert tok.n_tokens == len(tok) == 600
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.add_bos
    # Gemma 4's generation EOS list [1, 106, 50], from the vocab when the GGUF has no eos_token_ids.
    assert tok.eog_ids == (1, 50, 106)
    assert tok.is_eog(106) and tok.is_eog(1) and not tok.is_eog(105)
    assert tok.token_type(105) == TokenType.CONTROL                 # <|turn>
    assert tok.token_type(100) == TokenType.USER_DEFINED            # <|channel>
    assert tok.token_type(hf.token_to_id("<0x41>")) == TokenType.BYTE
    assert tok.token_text(106) == "<turn|>"
    assert tok.token_id("<turn|>") == 106 and tok.token_id("no such token") is None


def test_eos_token_ids_key_wins(hf, tmp_path):
    path = write_vocab_gguf(hf, tmp_path / "eos.gguf",
                            {key("TOKENIZER_EOS_IDS"): ([106, 7], T.ARRAY, T.INT32)})
    with Tokenizer.from_gguf(path) as t:
        assert t.eog_ids == (1, 7, 106)  # the list plus eos itself


def test_special_tokens_render_only_when_asked(tok):
    ids = tok.tokenize("<|turn>user\nhi<turn|><|channel>x", add_bos=True)
    assert ids[0] == tok.bos_id and 105 in ids and 100 in ids
    assert tok.detokenize(ids) == b"<bos><|turn>user\nhi<turn|><|channel>x"
    # CONTROL tokens hidden; USER_DEFINED markers (read by the chat parser) stay.
    assert tok.detokenize(ids, special=False) == b"user\nhi<|channel>x"
    assert tok.token_to_piece(105, special=False) == b""
    assert tok.tokenize("<|turn>", add_bos=False, special=False) != [105]
    assert tok.tokenize("<|channel>", add_bos=False, special=False) == [100]


def test_byte_tokens_detokenize_to_raw_bytes(tok, hf):
    e2, x82, xac = (hf.token_to_id(f"<0x{b:02X}>") for b in (0xE2, 0x82, 0xAC))
    assert tok.token_to_piece(e2) == b"\xe2"
    assert tok.detokenize([e2, x82, xac]) == "€".encode()
    assert tok.detokenize([e2, x82]) == b"\xe2\x82"  # byte-exact, no U+FFFD


def test_stream_holds_back_partial_characters(tok, hf):
    e2, x82, xac = (hf.token_to_id(f"<0x{b:02X}>") for b in (0xE2, 0x82, 0xAC))
    a = hf.token_to_id("a")
    s = tok.stream()
    assert s.push([a, e2]) == "a"
    assert s.push([x82]) == ""
    assert s.push([xac, a]) == "€a"
    assert s.push([e2]) == ""
    assert s.flush_bytes() == b"\xe2"  # the stream ended mid-character: the byte comes out as is
    assert s.flush() == ""


def test_utf8_incomplete_tail():
    assert utf8_incomplete_tail(b"") == 0
    assert utf8_incomplete_tail(b"abc") == 0
    assert utf8_incomplete_tail("é".encode()[:1]) == 1
    assert utf8_incomplete_tail("€".encode()[:2]) == 2
    assert utf8_incomplete_tail("😀".encode()[:3]) == 3
    assert utf8_incomplete_tail("😀".encode()) == 0
    assert utf8_incomplete_tail(b"\x80") == 0        # stray continuation: can never complete
    assert utf8_incomplete_tail(b"\xed\xa0") == 0    # surrogate prefix: already invalid
    assert utf8_incomplete_tail(b"\xf5") == 0        # not a lead byte
    assert utf8_incomplete_tail(b"a\xf0\x9f") == 2


def test_tokenize_accepts_bytes_and_surrogateescaped_str(tok):
    assert tok.tokenize(b"\xff", add_bos=False) == [tok.token_id("<0xFF>")]
    assert tok.tokenize(b"\xff".decode("utf-8", "surrogateescape"), add_bos=False) == [tok.token_id("<0xFF>")]
    with pytest.raises(TypeError):
        tok.tokenize(123)


def test_c_buffer_contracts(tok):
    v = tok._ptr
    text = b"hello world, hello tokenizer"
    n = ffi.new("size_t *")
    out = ffi.new("int32_t[]", 2)
    assert lib.diffgemma_tokenize(v, text, len(text), 1, 1, out, 2, n) == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL
    needed = n[0]
    assert needed == len(tok.tokenize(text)) > 2
    assert "do not fit" in ffi.string(lib.diffgemma_last_error()).decode()
    out = ffi.new("int32_t[]", needed)
    assert lib.diffgemma_tokenize(v, text, len(text), 1, 1, out, needed, n) == lib.DIFFGEMMA_OK
    assert list(out[0:n[0]]) == tok.tokenize(text)

    ids = ffi.new("int32_t[]", tok.tokenize(text, add_bos=False))
    buf = ffi.new("char[]", 4)
    assert lib.diffgemma_detokenize(v, ids, len(ids), 1, buf, 4, n) == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL
    assert n[0] == len(text)
    # A NULL output with capacity 0 is a size query.
    assert lib.diffgemma_detokenize(v, ids, len(ids), 1, ffi.NULL, 0, n) == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL
    assert n[0] == len(text)


def test_streaming_push_keeps_tokens_when_the_buffer_is_small(tok):
    d = ffi.new("diffgemma_detokenizer **")
    assert lib.diffgemma_detokenizer_new(tok._ptr, 1, d) == lib.DIFFGEMMA_OK
    det = ffi.gc(d[0], lib.diffgemma_detokenizer_free)
    ids = ffi.new("int32_t[]", tok.tokenize("hello world", add_bos=False))
    n = ffi.new("size_t *")
    small = ffi.new("char[]", 3)
    assert lib.diffgemma_detokenizer_push(det, ids, len(ids), small, 3, n) == lib.DIFFGEMMA_ERR_BUFFER_TOO_SMALL
    assert n[0] == len(b"hello world")
    big = ffi.new("char[]", n[0])
    assert lib.diffgemma_detokenizer_push(det, ffi.NULL, 0, big, n[0], n) == lib.DIFFGEMMA_OK
    assert ffi.unpack(big, n[0]) == b"hello world"


def test_bad_arguments_raise_specific_errors(tok, good_path):
    with pytest.raises(errors.InvalidArgumentError, match="out of range"):
        tok.detokenize([0, tok.n_tokens])
    with pytest.raises(errors.InvalidArgumentError, match="out of range"):
        tok.detokenize([-1])
    with pytest.raises(errors.InvalidArgumentError, match="out of range"):
        tok.token_text(10**6)
    s = tok.stream()
    with pytest.raises(errors.InvalidArgumentError):
        s.push([tok.n_tokens + 5])
    n = ffi.new("size_t *")
    assert lib.diffgemma_tokenize(ffi.NULL, b"x", 1, 1, 1, ffi.NULL, 0, n) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT
    assert "vocab is NULL" in ffi.string(lib.diffgemma_last_error()).decode()
    assert lib.diffgemma_vocab_n_tokens(ffi.NULL) == 0
    assert lib.diffgemma_vocab_token_text(tok._ptr, -1) == ffi.NULL
    lib.diffgemma_vocab_free(ffi.NULL)  # a no-op
    t = Tokenizer.from_gguf(good_path)
    t.close()
    t.close()  # idempotent
    with pytest.raises(errors.InvalidArgumentError, match="closed"):
        t.tokenize("x")


# ---- malformed vocabularies ------------------------------------------------------------------------------

MALFORMED = {
    # name: (overrides builder(fields) -> dict, exception, message fragment)
    "merge_unknown_left": (lambda f: {key("TOKENIZER_MERGES"): (["qqq▁zz e"] + f[key("TOKENIZER_MERGES")][0],
                                                                 T.ARRAY, T.STRING)},
                           errors.ModelLoadError, "merge 0 'qqq▁zz e' refers to 'qqq▁zz', which is not a token"),
    "merge_result_unknown": (lambda f: {key("TOKENIZER_MERGES"): (["<0x41> <0x42>"], T.ARRAY, T.STRING)},
                             errors.ModelLoadError, "makes '<0x41><0x42>', which is not a token"),
    "merge_without_space": (lambda f: {key("TOKENIZER_MERGES"): (["ab"], T.ARRAY, T.STRING)},
                            errors.ModelLoadError, "has no ' '"),
    "token_type_count": (lambda f: {key("TOKENIZER_TOKEN_TYPE"): (f[key("TOKENIZER_TOKEN_TYPE")][0][:-1],
                                                                   T.ARRAY, T.INT32)},
                         errors.ModelLoadError, "has 599 entries but 'tokenizer.ggml.tokens' has 600 tokens"),
    "scores_count": (lambda f: {key("TOKENIZER_SCORES"): ([0.0] * 3, T.ARRAY, T.FLOAT32)},
                     errors.ModelLoadError, "'tokenizer.ggml.scores' has 3 entries"),
    "tokens_wrong_type": (lambda f: {key("TOKENIZER_TOKENS"): (list(range(600)), T.ARRAY, T.INT32)},
                          errors.ModelLoadError, "'tokenizer.ggml.tokens' must be an array of str"),
    "token_type_wrong_type": (lambda f: {key("TOKENIZER_TOKEN_TYPE"): ([1.0] * 600, T.ARRAY, T.FLOAT32)},
                              errors.ModelLoadError, "must be an array of i32, but it is an array of f32"),
    "merges_not_array": (lambda f: {key("TOKENIZER_MERGES"): ("a b", T.STRING)},
                         errors.ModelLoadError, "'tokenizer.ggml.merges' must be an array"),
    "bos_is_string": (lambda f: {key("TOKENIZER_BOS_ID"): ("2", T.STRING)},
                      errors.ModelLoadError, "'tokenizer.ggml.bos_token_id' must be an integer token id"),
    "bos_out_of_range": (lambda f: {key("TOKENIZER_BOS_ID"): (600, T.UINT32)},
                         errors.ModelLoadError, "= 600 is not a token id (the vocab has 600 tokens)"),
    "eos_ids_out_of_range": (lambda f: {key("TOKENIZER_EOS_IDS"): ([1, 9999], T.ARRAY, T.INT32)},
                             errors.ModelLoadError, "entry 1 = 9999 is not a token id"),
    "token_type_value": (lambda f: {key("TOKENIZER_TOKEN_TYPE"): ([9] + f[key("TOKENIZER_TOKEN_TYPE")][0][1:],
                                                                   T.ARRAY, T.INT32)},
                         errors.ModelLoadError, "token 0 '<pad>' has type 9"),
    "add_bos_not_bool": (lambda f: {key("TOKENIZER_ADD_BOS"): (1, T.UINT32)},
                         errors.ModelLoadError, "'tokenizer.ggml.add_bos_token' must be a bool"),
    "no_tokens": (lambda f: {key("TOKENIZER_TOKENS"): None},
                  errors.ModelLoadError, "GGUF has no 'tokenizer.ggml.tokens' key"),
    "no_merges": (lambda f: {key("TOKENIZER_MERGES"): None},
                  errors.ModelLoadError, "GGUF has no 'tokenizer.ggml.merges' key"),
    "no_model": (lambda f: {key("TOKENIZER_MODEL"): None},
                 errors.ModelLoadError, "GGUF has no 'tokenizer.ggml.model' key"),
    "llama_model": (lambda f: {key("TOKENIZER_MODEL"): ("llama", T.STRING)},
                    errors.UnsupportedModelError, "tokenizer model 'llama' is not supported"),
    "space_prefix": (lambda f: {key("TOKENIZER_ADD_SPACE_PREFIX"): (True, T.BOOL)},
                     errors.UnsupportedModelError, "never adds a space prefix"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_vocab_is_a_specific_error(case, hf, tmp_path):
    build, exc, fragment = MALFORMED[case]
    path = write_vocab_gguf(hf, tmp_path / f"{case}.gguf", build(vocab_fields(hf)))
    with pytest.raises(exc) as info:
        Tokenizer.from_gguf(path)
    assert fragment in str(info.value), str(info.value)
    # The exact subclass, not a parent that would also catch unrelated failures.
    assert type(info.value) is exc


def test_missing_and_non_gguf_files(tmp_path):
    with pytest.raises(errors.ModelFileError, match="cannot open"):
        Tokenizer.from_gguf(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(errors.ModelLoadError, match="is not a readable GGUF"):
        Tokenizer.from_gguf(junk)
    out = ffi.new("diffgemma_vocab **")
    assert lib.diffgemma_vocab_load(ffi.NULL, out) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT
    assert out[0] == ffi.NULL


def test_one_vocab_serves_many_threads(tok):
    """A vocab is read-only: concurrent tokenize/detokenize calls (the GIL is released in C) agree with serial ones."""
    import threading

    texts = [f"thread text {i} <|turn>user\n{'é😀 ' * (i % 7)}<turn|>" * (1 + i % 5) for i in range(64)]
    expected = [tok.tokenize(t) for t in texts]
    failures = []

    def work(k):
        for _ in range(30):
            for i in range(k, len(texts), 4):
                ids = tok.tokenize(texts[i])
                if ids != expected[i] or tok.detokenize(ids[1:]) != texts[i].encode():
                    failures.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
