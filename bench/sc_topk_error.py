"""Error of the top-k self-conditioning approximation against the exact product, on one GGUF.

For each k (and with / without renormalising the kept probabilities):
- logits: one decoder pass whose self-conditioning input is the model's own processed logits of a previous
  pass (the plain pass's logits / t_max, as at the second denoising step); max |logit delta| against the
  exact product, and the share of canvas positions whose argmax is unchanged. The "SC effect" line is the
  same delta between the exact SC pass and a pass without SC: what the approximation perturbs.
- network sensitivity: the same delta for the exact product on an SC input scaled by 1 + 1e-5 (a chaotic
  random model moves as much under this as under any approximation; then only the next number is telling);
- soft embedding (--embedding-error): relative L2 error of the RMS-normalised probs @ E, the product itself;
- tokens: one canvas per prompt (--prompts) generated with a fixed seed and step count (the confidence stop
  off); share of the committed tokens equal to the exact run's.

    python bench/sc_topk_error.py -m /work/bench-cache/mid/bench-mid-f32.gguf -k 16 64 256 --steps 4
    python bench/sc_topk_error.py -m python/diffgemma_cpp/models/sudoku.gguf -k 1 2 4 8 --sudoku --steps 8 --prompts 50

Random-weight models have nearly flat softmaxes (the worst case for a top-k cut); a trained model's are
peaked. The output is one JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from diffgemma_cpp import Model


def _prompts(n_vocab, n, prompt_tokens, seed, sudoku_prompt):
    if sudoku_prompt:
        from diffgemma_cpp import sudoku

        it = sudoku.puzzles(30, seed)
        return [sudoku.prompt_ids(next(it)[0]) for _ in range(n)]
    rng = np.random.default_rng(seed)
    return [rng.integers(5, n_vocab, size=prompt_tokens).tolist() for _ in range(n)]


def _inputs(path, n_threads, prompt, seed):
    rng = np.random.default_rng(seed)
    with Model(path, n_threads=n_threads) as m:
        V, C = m.n_vocab, m.canvas_length
        canvas = rng.integers(0, V, size=C).tolist()
        t_max = float(m.metadata.get("diffusion.eb_t_max", 0.8))
        m.encode(prompt)
        plain = m.decoder_logits(canvas)
    return canvas, plain, plain / t_max


def _embedding(path):
    """tok_embd as float64 [n_vocab, n_embd] (gguf-py dequantizes quantized types)."""
    import gguf

    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    e = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(e, dtype=np.float64).reshape(int(t.shape[1]), int(t.shape[0]))


def _soft_embedding_error(E, sc, k, rows=64):
    """Mean relative L2 error of the RMS-normalised soft embedding (what the SC MLP reads) over the first
    `rows` canvas rows, top-k (not renormalised) against the full product, in float64."""
    x = sc[:rows].astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argpartition(-p, min(k, p.shape[1] - 1), axis=1)[:, :k]
    pk = np.zeros_like(p)
    np.put_along_axis(pk, idx, np.take_along_axis(p, idx, 1), 1)

    def unit(v):
        return v / np.sqrt((v ** 2).mean(1, keepdims=True))

    exact, approx = unit(p @ E), unit(pk @ E)
    return float(np.mean(np.linalg.norm(approx - exact, axis=1) / np.linalg.norm(exact, axis=1)))


def _pass(path, n_threads, k, renorm, prompt, canvas, sc):
    with Model(path, n_threads=n_threads, sc_top_k=k, sc_top_k_renormalize=renorm) as m:
        m.encode(prompt)
        t0 = time.perf_counter()
        out = m.decoder_logits(canvas, sc)
        return out, time.perf_counter() - t0


def _generate(path, n_threads, k, renorm, prompts, steps, seed):
    """The committed tokens of one canvas per prompt, concatenated."""
    out = []
    with Model(path, n_threads=n_threads, sc_top_k=k, sc_top_k_renormalize=renorm) as m:
        for prompt in prompts:
            m.reset()
            ids = m.generate_ids(prompt, max_new_tokens=m.canvas_length, steps=steps, seed=seed,
                                 confidence_threshold=0.0)
            out.extend(ids[len(prompt):])
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the generated canvas (0: skip)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=1, help="prompts (puzzles) the generated-token agreement covers")
    ap.add_argument("--no-renorm-variant", action="store_true", help="measure only renormalize=0")
    ap.add_argument("--sharpen", type=float, default=1.0,
                    help="multiply the SC input by this (> 1 peaks a random model's flat softmax, as a trained "
                         "model's is; the logit comparison only)")
    ap.add_argument("--embedding-error", action="store_true",
                    help="also the relative error of the normalised soft embedding itself (numpy, float64)")
    ap.add_argument("--sudoku", action="store_true", help="use a Sudoku puzzle prompt (the bundled sudoku model)")
    args = ap.parse_args(argv)

    with Model(args.model, n_threads=1) as m:
        n_vocab = m.n_vocab
    prompts = _prompts(n_vocab, max(1, args.prompts), args.prompt_tokens, args.seed, args.sudoku)
    prompt = prompts[0]
    canvas, plain, sc = _inputs(args.model, args.threads, prompt, args.seed)
    sc = sc * np.float32(args.sharpen)
    exact, t_exact = _pass(args.model, args.threads, 0, False, prompt, canvas, sc)
    # Sensitivity of the network itself: the exact product on an SC input scaled by 1 + 1e-5. A random model
    # whose logits move as much under this as under top-k cannot tell the approximation's error apart.
    nudged, _ = _pass(args.model, args.threads, 0, False, prompt, canvas, sc * np.float32(1 + 1e-5))
    E = _embedding(args.model) if args.embedding_error else None
    probs = np.exp(sc - sc.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top1 = float(np.mean(probs.max(1)))
    print(json.dumps({"model": args.model, "sharpen": args.sharpen, "n_vocab": int(sc.shape[1]), "canvas": int(sc.shape[0]),
                      "sc_effect_max_abs": float(np.max(np.abs(exact - plain))), "mean_top1_prob": top1,
                      "exact_pass_s": t_exact,
                      "nudged_1e-5_max_abs_logit_delta": float(np.max(np.abs(nudged - exact))),
                      "nudged_1e-5_argmax_agreement": float(np.mean(nudged.argmax(1) == exact.argmax(1)))}),
          flush=True)
    gen_exact = _generate(args.model, args.threads, 0, False, prompts, args.steps, args.seed) if args.steps else None
    for k in args.k:
        for renorm in ((False,) if args.no_renorm_variant else (False, True)):
            out, t = _pass(args.model, args.threads, k, renorm, prompt, canvas, sc)
            kept = np.sort(probs, axis=1)[:, ::-1][:, :k].sum(1)
            row = {"k": k, "renormalize": renorm, "max_abs_logit_delta": float(np.max(np.abs(out - exact))),
                   "argmax_agreement": float(np.mean(out.argmax(1) == exact.argmax(1))),
                   "mean_kept_mass": float(kept.mean()), "pass_s": t}
            if E is not None and not renorm:
                row["soft_embedding_rel_error"] = _soft_embedding_error(E, sc, k)
            if gen_exact is not None:
                gen = _generate(args.model, args.threads, k, renorm, prompts, args.steps, args.seed)
                row["generated_token_agreement"] = float(np.mean(gen == gen_exact))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
