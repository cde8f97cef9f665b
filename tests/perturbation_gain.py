"""How much a tiny test model amplifies a small perturbation: the number that says whether a quantized file's
NMSE against the unquantized reference measures the file or the model.

Two measurements on HF's float64 model, both after encoding the same prompt:
- per-layer gain: relative noise `eps` added to the decoder's input hidden states; the relative RMS change of
  each decoder layer's output and of the logits, and the geometric mean growth per layer;
- weight-noise amplification: every weight matrix times (1 + eps * N(0, 1)), i.e. a weight NMSE of eps^2
  (the shape of quantization error; the encoder shares the weights, so the prompt's cache moves too); the
  logits' NMSE divided by eps^2;
and the smallest top-k margin of the router logits (how close an expert choice is to flipping).

    python tests/perturbation_gain.py wide wide:calm sudoku    # a table; engine_fixtures names, or the trained
                                                               # sudoku model (engine_fixtures.sudoku_hf)
    python tests/perturbation_gain.py --components wide:calm wide:trained sudoku   # amplification per component
    python tests/perturbation_gain.py --quantized q4_k_m wide:trained@0 wide:trained@1  # + what q4_k_m costs
"""
from __future__ import annotations

import torch

PROMPT_LEN = 21


def _inputs(hf, seed: int = 7):
    """(prompt, canvas): random ids, or the model's own task (`hf.task_inputs`) where it has one."""
    if hasattr(hf, "task_inputs"):
        return hf.task_inputs
    V, C = hf.config.text_config.vocab_size, hf.config.canvas_length
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (1, PROMPT_LEN), generator=g), torch.randint(0, V, (1, C), generator=g)


def _encode(hf, prompt):
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
    hf.model.encoder(input_ids=prompt, past_key_values=cache)
    return cache


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _decoder_run(hf, cache, canvas, noise=None):
    """Decoder layer outputs and logits; `noise` (same shape as the hidden states) is added to layer 0's input."""
    layers = hf.model.decoder.layers
    outs, handles = [], []
    if noise is not None:
        handles.append(layers[0].register_forward_pre_hook(lambda m, args: (args[0] + noise,) + tuple(args[1:])))
    for layer in layers:
        handles.append(layer.register_forward_hook(lambda m, args, out: outs.append(out.detach().clone())))
    try:
        logits = hf(decoder_input_ids=canvas, past_key_values=cache).logits[0]
    finally:
        for h in handles:
            h.remove()
    return outs, logits


def layer_gain(hf, eps: float = 1e-6, seed: int = 7) -> dict:
    """{"per_layer": [relative change after each decoder layer], "logits": ..., "gain": mean growth per layer}."""
    prompt, canvas = _inputs(hf, seed)
    with torch.no_grad():
        cache = _encode(hf, prompt)
        captured = []
        h = hf.model.decoder.layers[0].register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
        try:
            clean, clean_logits = _decoder_run(hf, cache, canvas)
        finally:
            h.remove()
        x0 = captured[0]
        g = torch.Generator().manual_seed(seed + 1)
        noise = eps * torch.randn(x0.shape, generator=g, dtype=x0.dtype) * x0.pow(2).mean().sqrt()
        noisy, noisy_logits = _decoder_run(hf, cache, canvas, noise)
    per_layer = [_rel(a, b) for a, b in zip(noisy, clean)]
    return {"per_layer": per_layer, "logits": _rel(noisy_logits, clean_logits),
            "gain": (per_layer[-1] / eps) ** (1.0 / len(per_layer))}


# Weight matrices by component (substrings of HF parameter names), for weight_noise_amplification(only=...).
COMPONENTS = {
    "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    "dense MLP": (".mlp.",),
    "experts": ("experts.",),
    "router": ("router.proj",),
    "embedding/head": ("embed_tokens",),
}


def weight_noise_amplification(hf, eps: float = 1e-3, seed: int = 7, only: tuple[str, ...] | None = None) -> float:
    """NMSE of the logits (after encoding the prompt, on the canvas) per unit weight NMSE; `only`: perturb just
    the matrices whose names contain one of these substrings (a COMPONENTS entry), so the components' shares
    of the whole can be compared."""
    prompt, canvas = _inputs(hf, seed)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        clean = hf(decoder_input_ids=canvas, past_key_values=_encode(hf, prompt)).logits[0]
        saved = {}
        for name, p in hf.model.decoder.named_parameters():
            if p.ndim >= 2 and (only is None or any(k in name for k in only)):
                saved[name] = p.clone()
                p.mul_(1.0 + eps * torch.randn(p.shape, generator=g, dtype=p.dtype))
        try:
            noisy = hf(decoder_input_ids=canvas, past_key_values=_encode(hf, prompt)).logits[0]
        finally:
            for name, p in hf.model.decoder.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
    return float(((noisy - clean) ** 2).sum() / (clean ** 2).sum()) / eps ** 2


def router_margin(hf, seed: int = 7) -> float:
    """Smallest gap, over every token and layer of the prompt and canvas, between the k-th and (k+1)-th router
    logit: how far the expert choice is from flipping."""
    prompt, canvas = _inputs(hf, seed)
    k = hf.config.text_config.top_k_experts
    gaps = []

    def record(module, args, out):
        logits = out if torch.is_tensor(out) else out[0]
        top = torch.topk(logits.reshape(-1, logits.shape[-1]), k + 1, dim=-1).values
        gaps.append(float((top[:, k - 1] - top[:, k]).min()))

    handles = [layer.router.proj.register_forward_hook(record) for layer in hf.model.decoder.layers]
    try:
        with torch.no_grad():
            cache = _encode(hf, prompt)
            hf(decoder_input_ids=canvas, past_key_values=cache)
    finally:
        for h in handles:
            h.remove()
    return min(gaps)


def quantized_logit_nmse(name: str, outtype: str) -> dict:
    """{case: NMSE} of HF float64 on the dequantized weights of `name`'s OUTTYPE file against HF on the original
    weights, for test_engine_parity's three cases (plain, SC, block 2): what the quantized file itself costs
    (the engine adds ~1e-10 to it, test_quantized_engine_matches_hf_on_dequantized_weights)."""
    import engine_fixtures as fx
    from test_engine_parity import _hf_decoder_cases, _task_cases, nmse

    prompt, c1, c2, sc, ref = _task_cases(fx.hf_model(name))
    quantized = _hf_decoder_cases(fx.hf_model(name, weights_as=outtype), prompt, c1, c2, sc)
    return {case: nmse(quantized[case], ref[case]) for case in ref}


def _override_trained_like(assignments) -> None:
    """FIELD=VALUE pairs replace fields of tiny_hf's trained_like init (for ablations)."""
    import dataclasses

    import tiny_hf

    fields = {k: float(v) for k, _, v in (a.partition("=") for a in assignments)}
    tiny_hf.CONDITIONINGS["trained_like"] = dataclasses.replace(tiny_hf.TRAINED_LIKE, **fields)


def _print_table(hf, name: str) -> None:
    lg = layer_gain(hf)
    print(f"{name:12s} per-layer gain {lg['gain']:8.2f}  (after each layer: "
          + " ".join(f"{v:.1e}" for v in lg["per_layer"]) + f"; logits {lg['logits']:.1e}, input 1e-6)"
          f"  weight-noise amplification {weight_noise_amplification(hf):9.3g}"
          f"  min router top-k margin {router_margin(hf):.2e}", flush=True)


if __name__ == "__main__":
    import argparse

    import engine_fixtures as fx

    ap = argparse.ArgumentParser(description="How much test models amplify a small perturbation.")
    ap.add_argument("names", nargs="*", default=["small", "gqa4", "wide", "wide:calm", "wide:trained", "sudoku"],
                    help="engine_fixtures names (e.g. wide:trained@3), or sudoku")
    ap.add_argument("--components", action="store_true", help="weight-noise amplification per component")
    ap.add_argument("--quantized", action="append", default=[], metavar="OUTTYPE",
                    help="also the logit NMSE that OUTTYPE's rounding causes (plain / sc / block2; not for sudoku, "
                         "whose numbers test_engine_parity prints)")
    ap.add_argument("--trained-like", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of tiny_hf.TRAINED_LIKE, e.g. post_norm=1.0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _override_trained_like(args.trained_like)
    for name in args.names:
        hf = fx.sudoku_hf() if name == "sudoku" else fx.hf_model(name)
        if args.components:
            print(f"{name:14s} amplification per component: " + "  ".join(
                f"{c} {weight_noise_amplification(hf, only=keys):.3g}" for c, keys in COMPONENTS.items()), flush=True)
        else:
            _print_table(hf, name)
        for outtype in args.quantized if name != "sudoku" else []:
            print(f"{'':14s} {outtype} logit NMSE (plain / sc / block2): "
                  + " / ".join(f"{v:.1e}" for v in quantized_logit_nmse(name, outtype).values()), flush=True)
