"""ggml RPC servers for the tests: `diffgemma-cpp rpc-server` processes on 127.0.0.1, started on free ports and
always stopped (bounded waits). Shared by bench/rpc_bench.py and tests/test_rpc.py."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-server on port {port} exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"rpc-server on port {port} did not listen within {START_TIMEOUT_S} s")


def start_server(threads: int = 1) -> tuple[str, subprocess.Popen]:
    """One server serving this machine's CPU; returns its endpoint and process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "diffgemma_cpp", "rpc-server", "--port", str(port), "-t", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "DIFFGEMMA_TEST_GPU_MIB"})
    try:
        _wait_listening(port, proc, time.monotonic() + START_TIMEOUT_S)
    except BaseException:
        stop(proc)
        raise
    return f"127.0.0.1:{port}", proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # ggml's server loop has no clean exit
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def link_bytes(endpoints, sent: bool = False, received: bool = False) -> int:
    """Bytes this process has sent (acknowledged) and received on its TCP connections to `endpoints` (Linux
    TCP_INFO: tcpi_bytes_acked and tcpi_bytes_received, at offsets 120 and 128), i.e. ggml's RPC traffic; only
    one direction when `sent` or `received` says so."""
    both = not sent and not received
    import struct

    peers = {(h, int(p)) for h, p in (e.rsplit(":", 1) for e in endpoints)}
    total = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            s = socket.socket(fileno=fd)
        except OSError:  # not a socket: the duplicate must still be closed (it leaked here before, doubling the
            os.close(fd)  # process's files with every call)
            continue
        with s:
            try:
                if s.type != socket.SOCK_STREAM or s.getpeername()[:2] not in peers:
                    continue
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            except OSError:
                continue
            acked, received = struct.unpack_from("<QQ", info, 120)
            total += (acked if sent or both else 0) + (received if received or both else 0)
    return total


@contextlib.contextmanager
def servers(n: int, threads: int = 1):
    """n servers; yields (endpoints, processes)."""
    started = []
    try:
        for _ in range(n):
            started.append(start_server(threads))
        yield [e for e, _ in started], [p for _, p in started]
    finally:
        for _, p in started:
            stop(p)
