"""Regenerate the GGUF loader fuzzer's seed corpus (tests/fuzz/corpus) and dictionary (tests/fuzz/gguf.dict).

The seeds are valid DiffusionGemma GGUFs as small as our converter makes them (a 2-layer model of width 8
with the real tokenizer layout), so most of each fuzz input is structure rather than weight bytes:

    python tests/fuzz/make_seeds.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import tiny_hf  # noqa: E402
from gguf_mutate import Gguf  # noqa: E402

S, F = tiny_hf.S, tiny_hf.F
FUZZ_CONFIG = dict(vocab_size=tiny_hf.MIN_VOCAB + 16, hidden_size=8, intermediate_size=8, layer_types=[S, F],
                   num_attention_heads=2, num_key_value_heads=1, head_dim=4, global_head_dim=8,
                   num_global_key_value_heads=1, sliding_window=4, num_experts=2, top_k_experts=1,
                   moe_intermediate_size=4, canvas_length=4, max_position_embeddings=64)


def main() -> None:
    import torch
    from diffgemma_cpp import names
    from diffgemma_cpp.convert.pipeline import convert_checkpoint

    torch.set_num_threads(1)
    tiny_hf.CONFIGS["fuzz"] = FUZZ_CONFIG
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_hf.save_checkpoint("fuzz", Path(tmp) / "fuzz")
        for outtype in ("f32", "f16"):
            out = corpus / f"tiny-{outtype}.gguf"
            convert_checkpoint(ckpt, out, outtype, progress=False, quiet=True)
            print(out, out.stat().st_size)
    # The same model without its tokenizer: the loader then reaches the tensors sooner.
    g = Gguf.parse(corpus / "tiny-f32.gguf")
    for kv in [kv for kv in g.kvs if kv.key.startswith("tokenizer.")]:
        g = g.drop_kv(kv.key)
    (corpus / "tiny-f32-no-tokenizer.gguf").write_bytes(g.to_bytes())
    # Every key and tensor name the loader looks for, so mutations can form them.
    words = {kv.key for kv in Gguf.parse(corpus / "tiny-f32.gguf").kvs} | {t.name for t in g.tensors}
    words |= {names.key(k) for k in names.KEY} | {"GGUF", "general.alignment"}
    (HERE / "gguf.dict").write_text("".join(f'"{w}"\n' for w in sorted(words)))


if __name__ == "__main__":
    main()
