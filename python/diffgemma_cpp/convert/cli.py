"""`diffgemma-cpp convert` and `diffgemma-cpp quantize` subcommands (wired into the main CLI by cli.py).

    diffgemma-cpp convert HF_DIR --outfile model.gguf --outtype q4_k_m
    diffgemma-cpp convert HF_DIR --outfile model.gguf --mmproj mmproj.gguf --mmproj-outtype f16
    diffgemma-cpp quantize model-BF16.gguf model-Q4_K_M.gguf q4_k_m
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from contextlib import contextmanager

from ..errors import InvalidArgumentError
from .quant_rules import OUTTYPE_CHOICES, PROJECTOR_OUTTYPE_CHOICES

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.I)


def parse_size(text: str) -> int:
    """"500M", "4G", "1.5T" or a byte count -> bytes (powers of 1000, like llama.cpp's --split-max-size)."""
    m = _SIZE.match(str(text))
    if not m:
        raise InvalidArgumentError(f"bad size {text!r}: use a number with an optional K, M, G or T suffix")
    scale = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}[m.group(2).upper()]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise InvalidArgumentError(f"bad size {text!r}: must be positive")
    return value


@contextmanager
def _signals_as_interrupt():
    """SIGINT and SIGTERM stop a conversion as KeyboardInterrupt, so the writer's cleanup runs (no partial file is
    left behind); while the writer's threads run, at its next chunk boundary (writer.interrupt_now_or_soon)."""
    from .writer import interrupt_now_or_soon

    def handler(signum, frame):
        interrupt_now_or_soon()

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. nohup: an ignored signal stays ignored
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=TYPE",
                   help="override the type of tensors whose GGUF name matches REGEX (repeatable; first match "
                        "wins), e.g. 'ffn_down_exps=q8_0' or 'blk\\.(0|1)\\.attn_.*=q8_0'")
    p.add_argument("--dry-run", action="store_true", help="list every output tensor with its type and size, "
                                                          "and the total; write nothing")
    p.add_argument("--split-max-size", type=parse_size, default=0, metavar="SIZE",
                   help="write shards of at most SIZE (e.g. 4G) named NAME-0000k-of-0000n.gguf")
    p.add_argument("-t", "--threads", type=int, default=None, help="encoding threads (default: CPU count, max 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_convert(args) -> int:
    from .pipeline import convert_checkpoint

    with _signals_as_interrupt():
        paths = convert_checkpoint(args.hf_dir, args.outfile, args.outtype, tensor_types=args.tensor_type,
                                   dry_run=args.dry_run, split_max_size=args.split_max_size, threads=args.threads,
                                   progress=not args.no_progress and sys.stderr.isatty(), mmproj=args.mmproj,
                                   mmproj_outtype=args.mmproj_outtype, mmproj_only=args.mmproj_only)
    for p in paths:
        print(f"wrote {p}")
    return 0


def _run_quantize(args) -> int:
    from .pipeline import requantize_gguf

    with _signals_as_interrupt():
        paths = requantize_gguf(args.infile, args.outfile, args.type, tensor_types=args.tensor_type,
                                dry_run=args.dry_run, split_max_size=args.split_max_size, threads=args.threads,
                                progress=not args.no_progress and sys.stderr.isatty())
    for p in paths:
        print(f"wrote {p}")
    return 0


def _outtype(text: str) -> str:
    if text.lower() not in OUTTYPE_CHOICES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(OUTTYPE_CHOICES)})")
    return text.lower()


def _mmproj_outtype(text: str) -> str:
    if text.lower() not in PROJECTOR_OUTTYPE_CHOICES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} "
                                         f"(choose from {', '.join(PROJECTOR_OUTTYPE_CHOICES)})")
    return text.lower()


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="convert a Hugging Face DiffusionGemma checkpoint to GGUF",
                              description="Convert a Hugging Face DiffusionGemma checkpoint (safetensors) to a "
                                          "GGUF file in the layout of llama.cpp PR #24423 / the unsloth GGUFs.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--outfile", "-o", default=None, help="output GGUF (default: HF_DIR/<name>-<TYPE>.gguf)")
    p.add_argument("--outtype", type=_outtype, default="auto", metavar="TYPE",
                   help=f"one of {', '.join(OUTTYPE_CHOICES)} (default auto: bf16 for a bf16 checkpoint; a "
                        "quantized checkpoint keeps NVFP4 weights as NVFP4 and writes FP8 / INT8 ones as q8_0; "
                        "any other type dequantizes them first)")
    p.add_argument("--mmproj", default=None, metavar="OUT",
                   help="also write the vision tower as a projector GGUF OUT (llama.cpp's Gemma-4 mmproj layout: "
                        "clip architecture, projector gemma4v), in the same run")
    p.add_argument("--mmproj-outtype", type=_mmproj_outtype, default=None, metavar="TYPE",
                   help=f"the projector's type, one of {', '.join(PROJECTOR_OUTTYPE_CHOICES)} (default: --outtype's "
                        "when it is one of those, else the checkpoint's 16-bit float type); norms, std_bias / "
                        "std_scale and the position table stay f32")
    p.add_argument("--mmproj-only", action="store_true", help="write only the projector (--mmproj), no text GGUF")
    _common(p)
    p.set_defaults(func=_run_convert)
    return p


def add_quantize_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("quantize", help="requantize an F32/F16/BF16 DiffusionGemma GGUF",
                              description="Rewrite a DiffusionGemma GGUF with another tensor type recipe.")
    p.add_argument("infile", metavar="IN", help="input GGUF (F32, F16 or BF16 weights)")
    p.add_argument("outfile", metavar="OUT", help="output GGUF")
    p.add_argument("type", type=_outtype, metavar="TYPE", help=f"one of {', '.join(OUTTYPE_CHOICES)}")
    _common(p)
    p.set_defaults(func=_run_quantize)
    return p


def main(argv=None) -> int:
    """Standalone entry (python -m diffgemma_cpp.convert / convert/convert_hf_to_gguf.py): the convert command."""
    import logging

    from ..errors import DiffGemmaError

    parser = argparse.ArgumentParser(prog="convert_hf_to_gguf")
    sub = parser.add_subparsers(dest="command")
    add_convert_parser(sub)
    add_quantize_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("convert", "quantize", "-h", "--help"):
        argv = ["convert"] + argv
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except DiffGemmaError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert: interrupted; no output written", file=sys.stderr)
        return 130
