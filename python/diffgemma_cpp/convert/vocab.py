"""tokenizer.json + tokenizer_config.json + chat template -> the `tokenizer.*` GGUF keys, as llama.cpp writes Gemma 4.

Token types: `<0xXX>` byte tokens are BYTE; every tokenizer.json added token is CONTROL if it is `special`,
else USER_DEFINED; ids that transformers lists as special (bos/eos/unk/pad/mask/... and `extra_special_tokens` /
`additional_special_tokens`) are CONTROL too; the rest NORMAL. Then the Gemma 4 chat/tool markers are forced to
USER_DEFINED so the chat parser sees them in the output. Every score is -1000 (BPE ranks by merges).

One intentional difference from llama.cpp (whose LlamaHfVocab types a token CONTROL only if it is in
transformers' all_special_ids): a `special` added token that transformers does not list, e.g. every
`<unusedN>` of Gemma 4, is CONTROL here where llama.cpp writes NORMAL. HF `tokenizers` cuts every added token out
of the text before BPE, and so does our tokenizer for CONTROL/USER_DEFINED tokens; typed NORMAL, "<unused3>" in a
prompt would be spelled out in pieces and the ids would differ from HF's.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFValueType as VT, TokenType

from .. import names
from ..errors import ModelFileError, UnsupportedModelError

# Rendered in the output so the chat/tool parser can read them (llama.cpp's Gemma 4 converter does the same).
VISIBLE_MARKERS = ("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                   "<tool_response|>", '<|"|>')
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
SCORE = -1000.0


@dataclass
class Vocab:
    tokens: list
    scores: list
    types: list
    merges: list
    special_ids: dict             # role -> id for the roles the tokenizer names (bos, eos, unk, pad, mask, ...)
    eos_ids: list                 # end-of-generation ids (generation_config first)
    add_bos: bool = True
    chat_template: str | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.tokens)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path.parent}: missing {path.name} ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable {what} ({exc})") from None


def _token_content(value):
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _check_added_token_flags(tok: dict) -> None:
    """Refuse added-token flags that a GGUF cannot carry and our tokenizer would therefore get wrong.

    HF's AddedVocabulary (checked on the tiny test tokenizers, tokenizers 0.23):
    - lstrip / rstrip: the token swallows the whitespace before / after it ("a <unused0>" -> "a", " <unused0>");
    - single_word: the token matches only when not glued to word characters ("a<unused0>b" is spelled out);
    - normalized: the token is matched in the normalized text (Gemma's normalizer turns " " into "▁"), so
      a token containing " " or "▁" would also match the other spelling.
    GGUF has no per-token field for any of these (llama.cpp guesses lstrip/rstrip from model names only), and our
    tokenizer matches added tokens exactly as written in the raw text. Our tiny test tokenizers (like the Gemma
    tokenizers we know of) set all four false; a token that relies on one is refused here rather than converted
    into a file that tokenizes differently from HF. `normalized` on text without a space is harmless (the same
    spans match in the raw and the normalized text) and is accepted.
    """
    text = tok["content"]
    for flag in ("lstrip", "rstrip", "single_word"):
        if tok.get(flag, False):
            raise UnsupportedModelError(f"tokenizer.json: added token {text!r} sets {flag}=true, which GGUF cannot "
                                        "record; our tokenizer would split text around it differently from HF")
    if tok.get("normalized", not tok.get("special", False)) and (" " in text or "\u2581" in text):
        raise UnsupportedModelError(f"tokenizer.json: added token {text!r} is matched after normalization and "
                                    "contains a space, which GGUF cannot record; our tokenizer would match it "
                                    "differently from HF")


def load_vocab(directory, generation_eos: list | None = None) -> Vocab:
    directory = Path(directory)
    tj = _read_json(directory / "tokenizer.json", "tokenizer")
    tc_path = directory / "tokenizer_config.json"
    tc = _read_json(tc_path, "tokenizer config") if tc_path.is_file() else {}
    try:
        model = tj["model"]
        base_vocab: dict = model["vocab"]
        added = tj.get("added_tokens") or []
    except (KeyError, TypeError):
        raise ModelFileError(f"{directory / 'tokenizer.json'}: unreadable tokenizer (no model.vocab)") from None
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        raise UnsupportedModelError(f"{directory / 'tokenizer.json'}: expected Gemma's byte-fallback BPE tokenizer, "
                                    f"got type {model.get('type')!r} byte_fallback={model.get('byte_fallback')}")

    by_id: dict[int, str] = {}
    for text, i in base_vocab.items():
        by_id[int(i)] = text
    added_types: dict[int, TokenType] = {}
    for tok in added:
        try:
            i, text = int(tok["id"]), tok["content"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"tokenizer.json: unreadable added_tokens entry {tok!r:.200}") from None
        if i in by_id and by_id[i] != text:
            raise ModelFileError(f"tokenizer.json: id {i} is {by_id[i]!r} in the vocabulary but {text!r} in "
                                 "added_tokens")
        _check_added_token_flags(tok)
        added_types[i] = TokenType.CONTROL if tok.get("special", False) else TokenType.USER_DEFINED
        by_id[i] = text
    n = max(by_id) + 1
    holes = [i for i in range(n) if i not in by_id]
    if holes:
        raise ModelFileError(f"tokenizer.json: token ids are not contiguous ({len(holes)} missing, first {holes[:5]})")
    text_to_id = {t: i for i, t in by_id.items()}

    special_ids: dict[str, int] = {}
    for role in _SPECIAL_ROLES:
        content = _token_content(tc.get(f"{role}_token"))
        if content is not None and content in text_to_id:
            special_ids[role] = text_to_id[content]
    control = set(special_ids.values())
    for key in ("extra_special_tokens", "additional_special_tokens"):
        extra = tc.get(key) or []
        for value in (extra.values() if isinstance(extra, dict) else extra):
            content = _token_content(value)
            if content in text_to_id:
                control.add(text_to_id[content])

    tokens, types = [], []
    for i in range(n):
        text = by_id[i]
        tokens.append(text)
        if text in VISIBLE_MARKERS:
            types.append(TokenType.USER_DEFINED)
        elif _BYTE_TOKEN.fullmatch(text):  # stays BYTE even if tokenizer.json lists it as an added token
            types.append(TokenType.BYTE)
        elif i in control:
            types.append(TokenType.CONTROL)
        elif i in added_types:
            types.append(added_types[i])
        else:
            types.append(TokenType.NORMAL)

    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        else:  # [left, right]; a space inside a part would be ambiguous in "left right", llama.cpp shifts it
            merges.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m))

    eos_ids = list(generation_eos or [])
    if "eos" in special_ids and special_ids["eos"] not in eos_ids:
        eos_ids.insert(0, special_ids["eos"])
    bad = [e for e in eos_ids if not 0 <= e < n]
    if bad:
        raise ModelFileError(f"generation_config eos_token_id {bad} outside the tokenizer's {n} tokens")

    add_bos = tc.get("add_bos_token", True)
    return Vocab(tokens=tokens, scores=[SCORE] * n, types=[int(t) for t in types], merges=merges,
                 special_ids=special_ids, eos_ids=eos_ids, add_bos=bool(add_bos) if add_bos is not None else True,
                 chat_template=load_chat_template(directory, tc))


def load_chat_template(directory: Path, tc: dict) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{jinja}: unreadable chat template ({exc})") from None
    tpl = tc.get("chat_template")
    if isinstance(tpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    if tpl is None:
        cj = directory / "chat_template.json"
        if cj.is_file():
            tpl = _read_json(cj, "chat template").get("chat_template")
    return tpl if isinstance(tpl, str) else None


def vocab_kv(v: Vocab) -> list:
    """(key, value, type, sub_type) for the tokenizer keys, in the order llama.cpp writes them for Gemma 4.

    Besides the peer's keys we add `tokenizer.ggml.eos_token_ids` (the full end-of-generation set from
    generation_config, e.g. [1, 106, 50]) right after the scalar eos id; readers that do not know it skip it.
    """
    k = names.key
    kv = [
        (k("TOKENIZER_MODEL"), "gemma4", VT.STRING, None),
        (k("TOKENIZER_TOKENS"), v.tokens, VT.ARRAY, VT.STRING),
        (k("TOKENIZER_SCORES"), v.scores, VT.ARRAY, VT.FLOAT32),
        (k("TOKENIZER_TOKEN_TYPE"), v.types, VT.ARRAY, VT.INT32),
    ]
    if v.merges:
        kv.append((k("TOKENIZER_MERGES"), v.merges, VT.ARRAY, VT.STRING))
    role_keys = {"bos": "TOKENIZER_BOS_ID", "eos": "TOKENIZER_EOS_ID", "unk": "TOKENIZER_UNK_ID",
                 "pad": "TOKENIZER_PAD_ID", "mask": "TOKENIZER_MASK_ID"}
    for role, ident in role_keys.items():
        if role in v.special_ids:
            kv.append((k(ident), v.special_ids[role], VT.UINT32, None))
        if role == "eos" and len(v.eos_ids) > 1:
            kv.append((k("TOKENIZER_EOS_IDS"), list(v.eos_ids), VT.ARRAY, VT.UINT32))
    kv.append((k("TOKENIZER_ADD_BOS"), True, VT.BOOL, None))
    if v.chat_template:
        kv.append((k("TOKENIZER_CHAT_TEMPLATE"), v.chat_template, VT.STRING, None))
    kv.append((k("TOKENIZER_ADD_SPACE_PREFIX"), False, VT.BOOL, None))
    return kv
