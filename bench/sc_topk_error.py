"""Error of the top-k self-conditioning approximation against the exact product, on one GGUF.

For each k (and with / without renormalising the kept probabilities):
- logits: one decoder pass whose self-conditioning input is the model's own processed logits of a previous
  pass (the plain pass's logits / t_max, as at the second denoising step); max |logit delta| against the
  exact product, and the share of canvas positions whose argmax is unchanged. The "SC effect" line is the
  same delta between the exact SC pass and a pass without SC: what the approximation perturbs.
- tokens: one canvas generated with a fixed seed and fixed step count; share of the committed tokens equal
  to the exact run's.

    python bench/sc_topk_error.py -m /work/bench-cache/mid/bench-mid-f32.gguf -k 16 64 256 --steps 4
    python bench/sc_topk_error.py -m python/diffgemma_cpp/models/sudoku.gguf -k 1 2 4 8 --sudoku

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


def _inputs(path, n_threads, prompt_tokens, seed, sudoku_prompt):
    rng = np.random.default_rng(seed)
    with Model(path, n_threads=n_threads) as m:
        V, C = m.n_vocab, m.canvas_length
        if sudoku_prompt:
            from diffgemma_cpp import sudoku

            puzzle, _ = next(sudoku.puzzles(30, seed))
            prompt = sudoku.prompt_ids(puzzle)
        else:
            prompt = rng.integers(5, V, size=prompt_tokens).tolist()
        canvas = rng.integers(0, V, size=C).tolist()
        t_max = float(m.metadata.get("diffusion.eb_t_max", 0.8))
        m.encode(prompt)
        plain = m.decoder_logits(canvas)
    return prompt, canvas, plain, plain / t_max


def _pass(path, n_threads, k, renorm, prompt, canvas, sc):
    with Model(path, n_threads=n_threads, sc_top_k=k, sc_top_k_renormalize=renorm) as m:
        m.encode(prompt)
        t0 = time.perf_counter()
        out = m.decoder_logits(canvas, sc)
        return out, time.perf_counter() - t0


def _generate(path, n_threads, k, renorm, prompt, steps, seed):
    with Model(path, n_threads=n_threads, sc_top_k=k, sc_top_k_renormalize=renorm) as m:
        ids = m.generate_ids(prompt, max_new_tokens=m.canvas_length, steps=steps, seed=seed, confidence_threshold=0.0)
    return np.array(ids[len(prompt):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the generated canvas (0: skip)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-renorm-variant", action="store_true", help="measure only renormalize=0")
    ap.add_argument("--sudoku", action="store_true", help="use a Sudoku puzzle prompt (the bundled sudoku model)")
    args = ap.parse_args(argv)

    prompt, canvas, plain, sc = _inputs(args.model, args.threads, args.prompt_tokens, args.seed, args.sudoku)
    exact, t_exact = _pass(args.model, args.threads, 0, False, prompt, canvas, sc)
    probs = np.exp(sc - sc.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top1 = float(np.mean(probs.max(1)))
    print(json.dumps({"model": args.model, "n_vocab": int(sc.shape[1]), "canvas": int(sc.shape[0]),
                      "sc_effect_max_abs": float(np.max(np.abs(exact - plain))), "mean_top1_prob": top1,
                      "exact_pass_s": t_exact}), flush=True)
    gen_exact = _generate(args.model, args.threads, 0, False, prompt, args.steps, args.seed) if args.steps else None
    for k in args.k:
        for renorm in ((False,) if args.no_renorm_variant else (False, True)):
            out, t = _pass(args.model, args.threads, k, renorm, prompt, canvas, sc)
            kept = np.sort(probs, axis=1)[:, ::-1][:, :k].sum(1)
            row = {"k": k, "renormalize": renorm, "max_abs_logit_delta": float(np.max(np.abs(out - exact))),
                   "argmax_agreement": float(np.mean(out.argmax(1) == exact.argmax(1))),
                   "mean_kept_mass": float(kept.mean()), "pass_s": t}
            if gen_exact is not None:
                gen = _generate(args.model, args.threads, k, renorm, prompt, args.steps, args.seed)
                row["generated_token_agreement"] = float(np.mean(gen == gen_exact))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
