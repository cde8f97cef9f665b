"""Peak memory and throughput of the converter on a synthetic checkpoint at the release's real widths.

    python bench/convert_memory.py [--layers 3] [--outtype q4_k_m] [--threads N] [--dir /tmp/dg-bench] [--keep]
    python bench/convert_memory.py --format nvfp4 --split-experts --layers 6 --outtype auto

--format nvfp4 writes the checkpoint as NVIDIA Model Optimizer's NVFP4 export does (hf_quant_config.json,
packed E2M1 `weight` U8, E4M3 `weight_scale` per 16 values, FP32 `weight_scale_2`, `input_scale`; every linear
of the decoder quantized, embedding / router / norms bf16; experts fused or, with --split-experts, one Linear
per expert as vLLM-style checkpoints store them); random codes and valid positive block scales. The result also
gives the output size extrapolated to the release's 30 layers (25 sliding + 5 full, from the per-layer bytes of
each kind in the output).

Writes a DiffusionGemma-shaped checkpoint (hidden 2816, 128 experts x 704, vocab 262144, a full-size
tokenizer.json; only `--layers` layers, 3 by default = 6.3 GB of bf16), converts it in a child process with
`python -m diffgemma_cpp.convert`, and reports the child's peak RSS, the wall time and the throughput in MB of
checkpoint read per second. The weights are random bf16 (a 64 MB random block, shifted per chunk), so the
quantizers do real work; the checkpoint is written in streaming fashion so this script stays small too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

H, FF, N_EXP, FF_EXP, TOP_K = 2816, 2112, 128, 704, 8
N_HEAD, KV_SWA, KV_FULL, D_SWA, D_FULL, VOCAB = 16, 8, 2, 256, 512, 262144


def layer_types(n):
    # the last layer must be full attention; keep one full layer per six like the release
    return ["full_attention" if (i + 1) % 6 == 0 or i == n - 1 else "sliding_attention" for i in range(n)]


def tensor_shapes(n_layers):
    shapes = {"model.decoder.embed_tokens.weight": (VOCAB, H), "model.decoder.norm.weight": (H,),
              "model.decoder.self_conditioning.pre_norm.weight": (H,),
              "model.decoder.self_conditioning.gate_proj.weight": (FF, H),
              "model.decoder.self_conditioning.up_proj.weight": (FF, H),
              "model.decoder.self_conditioning.down_proj.weight": (H, FF)}
    for il, lt in enumerate(layer_types(n_layers)):
        d, kv = (D_SWA, KV_SWA) if lt == "sliding_attention" else (D_FULL, KV_FULL)
        p = f"model.decoder.layers.{il}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "self_attn.q_proj.weight": (N_HEAD * d, H),
            p + "self_attn.k_proj.weight": (kv * d, H), p + "self_attn.o_proj.weight": (H, N_HEAD * d),
            p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,),
            p + "post_attention_layernorm.weight": (H,), p + "pre_feedforward_layernorm.weight": (H,),
            p + "mlp.gate_proj.weight": (FF, H), p + "mlp.up_proj.weight": (FF, H), p + "mlp.down_proj.weight": (H, FF),
            p + "post_feedforward_layernorm_1.weight": (H,), p + "router.proj.weight": (N_EXP, H),
            p + "router.scale": (H,), p + "router.per_expert_scale": (N_EXP,),
            p + "pre_feedforward_layernorm_2.weight": (H,), p + "experts.gate_up_proj": (N_EXP, 2 * FF_EXP, H),
            p + "experts.down_proj": (N_EXP, H, FF_EXP), p + "post_feedforward_layernorm_2.weight": (H,),
            p + "post_feedforward_layernorm.weight": (H,), p + "layer_scalar": (1,),
            f"model.encoder.language_model.layers.{il}.layer_scalar": (1,)})
        if lt == "sliding_attention":
            shapes[p + "self_attn.v_proj.weight"] = (kv * d, H)
    return shapes


QUANTIZED = (".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight", "mlp.gate_proj.weight",
             "mlp.up_proj.weight", "mlp.down_proj.weight", "experts.gate_up_proj", "experts.down_proj",
             "self_conditioning.gate_proj.weight", "self_conditioning.up_proj.weight",
             "self_conditioning.down_proj.weight")
_BYTES = {"BF16": 2, "U8": 1, "F8_E4M3": 1, "F32": 4}


def nvfp4_specs(shapes: dict, split_experts: bool) -> dict:
    """name -> (dtype, shape, fill) of a Model Optimizer NVFP4 export of the bf16 layout `shapes`."""
    out = {}

    def quantized(name, shape):
        stem = name[:-len("weight")] if name.endswith(".weight") else name + "_"
        out[name] = ("U8", shape[:-1] + (shape[-1] // 2,), "codes")
        out[stem + "weight_scale"] = ("F8_E4M3", shape[:-1] + (shape[-1] // 16,), "e4m3")
        out[stem + "weight_scale_2"] = ("F32", (), "scale2")
        out[stem + "input_scale"] = ("F32", (), "scale2")

    for name, shape in shapes.items():
        if not (name.startswith("model.decoder.") and name.endswith(QUANTIZED)):
            out[name] = ("BF16", shape, "bf16")
        elif ".experts." in name and split_experts:
            stem = name.rsplit(".", 1)[0]
            projs = ("gate_proj", "up_proj") if name.endswith("gate_up_proj") else ("down_proj",)
            rows = shape[1] // len(projs)
            for e in range(shape[0]):
                for proj in projs:
                    quantized(f"{stem}.{e}.{proj}.weight", (rows, shape[2]))
        else:
            quantized(name, shape)
    return out


def write_checkpoint(directory: Path, n_layers: int, fmt: str = "bf16", split_experts: bool = False) -> int:
    """Stream a safetensors file + configs; returns the safetensors size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(n_layers)
    specs = ({n: ("BF16", s, "bf16") for n, s in shapes.items()} if fmt == "bf16"
             else nvfp4_specs(shapes, split_experts))
    header, offset = {}, 0
    for name in sorted(specs):
        dtype, shape, _ = specs[name]
        n = int(np.prod(shape)) * _BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(32 * 1024 * 1024, dtype=np.float32) * 0.02).view(np.uint32)
    pools = {"bf16": ((block + 0x8000) >> 16).astype(np.uint16),  # bf16 bits
             "codes": rng.integers(0, 256, 64 * 1024 * 1024, dtype=np.uint8),
             "e4m3": rng.integers(0x28, 0x50, 8 * 1024 * 1024, dtype=np.uint8)}  # 2^-2 .. 2^2.9: positive, no NaN
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(specs):
            dtype, shape, fill = specs[name]
            left = int(np.prod(shape))
            if fill == "scale2":
                f.write(np.float32(1e-3).tobytes())
                continue
            if fill == "bf16" and len(shape) == 1:  # norms / scales around 1
                f.write((np.full(left, 0x3F80, np.uint16) + rng.integers(0, 64, left, dtype=np.uint16)).tobytes())
                continue
            pool = pools[fill]
            while left:
                n = min(left, pool.size)
                shift = int(rng.integers(0, pool.size))
                f.write(np.roll(pool, shift)[:n].tobytes())
                left -= n
    text = {"vocab_size": VOCAB, "hidden_size": H, "intermediate_size": FF, "num_hidden_layers": n_layers,
            "layer_types": layer_types(n_layers), "num_attention_heads": N_HEAD, "num_key_value_heads": KV_SWA,
            "num_global_key_value_heads": KV_FULL, "head_dim": D_SWA, "global_head_dim": D_FULL,
            "rms_norm_eps": 1e-6, "sliding_window": 1024, "max_position_embeddings": 262144,
            "final_logit_softcapping": 30.0, "num_experts": N_EXP, "top_k_experts": TOP_K,
            "moe_intermediate_size": FF_EXP, "dtype": "bfloat16",
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                   "rope_theta": 1000000.0}}}
    config = {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
              "canvas_length": 256, "text_config": text}
    if fmt == "nvfp4":
        quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                 "exclude_modules": ["lm_head", "*router*", "*embed*"]}
        config["quantization_config"] = dict(quant, quant_method="modelopt")
        (directory / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"},
                                                                    "quantization": quant}))
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106, 50]}))
    write_tokenizer(directory)
    return (directory / "model.safetensors").stat().st_size


def write_tokenizer(directory: Path) -> None:
    """A full-size (262144 token) byte-fallback BPE tokenizer.json in Gemma's layout; content is synthetic."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<unused{i}>" for i in range(102)]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    while len(vocab) < VOCAB - 3:
        vocab[f"\u2581tok{len(vocab)}"] = len(vocab)
    for piece in ("\u2581", "t", "\u2581t"):  # one real merge: the engine's tokenizer wants a non-empty list
        vocab[piece] = len(vocab)
    tj = {"version": "1.0", "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(specials)],
          "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
          "decoder": {"type": "Sequence", "decoders": []},
          "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>", "vocab": vocab, "merges": ["\u2581 t"]}}
    (directory / "tokenizer.json").write_text(json.dumps(tj))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                                 "unk_token": "<unk>", "pad_token": "<pad>",
                                                                 "mask_token": "<mask>", "add_bos_token": True}))


def extrapolate_30_layers(path: Path) -> int | None:
    """The output's size with the release's 30 layers (25 sliding, 5 full): its non-layer bytes plus 25 x the mean
    sliding layer and 5 x the mean full layer (needs one of each: the last layer is always full)."""
    import gguf

    r = gguf.GGUFReader(path)
    per_layer: dict = {}
    rest = r.data_offset  # header, metadata and tensor infos
    for t in r.tensors:
        if t.name.startswith("blk."):
            il = int(t.name.split(".")[1])
            per_layer[il] = per_layer.get(il, 0) + int(t.n_bytes)
        else:
            rest += int(t.n_bytes)
    kinds = layer_types(len(per_layer))
    mean = {k: np.mean([b for il, b in per_layer.items() if kinds[il] == k]) for k in set(kinds)}
    if len(mean) < 2:
        return None  # one layer: no sliding layer to measure
    return int(rest + 25 * mean["sliding_attention"] + 5 * mean["full_attention"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--outtype", default="q4_k_m")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dir", default="/tmp/dg-convert-bench")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the output")
    ap.add_argument("--format", choices=("bf16", "nvfp4"), default="bf16", help="checkpoint format to write")
    ap.add_argument("--split-experts", action="store_true", help="nvfp4: experts one Linear per expert")
    args = ap.parse_args()
    root = Path(args.dir)
    ckpt, out = root / "hf", root / f"out-{args.outtype}.gguf"
    t0 = time.time()
    if not (ckpt / "model.safetensors").is_file():
        write_checkpoint(ckpt, args.layers, args.format, args.split_experts)
    size = (ckpt / "model.safetensors").stat().st_size
    print(f"checkpoint: {size / 1e9:.2f} GB {args.format}, {args.layers} layers (written in {time.time() - t0:.0f} s)",
          flush=True)
    cmd = [sys.executable, "-m", "diffgemma_cpp.convert", str(ckpt), "--outfile", str(out), "--outtype",
           args.outtype, "--no-progress"] + (["-t", str(args.threads)] if args.threads else [])
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    largest = max(int(np.prod(s)) for s in tensor_shapes(args.layers).values()) * 2
    result = {"checkpoint_GB": round(size / 1e9, 3), "outtype": args.outtype,
              "output_GB": round(out.stat().st_size / 1e9, 3),
              "wall_s": round(wall, 1), "MB_per_s": round(size / 1e6 / wall, 1), "peak_rss_MB": round(peak_kb / 1024),
              "largest_tensor_MB": round(largest / 1e6), "threads": args.threads or min(32, os.cpu_count() or 1),
              "output_GB_30_layers": None if (b30 := extrapolate_30_layers(out)) is None else round(b30 / 1e9, 3)}
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
