"""ggml RPC as the distributed engine (issue 15): layers on `diffgemma-cpp rpc-server` processes on 127.0.0.1.

Needs a ggml built with RPC (scripts/build_ggml.sh rpc; .ci/run's RPC step); without one the tests that need a
server skip, saying so. The model-level runs happen in child processes (bench/rpc_bench.py,
tests/rpc_fault_child.py): a server's devices stay registered in a process for its lifetime, and a fault that got
past our guards would kill the process it happens in. The probe faults (nothing registered) run here.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engine_fixtures as fx
import diffgemma_cpp
from diffgemma_cpp import Model, errors
from diffgemma_cpp.rpc_server import serve

ROOT = Path(__file__).resolve().parents[1]
needs_rpc = pytest.mark.skipif(not diffgemma_cpp.rpc_available(),
                               reason="this ggml has no RPC backend (scripts/build_ggml.sh rpc builds one; .ci/run does)")
CHILD_TIMEOUT_S = 900  # a hang guard for the child processes, far above their run time


class FakeServer:
    """A TCP listener on 127.0.0.1 that is not a ggml RPC server: it answers `reply` (or stays silent)."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.conns = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.sock.fileno() < 0:
                    return
                continue
            self.conns.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def _load_error(endpoint: str) -> tuple[str, float]:
    path = fx.gguf("wide:trained", "f32")
    t0 = time.monotonic()
    with pytest.raises(errors.BackendError) as e:
        Model(path, n_gpu_layers=-1, rpc_servers=[endpoint])
    return str(e.value), time.monotonic() - t0


@needs_rpc
def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg, seconds = _load_error(f"127.0.0.1:{port}")
    print(f"unreachable: {seconds:.2f} s: {msg}")
    assert f"RPC server 127.0.0.1:{port} is unreachable: Connection refused" in msg and "rpc-server" in msg


@needs_rpc
def test_garbage_on_the_port_is_a_clear_error():
    fake = FakeServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        msg, seconds = _load_error(fake.endpoint)
    finally:
        fake.close()
    print(f"garbage: {seconds:.2f} s: {msg}")
    assert "answered something that is not a ggml RPC hello" in msg and "another service" in msg


@needs_rpc
def test_a_silent_port_is_a_clear_error_not_a_hang():
    fake = FakeServer(None)
    try:
        msg, seconds = _load_error(fake.endpoint)
    finally:
        fake.close()
    print(f"silent: {seconds:.2f} s: {msg}")
    assert "did not answer the ggml RPC hello within 5 s" in msg


def test_bad_endpoints_are_rejected():
    for bad, needle in (("localhost", "is not host:port"), ("127.0.0.1:0", "port must be a number in 1..65535"),
                        ("127.0.0.1:http", "port must be a number")):
        with pytest.raises(errors.DiffGemmaError, match=needle):
            Model(fx.gguf("wide:trained", "f32"), n_gpu_layers=-1, rpc_servers=[bad])


def test_the_server_refuses_a_public_address_without_the_flag(capsys):
    with pytest.raises(errors.InvalidArgumentError) as e:
        serve("0.0.0.0", 50052)
    assert "refusing to serve on 0.0.0.0: ggml RPC has no authentication" in str(e.value)
    assert "--allow-remote" in str(e.value)
    assert "NO authentication" in capsys.readouterr().err  # the start line says it too


def test_the_server_help_warns():
    out = subprocess.run([sys.executable, "-m", "diffgemma_cpp", "rpc-server", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    assert "NO authentication" in out and "--allow-remote" in out and "127.0.0.1" in out


@needs_rpc
@pytest.mark.parametrize("n_servers,how", [(1, "kill"), (2, "kill"), (1, "stop")])
def test_a_server_lost_mid_canvas_fails_the_call_and_the_model_closes(n_servers, how):
    """SIGKILL of a server between two denoising steps (or SIGSTOP: a server that hangs, ended by the socket
    timeout): the generation raises BackendError (no abort(), no endless wait), the next call fails the same way,
    and closing the model returns (bench/README.md has the seconds). The stopped server's error must come from
    the pass-scaled timeout (rpc.h: 4 x the slowest pass, at least 8 s), not the 30 s one of a process that has
    run no pass yet: the child reads SO_RCVTIMEO of its sockets to that server just before stopping it (the seconds
    it took are printed, not asserted: no timing assertions in tests)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "rpc_fault_child.py"), str(fx.gguf("wide:trained", "f32")),
                           str(n_servers), how], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    assert out["killed_mid_canvas"] and out["tokens_before"] > 0
    for call in ("first", "second"):
        assert out[call]["type"] == "BackendError", out
        assert "connection to an RPC server was lost" in out[call]["message"]
    if how == "stop":  # the pass-scaled timeout was in force on the stopped server's sockets, not the 30 s one
        assert out["receive_timeouts_s"] and all(8 <= t < 30 for t in out["receive_timeouts_s"]), out


@needs_rpc
def test_logits_and_tokens_over_one_and_two_servers_match_the_host(tmp_path):
    """bench/rpc_bench.py: every placement over 1 and 2 servers (F32, F16, Q8_0 sudoku and the trained-like test
    model) within NMSE 1e-4 of all-host, and the same committed tokens for the same seed on 6 puzzles."""
    extra = [str(fx.gguf("wide:trained", "f32")), str(fx.gguf("wide:trained", "f16"))]
    cmd = [sys.executable, str(ROOT / "bench" / "rpc_bench.py"), "--out", str(tmp_path)]
    for path in extra:
        cmd += ["--model", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    print(proc.stdout[-6000:])
    result = json.loads((tmp_path / "rpc_bench.json").read_text())
    assert proc.returncode == 0 and not result["failures"], (result.get("error"), result["failures"], proc.stderr[-3000:])
    assert len(result["logits"]) == 10 * 5  # placements x (sudoku f32, f16, q8_0, test model f32, f16)
    for run in result["generation"].values():
        assert run["identical"] == 6
