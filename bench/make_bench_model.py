"""Random DiffusionGemma checkpoints at benchmark scale, converted to GGUF by our own converter.

    python bench/make_bench_model.py --scale mid                # -> $DG_BENCH_CACHE/mid/{hf,*.gguf}
    python bench/make_bench_model.py --scale tiny --types f32   # a quick smoke-run model

Random weights never converge, so benchmarks fix the step count (`diffgemma-cpp bench --steps N`); what
matters here is that every tensor has the released model's layout at a chosen width, and that activations
stay in a sane range (weight std 0.02 with RMSNorm everywhere keeps logits O(1), like a trained model's),
so no kernel runs on denormals, infinities or all-equal rows.

The HF checkpoint (save_pretrained, float32) is the one the HF baseline in bench/run_bench.py loads, so both
sides compute with the same weights. Files go to a cache directory outside git ($DG_BENCH_CACHE, default
~/.cache/diffgemma_cpp/bench) and are reused when present.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tiny_hf: the shared HF checkpoint builder

S, F = "sliding_attention", "full_attention"

# Scales keep the release's ratios: 5:1 sliding/full layers, dense FFN width 3/4 of hidden, expert width 1/4,
# full layers with twice the head_dim and fewer KV heads (K = V), one canvas of `canvas_length` rows.
SCALES: dict[str, dict] = {
    "mid": dict(
        vocab_size=32768, hidden_size=1024, intermediate_size=768, layer_types=([S] * 5 + [F]) * 2,
        num_attention_heads=8, num_key_value_heads=4, head_dim=128,
        global_head_dim=256, num_global_key_value_heads=1,
        sliding_window=1024, num_experts=32, top_k_experts=4, moe_intermediate_size=256,
        canvas_length=256, max_position_embeddings=8192,
    ),
    "tiny": dict(
        vocab_size=4096, hidden_size=256, intermediate_size=256, layer_types=[S] * 5 + [F],
        num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        global_head_dim=256, num_global_key_value_heads=1,
        sliding_window=1024, num_experts=8, top_k_experts=2, moe_intermediate_size=256,
        canvas_length=32, max_position_embeddings=4096,
    ),
}
TYPES = ("f32", "q8_0", "q4_k_m")
WEIGHT_STD = 0.02
TOKENIZER_BASE_VOCAB = 512  # learned BPE part; the rest of the vocabulary is filler tokens


def cache_root() -> Path:
    return Path(os.environ.get("DG_BENCH_CACHE", Path.home() / ".cache" / "diffgemma_cpp" / "bench"))


def _pad_tokenizer(hf_dir: Path, vocab_size: int) -> None:
    """Grow tokenizer.json's BPE vocabulary to vocab_size with filler tokens no merge produces (the model's
    vocabulary is far larger than the built-in corpus can teach a BPE)."""
    path = hf_dir / "tokenizer.json"
    tj = json.loads(path.read_text())
    vocab = tj["model"]["vocab"]
    taken = set(vocab.values()) | {int(t["id"]) for t in tj.get("added_tokens", [])}
    next_id = max(taken) + 1
    while next_id < vocab_size:
        vocab[f"\u2581bench{next_id}"] = next_id
        next_id += 1
    path.write_text(json.dumps(tj, ensure_ascii=False))


def make_hf(scale: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the random HF checkpoint for `scale` (skipped when config.json is already there)."""
    import tiny_hf

    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    tiny_hf.CONFIGS[f"bench-{scale}"] = dict(SCALES[scale])
    # tiny_hf trains the tokenizer at the model's vocab size; train a small one and pad it instead.
    name = f"bench-{scale}"
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model = tiny_hf.build_model(name, seed=seed, weight_scale=WEIGHT_STD)
    model.save_pretrained(tmp)
    del model
    tiny_hf._rewrite_config_released_layout(tmp / "config.json", name)
    (tmp / "generation_config.json").write_text(json.dumps(dict(tiny_hf.DEFAULT_GENERATION_CONFIG,
                                                                transformers_version="5.23.0"), indent=2))
    tiny_hf.save_tokenizer(tiny_hf.train_tiny_gemma_tokenizer(TOKENIZER_BASE_VOCAB, seed=seed), tmp)
    _pad_tokenizer(tmp, SCALES[scale]["vocab_size"])
    tmp.rename(out_dir)
    return out_dir


def gguf_path(scale: str, outtype: str) -> Path:
    return cache_root() / scale / f"bench-{scale}-{outtype}.gguf"


def make(scale: str, types=TYPES, quiet: bool = False) -> dict:
    """Ensure the HF checkpoint and the GGUFs of `types` exist; returns {"hf": dir, type: gguf path}."""
    from diffgemma_cpp.convert.pipeline import convert_checkpoint

    if scale not in SCALES:
        raise SystemExit(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise SystemExit(f"unknown type(s) {bad}; choose from {TYPES}")
    hf_dir = cache_root() / scale / "hf"
    t0 = time.perf_counter()
    make_hf(scale, hf_dir)
    out = {"hf": hf_dir}
    for t in types:
        path = gguf_path(scale, t)
        if not path.is_file():
            convert_checkpoint(hf_dir, path, t, progress=False, quiet=True)
        out[t] = path
    if not quiet:
        print(f"bench models ({scale}) ready in {time.perf_counter() - t0:.0f}s:")
        for k, v in out.items():
            size = sum(f.stat().st_size for f in Path(v).glob("*")) if Path(v).is_dir() else Path(v).stat().st_size
            print(f"  {k:7s} {v}  ({size / 2**20:.0f} MiB)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="mid", choices=sorted(SCALES))
    ap.add_argument("--types", nargs="+", default=list(TYPES), help=f"GGUF types to convert to ({', '.join(TYPES)})")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    make(args.scale, args.types)
    return 0


if __name__ == "__main__":
    sys.exit(main())
