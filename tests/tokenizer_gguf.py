"""Vocab-only GGUFs from a `tokenizers.Tokenizer`, for the tokenizer tests.

Writes the tokenizer.* keys as shared/docs/gguf-format.md lists them, with the token types our converter writes:
BYTE for <0xNN>, CONTROL for special added tokens (llama.cpp's LlamaHfVocab differs here: it leaves special added
tokens outside transformers' all_special_ids, e.g. <unusedN>, NORMAL), USER_DEFINED for non-special added tokens
and for Gemma 4's visible markers (<|channel>, <|"|>, ...), NORMAL otherwise.

`overrides` replaces or removes keys ({key: None} drops it; {key: (value, GGUFValueType)} writes that exact
type), so the malformed-vocab tests can build each broken file from a good one.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf

from diffgemma_cpp.names import ARCH, key
from tiny_hf import GEMMA4_VISIBLE_MARKERS

T = gguf.GGUFValueType


def vocab_fields(tok) -> dict:
    """The tokenizer.* keys of `tok` as {key: (value, type)} in the converter's order."""
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    n = len(vocab)
    tokens = [""] * n
    for text, i in vocab.items():
        tokens[i] = text
    added = {a["content"]: a for a in spec["added_tokens"]}
    types, scores = [], []
    for text in tokens:
        if text in GEMMA4_VISIBLE_MARKERS:
            ty = gguf.TokenType.USER_DEFINED
        elif text in added:
            ty = gguf.TokenType.CONTROL if added[text]["special"] else gguf.TokenType.USER_DEFINED
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            ty = gguf.TokenType.BYTE
        else:
            ty = gguf.TokenType.NORMAL
        types.append(int(ty))
        scores.append(-1000.0 if ty == gguf.TokenType.USER_DEFINED else 0.0)
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in spec["model"]["merges"]]
    return {
        key("TOKENIZER_MODEL"): ("gemma4", T.STRING),
        key("TOKENIZER_TOKENS"): (tokens, T.ARRAY, T.STRING),
        key("TOKENIZER_SCORES"): (scores, T.ARRAY, T.FLOAT32),
        key("TOKENIZER_TOKEN_TYPE"): (types, T.ARRAY, T.INT32),
        key("TOKENIZER_MERGES"): (merges, T.ARRAY, T.STRING),
        key("TOKENIZER_BOS_ID"): (vocab["<bos>"], T.UINT32),
        key("TOKENIZER_EOS_ID"): (vocab["<eos>"], T.UINT32),
        key("TOKENIZER_UNK_ID"): (vocab["<unk>"], T.UINT32),
        key("TOKENIZER_PAD_ID"): (vocab["<pad>"], T.UINT32),
        key("TOKENIZER_MASK_ID"): (vocab["<mask>"], T.UINT32),
        key("TOKENIZER_ADD_BOS"): (True, T.BOOL),
        key("TOKENIZER_ADD_SPACE_PREFIX"): (False, T.BOOL),
    }


def write_vocab_gguf(tok, path, overrides: dict | None = None) -> Path:
    """Write a vocab-only GGUF for `tok` (general.architecture + tokenizer.* keys, no tensors)."""
    fields = vocab_fields(tok)
    for k, v in (overrides or {}).items():
        if v is None:
            fields.pop(k, None)
        else:
            fields[k] = v
    path = Path(path)
    w = gguf.GGUFWriter(str(path), ARCH)
    for k, spec in fields.items():
        value, vtype = spec[0], spec[1]
        if vtype == T.ARRAY:
            w.add_key_value(k, value, vtype, sub_type=spec[2])
        else:
            w.add_key_value(k, value, vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def write_converted_vocab_gguf(tok, directory, generation_eos=(1, 106, 50)) -> Path:
    """The same vocab through the real converter: tiny_hf.save_tokenizer writes tokenizer.json +
    tokenizer_config.json into `directory`, diffgemma_cpp.convert.vocab turns them into the tokenizer.* keys."""
    from tiny_hf import save_tokenizer

    from diffgemma_cpp.convert.vocab import load_vocab, vocab_kv

    directory = Path(directory)
    save_tokenizer(tok, directory)
    vocab = load_vocab(directory, generation_eos=list(generation_eos))
    path = directory / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), ARCH)
    for k, value, vtype, sub_type in vocab_kv(vocab):
        w.add_key_value(k, value, vtype, sub_type=sub_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path
