"""Test material for the tokenizer: a larger Gemma-layout vocabulary and random / adversarial strings.

`tiny_hf.train_tiny_gemma_tokenizer` learns SentencePiece-style merges (never across a "▁") with a pure-Python
loop, which is right for ~1k vocabularies. For a vocabulary of several thousand tokens this module trains with
`tokenizers`' own BpeTrainer on whole lines instead, so merges also cross spaces and newlines ("e▁t", ".\\n"):
that is what a Gemma-4 tokenizer.json allows (the text between added tokens is one BPE word), and a tokenizer
that wrongly split at spaces or newlines would fail on it. The id layout is tiny_hf's (specials, "\\n",
<0x00>..<0xFF>, then learned tokens).
"""
from __future__ import annotations

import json
import random

from tiny_hf import FIRST_BYTE_ID, GEMMA4_VISIBLE_MARKERS, SPACE, special_tokens

# Characters of many scripts; the generators draw from them so texts mix scripts inside one "word".
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "accented": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžŁłńęąőűĞğİış",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΘΛΞΠΣΦΨΩ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЖЗИЛП",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年東京日本語漢字",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのアイウエオカキクケコン",
    "hangul": "가나다라마바사아자차카타파하안녕하세요한국어",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह",
    "digits": "0123456789",
    "punct": ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`…—–“”‘’«»",
}
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u093f", "\u0940", "\u094d", "\u20e3", "\u20e2"]
EMOJI = ["😀", "👍", "🚀", "🤔", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👋🏽", "🇯🇵", "🫩", "🧠", "✨", "🗽", "1️⃣"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\u200b", "\u2028",
              "\f", "\v", "    ", "\n\n\n\n", SPACE, SPACE + " "]
ALL_CHARS = "".join(SCRIPTS.values())


def _word(rng: random.Random) -> str:
    script = rng.choice(list(SCRIPTS))
    w = "".join(rng.choice(SCRIPTS[script]) for _ in range(rng.randint(1, 9)))
    if rng.random() < 0.1:
        w += rng.choice(COMBINING)
    return w


def corpus(seed: int, n_lines: int = 6000) -> list[str]:
    """Training lines: Zipf-ish repeated words (so merges grow long), mixed scripts, code and multi-line bits."""
    rng = random.Random(seed)
    lexicon = [_word(rng) for _ in range(3000)]
    weights = [1.0 / (i + 1) for i in range(len(lexicon))]
    lines = []
    for _ in range(n_lines):
        words = rng.choices(lexicon, weights, k=rng.randint(3, 16))
        line = " ".join(words)
        if rng.random() < 0.2:
            line += rng.choice([".\n", ":\n\n", ";\n    ", "\n\t", " {\n  "]) + " ".join(rng.choices(lexicon, weights, k=3))
        if rng.random() < 0.1:
            line += " " + rng.choice(EMOJI)
        lines.append(line)
    return lines


def train_bpe_gemma_tokenizer(vocab_size: int, seed: int = 0):
    """A Gemma-4-layout byte-fallback BPE with `vocab_size` tokens, merges learned by `tokenizers` on whole lines."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    prefix = special_tokens() + ["\n"] + [f"<0x{b:02X}>" for b in range(256)]
    assert len(prefix) == FIRST_BYTE_ID + 256
    trainer_tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=prefix, limit_alphabet=400,
                                  initial_alphabet=[SPACE], show_progress=False, max_token_length=24)
    trainer_tok.train_from_iterator(corpus(seed), trainer=trainer)
    spec = json.loads(trainer_tok.to_str())
    vocab = spec["model"]["vocab"]
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    for i, t in enumerate(prefix):
        assert vocab[t] == i, (t, vocab[t], i)

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True,
                        dropout=None))
    # The rest mirrors tiny_hf.train_tiny_gemma_tokenizer (Gemma 4's tokenizer.json pipeline).
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B:1",
                                                       special_tokens=[("<bos>", 2)])
    return tok


# ---- strings to tokenize ------------------------------------------------------------------------------------

def _piece(rng: random.Random, specials: list[str], vocab_tokens: list[str]) -> str:
    r = rng.random()
    if r < 0.25:
        return _word(rng)
    if r < 0.35:
        return rng.choice(WHITESPACE)
    if r < 0.45:
        return rng.choice(specials)
    if r < 0.50:  # a special token cut short, doubled or glued: must not match (or match only the whole part)
        s = rng.choice(specials)
        return rng.choice([s[:-1], s[1:], "<" + s, s + ">", s + s, s[: len(s) // 2] + s])
    if r < 0.60:
        return rng.choice(EMOJI)
    if r < 0.67:
        return rng.choice(ALL_CHARS) + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
    if r < 0.75:  # characters no vocabulary here has: byte fallback
        return "".join(chr(rng.choice([rng.randint(0x0100, 0xD7FF), rng.randint(0xE000, 0xFFFD),
                                        rng.randint(0x10000, 0x10FFFF)])) for _ in range(rng.randint(1, 3)))
    if r < 0.88:  # pieces of the vocabulary itself, glued (exercises long merge chains)
        return "".join(rng.choice(vocab_tokens) for _ in range(rng.randint(1, 4))).replace(SPACE, " ")
    return rng.choice(["<0x41>", "<0xZZ>", "▁", "▁▁", "\\n", "<", "|>", "<|", "&amp;", "0x0A", "\x00", "\x7f",
                       "\u200d", "\ufeff", "\ufffd"])


def random_strings(seed: int, n: int, vocab_tokens: list[str]) -> list[str]:
    """`n` strings: empty, single characters, random mixes of all the pieces above, and a few very long ones."""
    rng = random.Random(seed)
    specials = special_tokens() + list(GEMMA4_VISIBLE_MARKERS)
    out = ["", " ", "\n", SPACE, "<bos>", "<|turn>", "a", "é", "😀", " " * 50, "\n" * 30, "<|turn><turn|>"]
    while len(out) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13, 21, 40])
        out.append("".join(_piece(rng, specials, vocab_tokens) for _ in range(k)))
    # Very long strings: BPE runs over the whole text at once, so these test the merge queue at scale.
    for i in range(4):
        out[-1 - i] = "".join(_piece(rng, specials, vocab_tokens) for _ in range(3000 + 2000 * i))
    return out


def random_byte_strings(seed: int, n: int, texts: list[str]) -> list[bytes]:
    """Byte strings with invalid UTF-8 spliced in: stray continuations, truncated sequences, overlongs,
    surrogates, bytes F5..FF, and valid characters cut in half."""
    rng = random.Random(seed)
    bad = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1", b"\xe2\x82", b"\xe2", b"\xf0\x9f\x98", b"\xed\xa0\x80",
           b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xfe\xff", b"\xe0\x80\x80", b"\xf0\x80\x80\x80"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(bad))
            elif r < 0.6:
                t = rng.choice(texts).encode()
                parts.append(t[: rng.randint(0, len(t))])
            else:
                parts.append(rng.choice(texts).encode())
        out.append(b"".join(parts))
    return out
