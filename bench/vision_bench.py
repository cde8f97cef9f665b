"""Time to encode one image with the vision tower + projection at the RELEASED shapes, and peak RSS (issue 19).

    python bench/vision_bench.py --outdir /tmp/vbench                 # F32 and F16 projectors, 2 threads
    python bench/vision_bench.py --outdir /tmp/vbench --types f16 --threads 4 --repeat 3
    python bench/vision_bench.py --outdir /tmp/vbench --hf float32   # HF's tower too, same threads: the ratio

Tower (model-spec.md section 9): hidden 1152, 27 layers, 16 heads x 72, MLP 4304 (gated), patch 16, pooling 3,
projection to 2816; random weights (matrices std 1/sqrt(fan_in), norms 1, q/k norms 72^-1/4 so that q.k has std
~1, position tables std 0.02, standardize on). The text model beside it is a 1-layer random GGUF at the release
width (bench/make_real_shape_gguf.py --layers 1 --vocab 1024): only its n_embd matters here. The image is
960 x 672 pixels, its own target size (nothing resized): 60 x 42 = 2520 patches -> 280 soft tokens, the most an
image gets. Each projector type runs in its own process, which reports its peak RSS (ru_maxrss: the mapped
weights it touched count) and the time of each image_embed call (the first one also faults the weights in).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

E, F, LAYERS, HEADS, HEAD_DIM, PATCH, POOL, TEXT_E, N_POS = 1152, 4304, 27, 16, 72, 16, 3, 2816, 10240


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_projector(path: Path, outtype: str, seed: int = 0) -> None:
    """A random projector GGUF at the release's shapes, written tensor by tensor (no full copy in memory)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    from diffgemma_cpp.names import key, layer_tensor, tensor

    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 24, dtype=np.float32)  # windows of one random pool: fast to write

    def matrix(rows: int, cols: int, at: int) -> np.ndarray:
        n = rows * cols
        start = (at * 7919) % (pool.size - n) if n < pool.size else 0
        vals = pool[start:start + n] if n <= pool.size else np.resize(pool, n)
        vals = (vals * np.float32(1.0 / np.sqrt(cols))).reshape(rows, cols)
        return vals.astype(np.float16 if outtype == "f16" else np.float32)

    def vector(n: int, value: float) -> np.ndarray:
        return np.full(n, value, dtype=np.float32)

    tensors: list[tuple[str, callable]] = []
    k = 0

    def add(name, make):
        nonlocal k
        k += 1
        tensors.append((name, make))

    add(tensor("V_PATCH_EMBD"), lambda: matrix(E, 3 * PATCH * PATCH, 1).reshape(E, 3, PATCH, PATCH))
    add(tensor("V_POSITION_EMBD"), lambda: (0.02 * rng.standard_normal((2, N_POS, E))).astype(np.float32))
    add(tensor("V_STD_BIAS"), lambda: vector(E, 0.0))
    add(tensor("V_STD_SCALE"), lambda: vector(E, 1.0))
    for il in range(LAYERS):
        b = 100 * (il + 1)
        add(layer_tensor("V_LN1", il), lambda: vector(E, 1.0))
        for j, ident in enumerate(("V_ATTN_Q", "V_ATTN_K", "V_ATTN_V")):
            add(layer_tensor(ident, il), lambda j=j, b=b: matrix(HEADS * HEAD_DIM, E, b + j))
        add(layer_tensor("V_ATTN_OUT", il), lambda b=b: matrix(E, HEADS * HEAD_DIM, b + 3))
        add(layer_tensor("V_ATTN_Q_NORM", il), lambda: vector(HEAD_DIM, HEAD_DIM ** -0.25))
        add(layer_tensor("V_ATTN_K_NORM", il), lambda: vector(HEAD_DIM, HEAD_DIM ** -0.25))
        add(layer_tensor("V_ATTN_POST_NORM", il), lambda: vector(E, 1.0))
        add(layer_tensor("V_LN2", il), lambda: vector(E, 1.0))
        add(layer_tensor("V_FFN_GATE", il), lambda b=b: matrix(F, E, b + 4))
        add(layer_tensor("V_FFN_UP", il), lambda b=b: matrix(F, E, b + 5))
        add(layer_tensor("V_FFN_DOWN", il), lambda b=b: matrix(E, F, b + 6))
        add(layer_tensor("V_FFN_POST_NORM", il), lambda: vector(E, 1.0))
    add(tensor("MM_INPUT_PROJECTION"), lambda: matrix(TEXT_E, E, 9))

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string(key("CLIP_VISION_PROJECTOR_TYPE"), "gemma4v")
    w.add_bool(key("CLIP_HAS_VISION_ENCODER"), True)
    for ident, v in (("CLIP_VISION_PATCH_SIZE", PATCH), ("CLIP_VISION_EMBEDDING_LENGTH", E),
                     ("CLIP_VISION_FEED_FORWARD_LENGTH", F), ("CLIP_VISION_PROJECTION_DIM", TEXT_E),
                     ("CLIP_VISION_BLOCK_COUNT", LAYERS), ("CLIP_VISION_HEAD_COUNT", HEADS),
                     ("CLIP_VISION_SCALE_FACTOR", POOL), ("CLIP_VISION_MAX_SOFT_TOKENS", 280)):
        w.add_uint32(key(ident), v)
    w.add_float32(key("CLIP_VISION_LAYER_NORM_EPS"), 1e-6)
    w.add_float32(key("CLIP_VISION_ROPE_FREQ_BASE"), 100.0)
    for name, make in tensors:  # shapes and types first (the header), then the data one tensor at a time
        a = make()
        w.add_tensor_info(name, a.shape, a.dtype, a.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, make in tensors:
        w.write_tensor_data(make())
    w.close()


def run_one(text: Path, mmproj: Path, threads: int, repeat: int) -> dict:
    from diffgemma_cpp import Model

    rgb = np.random.default_rng(1).integers(0, 256, size=(672, 960, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    m = Model(text, mmproj=mmproj, n_threads=threads, fixed_threads=True)
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = m.image_embed(rgb)
        times.append(time.perf_counter() - t0)
    assert out.shape == (280, TEXT_E) and np.isfinite(out).all()
    m.close()
    return {"load_s": load_s, "embed_s": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "out_std": float(out.std())}


def run_hf(dtype_name: str, threads: int, repeat: int) -> dict:
    """HF transformers' Gemma4VisionModel + DiffusionGemma's embed_vision at the same shapes (random weights: only
    the time matters), on the same patches count, `threads` torch threads: the baseline of the same run."""
    import torch
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaMultimodalEmbedder
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig, Gemma4VisionConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4VisionModel

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    cfg = Gemma4VisionConfig(hidden_size=E, intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                             num_key_value_heads=HEADS, head_dim=HEAD_DIM, patch_size=PATCH, pooling_kernel_size=POOL,
                             position_embedding_size=N_POS, standardize=True,
                             rope_parameters={"rope_type": "axial", "rope_theta": 100.0})
    tower = Gemma4VisionModel(cfg).to(dtype).eval()
    embed = DiffusionGemmaMultimodalEmbedder(cfg, Gemma4TextConfig(hidden_size=TEXT_E)).to(dtype).eval()
    gx, gy = 960 // PATCH, 672 // PATCH
    positions = torch.stack(torch.meshgrid(torch.arange(gx), torch.arange(gy), indexing="xy"), -1).reshape(1, -1, 2)
    pixels = torch.rand(1, gx * gy, 3 * PATCH * PATCH, dtype=dtype)
    times = []
    with torch.no_grad():
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = embed(tower(pixel_values=pixels, pixel_position_ids=positions).last_hidden_state)
            times.append(time.perf_counter() - t0)
    assert out.shape[-2:] == (280, TEXT_E)
    return {"embed_s": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", required=True, type=Path, help="where the GGUFs go (kept for reruns)")
    ap.add_argument("--types", default="f32,f16", help="projector types, comma-separated (f32, f16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="image_embed calls per type")
    ap.add_argument("--hf", default=None, metavar="DTYPES",
                    help="also time HF transformers' tower in these torch dtypes (e.g. float32,bfloat16)")
    ap.add_argument("--run-one", nargs=2, metavar=("TEXT", "MMPROJ"), help=argparse.SUPPRESS)
    ap.add_argument("--run-hf", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        print(json.dumps(run_one(Path(args.run_one[0]), Path(args.run_one[1]), args.threads, args.repeat)))
        return
    if args.run_hf:
        print(json.dumps(run_hf(args.run_hf, args.threads, args.repeat)))
        return
    args.outdir.mkdir(parents=True, exist_ok=True)
    text = args.outdir / "text-1layer.gguf"
    if not text.exists():
        subprocess.run([sys.executable, str(HERE / "make_real_shape_gguf.py"), "-o", str(text), "--layers", "1",
                        "--vocab", "1024", "--outtype", "f16"], check=True)
    print(f"CPU: {cpu_name()}, {args.threads} threads; image 960x672 -> 2520 patches -> 280 tokens")
    best: dict = {}
    for outtype in args.types.split(","):
        mmproj = args.outdir / f"mmproj-{outtype}.gguf"
        if not mmproj.exists():
            t0 = time.perf_counter()
            write_projector(mmproj, outtype)
            print(f"wrote {mmproj} ({mmproj.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        res = subprocess.run([sys.executable, __file__, "--outdir", str(args.outdir), "--threads", str(args.threads),
                              "--repeat", str(args.repeat), "--run-one", str(text), str(mmproj)],
                             check=True, capture_output=True, text=True, env=dict(os.environ))
        r = json.loads(res.stdout.strip().splitlines()[-1])
        embeds = ", ".join(f"{t:.1f}" for t in r["embed_s"])
        print(f"{outtype}: load {r['load_s']:.1f} s, image_embed {embeds} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
        best[outtype] = min(r["embed_s"])
    for dtype_name in (args.hf.split(",") if args.hf else []):
        res = subprocess.run([sys.executable, __file__, "--outdir", str(args.outdir), "--threads", str(args.threads),
                              "--repeat", str(args.repeat), "--run-hf", dtype_name],
                             check=True, capture_output=True, text=True, env=dict(os.environ))
        r = json.loads(res.stdout.strip().splitlines()[-1])
        hf_best = min(r["embed_s"])
        ratios = ", ".join(f"ours {t} {hf_best / s:.2f}x" for t, s in best.items())
        print(f"HF {dtype_name}: {', '.join(f'{t:.1f}' for t in r['embed_s'])} s, peak RSS {r['peak_rss_mib']:.0f} MiB"
              f" (speed vs HF {dtype_name}: {ratios})")


if __name__ == "__main__":
    main()
