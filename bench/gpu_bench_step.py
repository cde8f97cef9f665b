"""Denoising-step speed at the RELEASED model's shapes (issue 8): ms per step, split, and tokens/s.

    python bench/gpu_bench_step.py --out DIR                       # GPU: 6 layers, n_gpu_layers=-1
    python bench/gpu_bench_step.py --out DIR --budget-s 150        # as many layers as ~150 s allow
    python bench/gpu_bench_step.py --out DIR --n-gpu-layers 0 --layers 1 --vocab 32768 --steps 3 -r 1  # CPU smoke

1. builds a random-weight Q4_K_M GGUF with the first N of the 30 release layers (make_real_shape_gguf.py:
   hidden 2816, 128 experts top-8, vocabulary 262144, canvas 256) in a temporary folder, and times that;
2. loads it with `diffgemma_cpp.Model(..., n_gpu_layers=...)` through bench.EngineRunner (load time, warm-up);
3. times a random prompt's encoding and `--repetitions` canvases of exactly `--steps` denoising steps
   (EngineRunner.denoise: the per-step figures cover the self-conditioned steps; the split into
   self-conditioning / backbone / head comes from diffgemma_timings' split mode, plus graph setup, logits
   read-back and the host sampler), then one more canvas with the split timing off (one graph per pass and
   no timing callbacks, as the engine runs normally: "unsplit");
4. reports ms per step, its parts, backbone ms per layer, the 30-layer figure EXTRAPOLATED from the N measured
   layers (backbone / N * 30 + everything else as measured; FLOP- and weight-byte-weighted variants that count
   the full-attention layers' larger heads and the release's 8-bit expert layers are given too), and tokens/s
   at 20 steps per block = 256 * 1000 / (20 * step ms);
5. checks one decoder pass's logits (finite, spread);
6. on the GPU (--max-layers, default 30 there), runs a second round with as many more layers as the time left
   allows, judged from the first round's measured build / load / step times; that round, when it completes,
   is the headline (all 30 layers: measured, no extrapolation). A failed second round leaves the first.

Writes DIR/gpu_step_bench.json after every phase (so a run cut short still leaves what it measured) and prints
a short text summary (also stored in the JSON as "summary_text"). A watchdog ends the run with the JSON written
when --timeout-s passes or a SIGTERM arrives (gpu_session.sh runs each bench under `timeout`), also while the
engine is inside a C call. Exit status: 0 ok, 1 failed (the JSON says where and why), 2 bad arguments, 124 timed
out / terminated.

Defaults can also come from the environment, for `bash bench/gpu_session.sh run`, which passes only --out:
DG_GPU_BENCH_LAYERS, DG_GPU_BENCH_BUDGET_S, DG_GPU_BENCH_TIMEOUT_S, DG_GPU_BENCH_N_GPU_LAYERS, DG_GPU_BENCH_STEPS.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_real_shape_gguf, next to this file

RELEASE_LAYERS = 30
STEPS_PER_BLOCK = 20          # the "effective tokens/s at 20 steps per block"
DEFAULT_LAYERS = 6            # one whole 5 sliding : 1 full period; ~3.4 GB
# Budget mode (--budget-s without --layers): conservative throughputs for writing the file and loading it
# (mmap + copy to the device), per byte, plus a fixed allowance for start-up, warm-up and the timed steps.
BUILD_BYTES_PER_S = 0.4e9
LOAD_BYTES_PER_S = 0.5e9
FIXED_S = 45.0
GROW_MARGIN_S = 25.0          # slack on top of the estimate before a second, larger round is started
JSON_NAME = "gpu_step_bench.json"


def _env_int(name: str, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_step_bench.json")
    ap.add_argument("--layers", type=int, default=_env_int("DG_GPU_BENCH_LAYERS", None),
                    help=f"release layers to build (1..30; default {DEFAULT_LAYERS}, or chosen by --budget-s)")
    ap.add_argument("--budget-s", type=float, default=_env_int("DG_GPU_BENCH_BUDGET_S", None),
                    help="without --layers: the most layers whose build + load + steps fit this many seconds")
    ap.add_argument("--timeout-s", type=float, default=_env_int("DG_GPU_BENCH_TIMEOUT_S", 285),
                    help="hard limit for the whole run; the JSON is written and the run ends (default 285)")
    ap.add_argument("--max-layers", type=int, default=_env_int("DG_GPU_BENCH_MAX_LAYERS", None),
                    help="after the first round, measure again with as many layers up to this as the time left "
                         "allows (default 30 on the GPU, off with --n-gpu-layers 0)")
    ap.add_argument("--no-split", action="store_true",
                    help="time whole decoder passes (no self-conditioning / backbone / head split, no extrapolation)")
    ap.add_argument("--n-gpu-layers", "-ngl", type=int, default=_env_int("DG_GPU_BENCH_N_GPU_LAYERS", -1),
                    help="layers on the GPU (-1 all, the default; 0 for a CPU run)")
    ap.add_argument("--steps", type=int, default=_env_int("DG_GPU_BENCH_STEPS", 8),
                    help="denoising steps per canvas (>= 2; the first has no self-conditioning and is not timed)")
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="canvases timed (median [min..max])")
    ap.add_argument("-p", "--prompt-tokens", type=int, default=256, help="random prompt before the canvas")
    ap.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: the library's default)")
    ap.add_argument("--vocab", type=int, default=262144, help="vocabulary rows (smaller only for smoke runs)")
    ap.add_argument("--experts", type=int, default=128, help="experts per layer (smaller only for smoke runs)")
    ap.add_argument("--model-dir", default=None, help="where the temporary GGUF goes (default: the system temp)")
    ap.add_argument("--keep-model", action="store_true", help="keep the GGUF (its path is in the JSON)")
    args = ap.parse_args(argv)
    if args.layers is not None and not 1 <= args.layers <= RELEASE_LAYERS:
        ap.error(f"--layers must be in 1..{RELEASE_LAYERS}")
    if args.max_layers is None:
        args.max_layers = RELEASE_LAYERS if args.n_gpu_layers != 0 else 0
    if not 0 <= args.max_layers <= RELEASE_LAYERS:
        ap.error(f"--max-layers must be in 0..{RELEASE_LAYERS}")
    if args.steps < 2 or args.repetitions < 1 or args.prompt_tokens < 1:
        ap.error("--steps must be >= 2, --repetitions and --prompt-tokens >= 1")
    if args.timeout_s <= 0 or (args.budget_s is not None and args.budget_s <= 0):
        ap.error("--timeout-s and --budget-s must be positive")
    return args


class Report:
    """The JSON result, rewritten atomically after every phase; thread-safe (the watchdog writes it too)."""

    def __init__(self, out_dir: Path, args):
        self.path = out_dir / JSON_NAME
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.data = {"what": "ms per denoising step at the released shapes (random Q4_K_M weights), issue 8",
                     "status": "running", "phase": "start", "args": vars(args).copy(), "notes": []}

    def update(self, phase: str | None = None, **values) -> None:
        with self.lock:
            if phase is not None:
                self.data["phase"] = phase
                print(f"[{time.perf_counter() - self.t0:6.1f} s] {phase}", flush=True)
            self.data.update(values)
            self._write()

    def finish(self, status: str, **values) -> None:
        with self.lock:
            self.data.update(values, status=status, elapsed_s=time.perf_counter() - self.t0)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


class Watchdog:
    """Ends the process (JSON written, temporary model removed) at the deadline or on SIGTERM.

    SIGTERM is blocked in every thread (threads the engine starts inherit the mask) and collected here with
    sigtimedwait, so it is handled even while the main thread sits in a long C call, where a Python signal
    handler would not run before `timeout --kill-after` sends SIGKILL."""

    def __init__(self, report: Report, deadline_s: float, cleanup):
        self.report, self.deadline, self.cleanup = report, time.monotonic() + deadline_s, cleanup
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _run(self) -> None:
        while True:
            left = self.left()
            if left <= 0:
                why = "timed out (--timeout-s)"
                break
            if signal.sigtimedwait({signal.SIGTERM}, min(left, 1.0)) is not None:
                why = "terminated (SIGTERM)"
                break
        phase = self.report.data.get("phase")
        self.report.data["notes"].append(f"{why} during phase {phase!r}; "
                                         "figures recorded before this phase are complete")
        try:
            self.report.lock.acquire(timeout=5)
            self.report.data.update(status="timed_out", elapsed_s=time.perf_counter() - self.report.t0)
            self.report._write()
        finally:
            print(f"gpu_bench_step: {why} during {phase!r}; partial results in {self.report.path}", flush=True)
            self.cleanup()
            os._exit(124)


def device_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def choose_layers(args, bytes_for) -> tuple:
    """(layers, how chosen). bytes_for(n) = file size with n layers."""
    if args.layers is not None:
        return args.layers, "--layers"
    if args.budget_s is None:
        return DEFAULT_LAYERS, f"default ({DEFAULT_LAYERS})"
    best = 1
    for n in range(1, RELEASE_LAYERS + 1):
        b = bytes_for(n)
        if b / BUILD_BYTES_PER_S + b / LOAD_BYTES_PER_S + FIXED_S <= args.budget_s:
            best = n
    return best, (f"--budget-s {args.budget_s:g} (assuming build {BUILD_BYTES_PER_S / 1e9:g} GB/s, load "
                  f"{LOAD_BYTES_PER_S / 1e9:g} GB/s, {FIXED_S:g} s fixed)")


def release_shape(shape):
    """bench_flops.Shape of the full 30-layer release from a measured file's shape (same widths)."""
    pattern = ([True] * 5 + [False]) * 5
    kv_swa = next((kv for kv, swa in zip(shape.n_head_kv, shape.is_swa) if swa), 8)
    return dataclasses.replace(shape, is_swa=tuple(pattern), n_head_kv=tuple(kv_swa if s else 2 for s in pattern))


def derive(summary: dict, shape, n_prompt: int, layer_bytes: tuple | None = None,
           unsplit: dict | None = None) -> dict:
    """Per-step figures (medians), per-layer backbone and the 30-layer extrapolation. `unsplit`: a run with
    the split timing off (one graph per pass, no timing callbacks), the step as the engine really runs it."""
    from diffgemma_cpp.bench_flops import step_flops

    med = {k: v["median"] for k, v in summary.items()}
    n = shape.n_layer
    step = med["step_ms"]
    parts = {k: med.get(f"{k}_ms") for k in ("setup", "sc", "backbone", "head", "readback", "sampler")}
    out = {"measured": {"n_layers": n, "step_ms": step, **{f"{k}_ms": v for k, v in parts.items()},
                        "tok_s_at_20_steps": shape.canvas * 1000.0 / (STEPS_PER_BLOCK * step)}}
    if unsplit is not None:
        out["measured"].update(step_ms_unsplit=unsplit["step_ms"],
                               tok_s_at_20_steps_unsplit=shape.canvas * 1000.0 / (STEPS_PER_BLOCK * unsplit["step_ms"]))
    if n >= RELEASE_LAYERS:
        out["measured"]["backbone_ms_per_layer"] = None if parts["backbone"] is None else parts["backbone"] / n
        out["extrapolated_30_layers"] = {"note": "all 30 layers measured: no extrapolation"}
        return out
    if parts["backbone"] is None:
        out["extrapolated_30_layers"] = {"note": "not available: the run gave no split timings (split mode off "
                                                 "or not supported by this build)"}
        return out
    per_layer = parts["backbone"] / n
    rest = step - parts["backbone"]  # setup + sc + head + read-back + sampler (+ anything between them)
    linear = rest + per_layer * RELEASE_LAYERS
    f_meas = step_flops(shape, n_prompt)["backbone"]
    f_full = step_flops(release_shape(shape), n_prompt)["backbone"]
    weighted = rest + parts["backbone"] * f_full / f_meas
    out["measured"]["backbone_ms_per_layer"] = per_layer
    if unsplit is not None:
        out["measured"]["split_overhead_ms"] = step - unsplit["step_ms"]
    out["extrapolated_30_layers"] = {
        "label": f"EXTRAPOLATED from {n} measured layer(s), not measured",
        "method": "step_ms - backbone_ms + backbone_ms / n_layers * 30 (all non-backbone parts as measured)",
        "step_ms": linear, "backbone_ms": per_layer * RELEASE_LAYERS,
        "tok_s_at_20_steps": shape.canvas * 1000.0 / (STEPS_PER_BLOCK * linear),
        "flop_weighted_step_ms": weighted,
        "flop_weighted_method": f"backbone scaled by its matrix FLOPs, 30 release layers / the {n} measured "
                                f"({f_full / 1e9:.0f} / {f_meas / 1e9:.0f} GFLOP): counts the 5 full-attention "
                                "layers' larger heads",
        "flop_weighted_tok_s_at_20_steps": shape.canvas * 1000.0 / (STEPS_PER_BLOCK * weighted),
    }
    if unsplit is not None:
        from_unsplit = unsplit["step_ms"] + per_layer * (RELEASE_LAYERS - n)
        out["extrapolated_30_layers"].update(
            step_ms_from_unsplit=from_unsplit,
            from_unsplit_method="unsplit step_ms + backbone_ms / n_layers * (30 - n_layers)",
            tok_s_at_20_steps_from_unsplit=shape.canvas * 1000.0 / (STEPS_PER_BLOCK * from_unsplit))
    if layer_bytes:
        b_meas, b_full = layer_bytes
        by_bytes = rest + parts["backbone"] * b_full / b_meas
        out["extrapolated_30_layers"].update({
            "byte_weighted_step_ms": by_bytes,
            "byte_weighted_method": f"backbone scaled by the layers' weight bytes, 30 release layers / the {n} "
                                    f"measured ({b_full / 2**30:.2f} / {b_meas / 2**30:.2f} GiB): for a "
                                    "memory-bound backbone (the release gives some layers 8-bit expert down "
                                    "projections)",
            "byte_weighted_tok_s_at_20_steps": shape.canvas * 1000.0 / (STEPS_PER_BLOCK * by_bytes),
        })
    return out


def logits_check(model, canvas) -> dict:
    import numpy as np

    lg = model.decoder_logits(canvas)
    finite = bool(np.isfinite(lg).all())
    rows = lg[:32].astype(np.float64) / 0.8
    rows -= rows.max(axis=1, keepdims=True)
    p = np.exp(rows)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
    return {"finite": finite, "std": float(np.nanstd(lg)), "max_abs": float(np.nanmax(np.abs(lg))),
            "entropy_t0.8_first32_rows": {"mean": float(entropy.mean()), "min": float(entropy.min()),
                                          "max": float(entropy.max())}}


def _fmt(v, digits=1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def round_text(r: dict, prompt_tokens: int) -> list:
    f = _fmt
    b = r.get("model", {})
    lines = [f"[{r['n_layers']} of 30 layers] {r.get('status')}: vocab {b.get('n_vocab')}, {b.get('outtype')}, "
             f"{f((b.get('bytes') or 0) / 2**30, 2)} GiB; build {f(b.get('seconds'))} s, load {f(r.get('load_s'))} s, "
             f"warm-up {f(r.get('warmup_s'))} s" + (f"; {r['error']}" if r.get("error") else "")]
    m = r.get("derived", {}).get("measured", {})
    if m:
        lines.append(f"  measured (canvas 256, prompt {prompt_tokens}): step {f(m['step_ms'], 2)} ms = setup "
                     f"{f(m.get('setup_ms'), 2)} + self-cond {f(m.get('sc_ms'), 2)} + backbone "
                     f"{f(m.get('backbone_ms'), 2)} + head {f(m.get('head_ms'), 2)} + read-back "
                     f"{f(m.get('readback_ms'), 2)} + sampler {f(m.get('sampler_ms'), 2)}; backbone/layer "
                     f"{f(m.get('backbone_ms_per_layer'), 2)} ms; "
                     f"{f(m['tok_s_at_20_steps'], 0)} tok/s at 20 steps/block")
        if m.get("step_ms_unsplit") is not None:
            lines.append(f"  unsplit (no timing callbacks): step {f(m['step_ms_unsplit'], 2)} ms; "
                         f"{f(m['tok_s_at_20_steps_unsplit'], 0)} tok/s at 20 steps/block")
    e = r.get("derived", {}).get("extrapolated_30_layers", {})
    if e.get("step_ms") is not None:
        lines.append(f"  EXTRAPOLATED to 30 layers (per layer, not measured): step {f(e['step_ms'], 2)} ms -> "
                     f"{f(e['tok_s_at_20_steps'], 0)} tok/s at 20 steps/block (FLOP-weighted: "
                     f"{f(e['flop_weighted_step_ms'], 2)} ms -> {f(e['flop_weighted_tok_s_at_20_steps'], 0)} tok/s; "
                     f"weight-byte-weighted: {f(e.get('byte_weighted_step_ms'), 2)} ms -> "
                     f"{f(e.get('byte_weighted_tok_s_at_20_steps'), 0)} tok/s)")
        if e.get("step_ms_from_unsplit") is not None:
            lines.append(f"  EXTRAPOLATED from the unsplit step: {f(e['step_ms_from_unsplit'], 2)} ms -> "
                         f"{f(e['tok_s_at_20_steps_from_unsplit'], 0)} tok/s at 20 steps/block")
    elif e:
        lines.append(f"  30 layers: {e.get('note')}")
    lc = r.get("logits_check")
    if lc:
        lines.append(f"  logits: finite {lc['finite']}, std {f(lc['std'], 3)}, max |x| {f(lc['max_abs'], 2)}")
    return lines


def summary_text(d: dict) -> str:
    lines = [f"gpu_bench_step: {d.get('device') or 'no GPU name'} | {d.get('system_info', '')}",
             f"n_gpu_layers {d['args'].get('n_gpu_layers')}, {d.get('threads', '?')} CPU threads, steps "
             f"{d['args'].get('steps')} per canvas (the first, without self-conditioning, untimed)"]
    for r in d.get("rounds", []):
        lines += round_text(r, d["args"]["prompt_tokens"])
    if d.get("headline_layers"):
        lines.append(f"headline: the {d['headline_layers']}-layer round")
    lines.append(f"status {d.get('status')}" + (f": {d.get('error')}" if d.get("error") else ""))
    return "\n".join(lines)


class Bench:
    """One round = build the N-layer file, load it, time encode + denoising, check the logits, free it."""

    def __init__(self, args, report: Report, work: Path):
        import diffgemma_cpp
        from diffgemma_cpp import bench
        from diffgemma_cpp._native import lib
        import make_real_shape_gguf as mk

        self.args, self.report, self.work, self.bench, self.mk, self.lib = args, report, work, bench, mk, lib
        self.threads = args.threads or lib.diffgemma_default_n_threads()
        report.update(system_info=diffgemma_cpp.system_info(), threads=self.threads, rounds=[])

    def file_bytes(self, n: int, layers_only: bool = False) -> int:
        tensors = self.mk.plan_types(self.mk.release_hparams(n, self.args.vocab, self.args.experts))[1]
        return self.mk.file_bytes([t for t in tensors if t.layer is not None or not layers_only])

    def round(self, n: int, left) -> dict:
        """Runs one round; its dict (in report.data["rounds"]) is filled in as it goes. Raises on failure."""
        args, report, rnd = self.args, self.report, {"n_layers": n, "status": "running"}
        report.data["rounds"].append(rnd)
        t_start = time.monotonic()
        report.update(f"{n}L: build")
        path = self.work / f"real-shape-{n}L.gguf"
        runner = None
        try:
            info = self.mk.build(path, n, args.vocab, "q4_k_m", args.experts)
            rnd["model"] = info
            print(f"  built {info['bytes'] / 2**30:.2f} GiB in {info['seconds']:.1f} s", flush=True)
            layer_bytes = (self.file_bytes(n, True), self.file_bytes(RELEASE_LAYERS, True))
            report.update(f"{n}L: load")
            runner = self.bench.EngineRunner(info["path"], self.threads, args.prompt_tokens, split=not args.no_split,
                                             n_gpu_layers=args.n_gpu_layers)
            rnd.update(load_s=runner.load_s, warmup_s=runner.warmup_s)
            t_measure = time.monotonic()
            report.update(f"{n}L: encode")
            rnd["encode"] = runner.encode()
            runs = []
            for r in range(args.repetitions):
                report.update(f"{n}L: denoise {r + 1}/{args.repetitions}")
                t0 = time.monotonic()
                runs.append(runner.denoise(args.steps, seed=r))
                rnd.update(runs=runs, summary=self.bench.summarize(runs))
                rnd["derived"] = derive(rnd["summary"], runner.shape, args.prompt_tokens, layer_bytes)
                report.update()
                if r + 1 < args.repetitions and left() < 2 * (time.monotonic() - t0) + 20:
                    report.data["notes"].append(f"{n}L: stopped after {r + 1} repetition(s) to stay inside --timeout-s")
                    break
            if not args.no_split and left() > 2 * (time.monotonic() - t0) + 20:
                report.update(f"{n}L: denoise, split timing off")
                self.lib.diffgemma_timings_enable(runner.model._c, 0)
                rnd["unsplit_run"] = runner.denoise(args.steps, seed=args.repetitions)
                rnd["derived"] = derive(rnd["summary"], runner.shape, args.prompt_tokens, layer_bytes,
                                        rnd["unsplit_run"])
            report.update(f"{n}L: logits check")
            rnd["logits_check"] = logits_check(runner.model, runner.canvas)
            rnd["measure_s"] = time.monotonic() - t_measure
            if not rnd["logits_check"]["finite"]:
                raise FloatingPointError("the decoder's logits hold NaN/Inf")
            rnd["status"] = "ok"
        except BaseException as exc:
            rnd.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if runner is not None:
                runner.close()
            if not args.keep_model:
                path.unlink(missing_ok=True)
            rnd["round_s"] = time.monotonic() - t_start
            report.update()
        return rnd

    def next_layers(self, done: dict, left: float) -> int | None:
        """The most layers (<= --max-layers, > done's) a second round can build, load and time in `left` s,
        from the rates the first round measured on this machine; None if none fits."""
        b = done["model"]["bytes"]
        build_rate = b / max(done["model"]["seconds"], 1e-3)
        load_rate = b / max(done["load_s"] + done["warmup_s"], 1e-3)
        best = None
        for m in range(done["n_layers"] + 1, self.args.max_layers + 1):
            bm = self.file_bytes(m)
            estimate = bm / build_rate + bm / load_rate + done["measure_s"] * m / done["n_layers"] + GROW_MARGIN_S
            if estimate <= left:
                best = m
        return best


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir, args)
    work = Path(tempfile.mkdtemp(prefix="dg-gpu-bench-", dir=args.model_dir))
    cleanup = (lambda: None) if args.keep_model else (lambda: shutil.rmtree(work, ignore_errors=True))
    watchdog = Watchdog(report, args.timeout_s, cleanup)
    status, code = "ok", 0
    try:
        report.update("import", device=device_name())
        b = Bench(args, report, work)
        n_layers, how = choose_layers(args, b.file_bytes)
        report.update(layers_chosen_by=how)
        done = b.round(n_layers, watchdog.left)
        report.update(headline_layers=n_layers, derived=done["derived"])
        more = b.next_layers(done, watchdog.left()) if args.max_layers > n_layers else None
        if args.max_layers > n_layers and more is None:
            report.data["notes"].append(f"no second round: more than {n_layers} layers would not fit the time left")
        if more is not None:
            try:
                bigger = b.round(more, watchdog.left)
                report.update(headline_layers=more, derived=bigger["derived"])
            except Exception as exc:  # the first round stands; say why the second did not
                report.data["notes"].append(f"the {more}-layer round failed ({type(exc).__name__}: {exc}); "
                                            f"the headline stays the {n_layers}-layer round")
    except KeyboardInterrupt:
        status, code = "interrupted", 130
    except Exception as exc:  # every failure ends in the JSON with its phase, then a non-zero exit
        status, code = "failed", 1
        report.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
        print(f"gpu_bench_step: FAILED in phase {report.data['phase']!r}: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
    finally:
        cleanup()
    report.update(status=status)
    text = summary_text(report.data)
    report.finish(status, summary_text=text)
    print(text, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
