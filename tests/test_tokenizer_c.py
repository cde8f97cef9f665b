"""The tokenizer from plain C (no Python in the loop) gives HF's ids and round-trips byte-exactly."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import diffgemma_cpp
from tiny_hf import train_tiny_gemma_tokenizer
from tokenizer_gguf import write_vocab_gguf

REPO = Path(__file__).resolve().parents[1]

TEXT = ("Hello, world!  Tabs\tand\nnewlines\n\n<|turn>user\nCafé 東京 😀 👨‍👩‍👧‍👦 <|channel>thought<channel|>"
        " ẞ̃ \u3000 \U0010FFFD <turn|>")


def _compiler():
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            return cc
    pytest.skip("no C compiler on PATH")


def test_c_program_tokenizes_like_hf(tmp_path):
    hf = train_tiny_gemma_tokenizer(700, seed=4)
    vocab = write_vocab_gguf(hf, tmp_path / "vocab.gguf")
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(TEXT.encode() + b"\xff\xe2\x82")  # ends with invalid + truncated UTF-8
    exe = tmp_path / "test_tokenizer"
    libdir = diffgemma_cpp.get_library_dir()
    subprocess.run([_compiler(), "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    "-I", diffgemma_cpp.get_include(), str(REPO / "tests" / "c" / "test_tokenizer.c"),
                    "-L", libdir, "-ldiffgemma", f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(vocab), str(text_file)], check=True, capture_output=True, text=True).stdout
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("eog"))
    ids = [int(x) for x in lines["ids"].split()]
    byte = lambda b: hf.token_to_id(f"<0x{b:02X}>")  # noqa: E731
    assert ids == hf.encode(TEXT, add_special_tokens=False).ids + [byte(0xFF), byte(0xE2), byte(0x82)]
    assert lines["roundtrip"] == "ok"
    assert lines["stream"] == "ok"
    assert "eog=1 bos=2 n_tokens=700" in out
