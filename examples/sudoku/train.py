"""Trains the tiny DiffusionGemma-architecture sudoku solver shipped with diffgemma_cpp (CPU only).

The model is a real `DiffusionGemmaForBlockDiffusion` (sliding and full attention layers, dense MLP plus
a small top-2 MoE, self-conditioning MLP), shrunk to a 16-token vocabulary and an 81-token canvas.

Objective, per example (DiffusionGemma / NeMo dLLM recipe):
  * prompt = <bos> + 81 puzzle cells ('.' for blanks) + '=' goes through the encoder; a small causal LM
    loss on it trains the encoder mode of the shared weights;
  * canvas = the 81 solution digits, corrupted by replacing each cell with probability t by a token drawn
    uniformly from the whole vocabulary (t ~ U(0, 1) per example: the sampler's re-noising);
  * cross-entropy of the decoder logits against the clean canvas, at every canvas position;
  * self-conditioning: for half of the batches a no-grad first decoder pass on the same noisy canvas gives
    logits that, divided by a temperature from the sampler's range, are fed back as
    ``self_conditioning_logits`` (at inference the previous step's temperature-scaled logits come there);
  * self-correction (--self-correct, third stage): on some self-conditioned batches the second pass's canvas
    is the first pass's own samples on a random share of the cells, random tokens on the rest, as at the
    sampler's next step, so the model learns to undo its own plausible mistakes.

Everything is seeded and the number of steps is fixed, so rerunning this script reproduces the shipped
checkpoint (up to the floating-point determinism of the CPU kernels).

Usage:  nice -n 5 python train.py --out /work/sudoku_ckpt [--steps N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import time

import torch
import torch.nn.functional as F
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, GenerationConfig

from sudoku_lib import sudoku
from tokenizer import build_tokenizer

CANVAS = sudoku.N_CELLS
TRAIN_STATE = "train_state.pt"  # optimizer, step and RNG states of the last save, for --resume
VOCAB_SIZE = len(sudoku.VOCAB)


def build_config(sliding_window: int = 64) -> DiffusionGemmaConfig:
    """The tiny model: 6 layers (sliding, sliding, full) x 2, 4 heads, 8 experts top-2."""
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,  # dense MLP and self-conditioning MLP width
        num_hidden_layers=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=1,
        # Shorter than the 83-token prompt on purpose: the sliding layers really drop the oldest keys,
        # so the shipped model exercises the engine's window handling.
        sliding_window=sliding_window,
        max_position_embeddings=512,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=128,
        hidden_activation="gelu_pytorch_tanh",
        final_logit_softcapping=30.0,
        use_bidirectional_attention="vision",
        pad_token_id=sudoku.PAD_ID,
        eos_token_id=sudoku.EOS_ID,
        bos_token_id=sudoku.BOS_ID,
        tie_word_embeddings=True,
    )
    # The architecture always carries a vision tower; make it as small as the class allows (text-only use).
    vision = dict(
        model_type="gemma4_vision",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=8,
    )
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision,
        canvas_length=CANVAS,
        # Image tokens do not exist in this vocabulary: ids outside it can never match a prompt token.
        boi_token_id=VOCAB_SIZE + 1,
        eoi_token_id=VOCAB_SIZE + 2,
        image_token_id=VOCAB_SIZE + 3,
        tie_word_embeddings=True,
        pad_token_id=sudoku.PAD_ID,
        eos_token_id=sudoku.EOS_ID,
        bos_token_id=sudoku.BOS_ID,
    )


def build_generation_config(max_denoising_steps: int) -> GenerationConfig:
    """Generation defaults written next to the weights (the engine reads them from the GGUF)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    return DiffusionGemmaGenerationConfig(
        max_new_tokens=CANVAS,  # exactly one canvas: the 81 cells
        max_denoising_steps=max_denoising_steps,
        sampler_config={"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
        t_min=0.4,
        t_max=0.8,
        stability_threshold=1,
        confidence_threshold=0.005,
        # The canvas never contains <eos> when solved; if the model ever emits it, HF pads the rest.
        eos_token_id=[sudoku.EOS_ID],
        pad_token_id=sudoku.PAD_ID,
        bos_token_id=sudoku.BOS_ID,
    )


def make_batch(rng: random.Random, batch: int, givens_range: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    prompts, canvases = [], []
    for _ in range(batch):
        puzzle, solution = sudoku.generate(rng.randint(*givens_range), rng)
        prompts.append(sudoku.prompt_ids(puzzle))
        canvases.append(sudoku.solution_ids(solution))
    return torch.tensor(prompts), torch.tensor(canvases)


def softcapped_logits(model: DiffusionGemmaForBlockDiffusion, hidden: torch.Tensor) -> torch.Tensor:
    cap = model.config.text_config.final_logit_softcapping
    return torch.tanh(model.lm_head(hidden).float() / cap) * cap


def training_step(model, prompts, clean, gen: torch.Generator, self_condition: bool, lm_weight: float,
                  self_correct: bool = False):
    """Loss of one batch (see the module docstring)."""
    b = clean.shape[0]
    noise_level = torch.rand(b, 1, generator=gen)
    corrupt = torch.rand(b, CANVAS, generator=gen) < noise_level
    random_tokens = torch.randint(0, VOCAB_SIZE, (b, CANVAS), generator=gen)
    noisy = torch.where(corrupt, random_tokens, clean)

    encoded = model.model.encoder(input_ids=prompts)
    cache = encoded.past_key_values  # the decoder reads it and never writes it, so both passes can share it

    sc_logits = None
    if self_condition:
        with torch.no_grad():
            first = model(past_key_values=cache, decoder_input_ids=noisy).logits
        temperature = 0.4 + 0.4 * torch.rand(b, 1, 1, generator=gen)  # the sampler's t_min..t_max range
        sc_logits = first / temperature
        if self_correct:
            # The second pass sees what the sampler's next step sees: the model's own samples (its confident
            # mistakes included) on a random share of the cells, fresh random tokens on the rest. Uniform noise
            # alone never shows a plausible wrong digit, which is the error the model must learn to undo.
            sampled = torch.distributions.Categorical(logits=sc_logits.float()).sample()
            keep = torch.rand(b, CANVAS, generator=gen) < 0.5 + 0.5 * torch.rand(b, 1, generator=gen)
            noisy = torch.where(keep, sampled, torch.randint(0, VOCAB_SIZE, (b, CANVAS), generator=gen))

    logits = model(past_key_values=cache, decoder_input_ids=noisy, self_conditioning_logits=sc_logits).logits
    canvas_loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), clean.reshape(-1))

    enc_logits = softcapped_logits(model, encoded.last_hidden_state[:, :-1])
    lm_loss = F.cross_entropy(enc_logits.reshape(-1, VOCAB_SIZE), prompts[:, 1:].reshape(-1))
    cell_acc = (logits.argmax(-1) == clean).float().mean()
    return canvas_loss + lm_weight * lm_loss, canvas_loss.detach(), lm_loss.detach(), cell_acc.detach()


@torch.no_grad()
def solve_rate(model, puzzles: list[tuple[str, str]], batch: int = 50) -> tuple[float, float]:
    """Fully-solved fraction with HF generate, and mean decoder passes per canvas."""
    model.eval()
    solved, passes = 0, 0
    for i in range(0, len(puzzles), batch):
        chunk = puzzles[i : i + batch]
        ids = torch.tensor([sudoku.prompt_ids(p) for p, _ in chunk])
        out = model.generate(input_ids=ids, return_dict_in_generate=True)
        seqs = out.sequences if hasattr(out, "sequences") else out
        for (p, _), row in zip(chunk, seqs[:, ids.shape[1] :].tolist()):
            solved += sudoku.is_valid_solution(sudoku.canvas_to_grid(row), p)
        passes += _decoder_passes(out) * len(chunk)
    model.train()
    return solved / len(puzzles), passes / len(puzzles)


def _decoder_passes(out) -> float:
    # HF reports tokens_per_forward = non-pad new tokens / decoder passes; one canvas of 81 per row.
    tpf = getattr(out, "tokens_per_forward", None)
    if tpf is None:
        return float("nan")
    tpf = float(tpf.float().mean()) if torch.is_tensor(tpf) else float(tpf)
    return CANVAS / tpf if tpf else float("nan")


def save(model, tokenizer, out: pathlib.Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training_meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/work/sudoku_ckpt"))
    ap.add_argument("--steps", type=int, default=1000, help="length of the LR schedule")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop (and save) after this many steps of the --steps schedule; reproduces an early checkpoint")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=None, help="LR warmup steps (default: min(200, steps/10))")
    ap.add_argument("--givens-min", type=int, default=36)
    ap.add_argument("--givens-max", type=int, default=64)
    ap.add_argument("--eval-givens", type=int, default=45)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-puzzles", type=int, default=50)
    ap.add_argument("--max-denoising-steps", type=int, default=32)
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--self-correct", type=float, default=0.0, metavar="P",
                    help="share of the self-conditioned batches whose second pass denoises the model's own samples "
                         "(default 0: uniform noise only, the first model's recipe)")
    ap.add_argument("--init-from", type=pathlib.Path, default=None,
                    help="start from this checkpoint instead of random weights (second training stage)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run saved in --out (weights, optimizer, step and RNG states of its last save)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    state_file = args.out / TRAIN_STATE
    if args.resume and not state_file.is_file():
        raise SystemExit(f"--resume: {state_file} not found (no save of this run yet)")
    if args.resume:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.out)
    elif args.init_from is not None:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.init_from)
    else:
        model = DiffusionGemmaForBlockDiffusion(build_config())
    model.generation_config = build_generation_config(args.max_denoising_steps)
    model.train()
    tokenizer = build_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f} M", flush=True)

    # Eval puzzles come from their own seed so they never overlap the training stream's RNG.
    eval_rng = random.Random(args.seed + 1)
    eval_set = [sudoku.generate(args.eval_givens, eval_rng) for _ in range(args.eval_puzzles)]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    warmup = min(200, args.steps // 10) if args.warmup is None else args.warmup

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    history, first_step, elapsed_before = [], 0, 0.0
    if args.resume:
        state = torch.load(state_file, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        rng.setstate(state["python_rng"])
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        first_step, history, elapsed_before = state["step"], state["history"], state["seconds"]
        print(f"resuming at step {first_step}", flush=True)
    t0 = time.time() - elapsed_before
    n_run = args.steps if args.stop_after is None else min(args.stop_after, args.steps)
    for step in range(first_step, n_run):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        prompts, clean = make_batch(rng, args.batch, (args.givens_min, args.givens_max))
        self_condition = rng.random() < 0.5
        self_correct = self_condition and args.self_correct > 0 and rng.random() < args.self_correct
        loss, canvas_loss, lm_loss, acc = training_step(model, prompts, clean, gen, self_condition, args.lm_weight,
                                                        self_correct)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = step == n_run - 1
        if step % 25 == 0 or last:
            print(
                f"step {step:5d}  canvas {canvas_loss:.4f}  lm {lm_loss:.4f}  cell_acc {acc:.3f}"
                f"  lr {lr_at(step):.2e}  {time.time() - t0:7.0f}s",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or last:
            rate, passes = solve_rate(model, eval_set)
            record = dict(step=step + 1, seconds=round(time.time() - t0), solve_rate=rate, mean_passes=passes)
            history.append(record)
            print(f"EVAL {json.dumps(record)}", flush=True)
            meta = dict(vars(args), out=str(args.out), history=history, params=n_params)
            save(model, tokenizer, args.out, meta)
            # Everything a --resume needs to continue exactly this schedule and data stream.
            torch.save(dict(step=step + 1, history=history, seconds=time.time() - t0, optimizer=opt.state_dict(),
                            python_rng=rng.getstate(), torch_gen=gen.get_state(), torch_rng=torch.get_rng_state()),
                       state_file)


if __name__ == "__main__":
    main()
