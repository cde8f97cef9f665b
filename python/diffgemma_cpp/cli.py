"""The `diffgemma-cpp` command line (also `python -m diffgemma_cpp`).

Each subcommand lives in the module that owns the feature; this file only wires them together.
"""
import argparse
import logging
import sys

from . import __version__, gpus, system_info
from .errors import DiffGemmaError


def _cmd_info(args) -> int:
    print(system_info())
    if args.rpc_servers:
        from ._native import check, lib

        check(lib.diffgemma_rpc_add_servers(args.rpc_servers.encode()))
    for i, gpu in enumerate(gpus()):
        print(f"GPU {i}: {gpu}")
    if args.model:
        from .gguf_info import format_summary, read_summary

        print(format_summary(read_summary(args.model)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgemma-cpp", description="Run DiffusionGemma locally on ggml.")
    parser.add_argument("--version", action="version", version=f"diffgemma-cpp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output of the C library")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="system info, and a model's GGUF metadata with -m")
    info.add_argument("-m", "--model", help="GGUF file to describe")
    info.add_argument("--rpc", dest="rpc_servers", default=None, metavar="HOST:PORT,...",
                      help="also list the devices of these ggml RPC servers")
    info.set_defaults(func=_cmd_info)

    from .cli_text import add_text_commands

    add_text_commands(sub)  # run, chat, serve

    from .convert.cli import add_convert_parser, add_quantize_parser

    add_convert_parser(sub)
    add_quantize_parser(sub)

    from .demo import register as add_demo_parser

    add_demo_parser(sub)  # sudoku demo on the bundled model

    from .bench import add_bench_parser

    add_bench_parser(sub)

    from .rpc_server import register as add_rpc_server_parser

    add_rpc_server_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DiffGemmaError as exc:
        print(f"diffgemma-cpp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffgemma-cpp: interrupted", file=sys.stderr)
        return 130
