"""`diffgemma-cpp rpc-server`: serve this machine's devices to other diffgemma-cpp (or llama.cpp) processes over
ggml RPC, so one model's layers can be split across machines (`--rpc host:port` on the client).

ggml RPC has no authentication and no encryption: whoever reaches the port can read and write the served
device's memory and run graphs on it. The server therefore binds 127.0.0.1 by default and refuses any other
address without --allow-remote; reach it from another machine through an SSH tunnel
(`ssh -N -L 50052:127.0.0.1:50052 gpu-box` on the client, then `--rpc 127.0.0.1:50052`).
"""
from __future__ import annotations

import argparse
import sys

from ._native import check, ffi, lib
from .errors import InvalidArgumentError

__all__ = ["register", "serve"]

WARNING = ("ggml RPC has NO authentication and NO encryption: anyone who reaches this port can read and write "
           "the served device's memory and run code-like graphs on it. Keep it on 127.0.0.1 behind an SSH tunnel, "
           "or on a private network you trust.")


def serve(host: str = "127.0.0.1", port: int = 50052, devices: str | None = None, n_threads: int | None = None,
          allow_remote: bool = False) -> None:
    """Serves until the process is stopped; raises on an error (a non-loopback host without allow_remote, a port in
    use, a ggml without RPC)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"port must be in 1..65535, got {port!r}")
    scope = "loopback only" if host.startswith("127.") or host == "localhost" else "REACHABLE FROM THE NETWORK"
    print(f"diffgemma-cpp rpc-server on {host}:{port} ({scope}). WARNING: {WARNING}", file=sys.stderr, flush=True)
    dev = ffi.new("char[]", devices.encode()) if devices else ffi.NULL
    check(lib.diffgemma_rpc_serve(host.encode(), port, dev, n_threads or 0, int(allow_remote)))


def _cmd(args) -> int:
    serve(args.host, args.port, args.device, args.threads, args.allow_remote)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "rpc-server", help="serve this machine's devices to other machines over ggml RPC (unauthenticated!)",
        description="Serve this machine's GPUs (or its CPU) to diffgemma-cpp clients started with --rpc HOST:PORT. "
                    + WARNING + " Without --allow-remote only 127.0.0.0/8 addresses are accepted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (loopback unless --allow-remote)")
    p.add_argument("-p", "--port", type=int, default=50052, help="TCP port")
    p.add_argument("-d", "--device", default=None,
                   help="ggml devices to serve, comma-separated (CUDA0,CUDA1); default: every GPU, else the CPU")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads for a served CPU (default: all cores)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host. DANGEROUS: anyone reaching the port controls the device")
    p.set_defaults(func=_cmd)
