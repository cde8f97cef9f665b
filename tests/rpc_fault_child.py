"""Run by tests/test_rpc.py in a child process: a model on ggml RPC servers whose last server is killed (or
stopped: SIGSTOP, a server that hangs) in the middle of a canvas. A child, because registering a server cannot be undone in a process, and because the point is that
the process survives: had ggml's abort() gone through, this child would die of SIGABRT instead of printing JSON.

    python tests/rpc_fault_child.py MODEL.gguf N_SERVERS kill|stop
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import rpc_servers  # noqa: E402

from diffgemma_cpp import Model, errors  # noqa: E402


def timed_error(fn) -> dict:
    t0 = time.monotonic()
    try:
        fn()
    except errors.DiffGemmaError as e:
        return {"type": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t0}
    return {"type": None, "message": "", "seconds": time.monotonic() - t0}


def receive_timeouts_to(port: int) -> list:
    """SO_RCVTIMEO, in seconds, of this process's sockets connected to 127.0.0.1:port (the timeout rpc.h set)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as s:  # a duplicate: closing it leaves ggml's socket open
                if s.family != socket.AF_INET or s.getpeername()[1] != port:
                    continue
                sec, usec = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
                found.append(sec + usec / 1e6)
        except OSError:
            continue  # closed meanwhile, or not connected
    return found


def main() -> int:
    path, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = {}
    with rpc_servers.servers(n) as (endpoints, procs):
        split = dict(tensor_split=[1] * n) if n > 1 else {}
        m = Model(path, n_threads=2, n_gpu_layers=-1, rpc_servers=endpoints, **split)
        prompt = [2, 5, 9, 11]
        before = m.generate_ids(prompt, max_new_tokens=m.canvas_length, steps=4, seed=1)
        killed = {}

        def on_step(step, n_steps, canvas):
            if step == 1 and not killed:  # mid-canvas: the first step's pass ran on the server
                if how == "kill":
                    rpc_servers.stop(procs[-1])
                else:  # alive but silent: only the socket timeouts (rpc.h) end the wait
                    out["receive_timeouts_s"] = receive_timeouts_to(int(endpoints[-1].rsplit(":", 1)[1]))
                    os.kill(procs[-1].pid, signal.SIGSTOP)
                killed["at"] = time.monotonic()

        t0 = time.monotonic()
        first = timed_error(lambda: m.generate_ids(prompt, max_new_tokens=m.canvas_length, steps=4, seed=1,
                                                   on_step=on_step))
        first["seconds_after_kill"] = time.monotonic() - killed.get("at", t0)
        out["killed_mid_canvas"] = bool(killed)
        out["first"] = first
        out["second"] = timed_error(lambda: m.decoder_logits(list(range(3, 3 + m.canvas_length))))
        t1 = time.monotonic()
        m.close()
        out["close_seconds"] = time.monotonic() - t1
        out["tokens_before"] = len(before)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
