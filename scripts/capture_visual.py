#!/usr/bin/env python3
"""Capture `diffgemma-cpp run --visual` frame by frame, as a real terminal (tmux) shows it.

    python scripts/capture_visual.py -o frames.txt -- -m model.gguf -p "Why is the sky blue?" -n 256 --seed 1

Runs the command under script(1) inside a detached tmux session (a real pseudo-terminal), records every byte
it writes, then replays the recording into fresh tmux panes cut after each denoising step and saves each
pane as a frame. The frames show the canvas refining step by step and the committed text staying put.
Needs tmux and script (util-linux).
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_END = re.compile(rb"step \d+/\d+\]\x1b\[0m")


def tmux(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], **kw)


def record(command: list[str], typescript: Path, width: int, height: int, timeout: float) -> None:
    session = "dg-capture-run"
    tmux("kill-session", "-t", session, stderr=subprocess.DEVNULL)
    done = typescript.with_suffix(".done")
    inner = f"script -q -c {shlex.quote(shlex.join(command))} {shlex.quote(str(typescript))}; touch {done}"
    tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), inner, check=True)
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline:
            tmux("kill-session", "-t", session, stderr=subprocess.DEVNULL)
            raise SystemExit(f"capture_visual: the command did not finish within {timeout:.0f} s")
        time.sleep(0.2)
    tmux("kill-session", "-t", session, stderr=subprocess.DEVNULL)


def strip_script_header(raw: bytes) -> bytes:
    # script(1) writes a "Script started on ..." line (and a closing one) into the typescript.
    if raw.startswith(b"Script started"):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return re.sub(rb"\r?\nScript done on .*$", b"", raw, flags=re.S)


def frames(raw: bytes, workdir: Path, width: int, height: int, max_frames: int) -> list[str]:
    cuts = [m.end() for m in STEP_END.finditer(raw)]
    if len(cuts) > max_frames:  # keep the first and last steps and an even spread in between
        keep = {round(i * (len(cuts) - 1) / (max_frames - 1)) for i in range(max_frames)}
        cuts = [c for i, c in enumerate(cuts) if i in keep]
    shown = []
    session = "dg-capture-replay"
    for k, end in enumerate(cuts + [len(raw)]):
        part = workdir / f"prefix_{k}"
        part.write_bytes(raw[:end])
        tmux("kill-session", "-t", session, stderr=subprocess.DEVNULL)
        tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", str(height),
             f"cat {shlex.quote(str(part))}; sleep 60", check=True)
        time.sleep(0.3)
        pane = tmux("capture-pane", "-p", "-t", session, capture_output=True, text=True).stdout.rstrip()
        label = "final screen" if k == len(cuts) else f"frame {k + 1}"
        shown.append(f"===== {label} =====\n{pane}\n")
    tmux("kill-session", "-t", session, stderr=subprocess.DEVNULL)
    return shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="visual_frames.txt", help="frames file to write")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--height", type=int, default=30)
    parser.add_argument("--max-frames", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--exe", default=shutil.which("diffgemma-cpp") or "diffgemma-cpp")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of `diffgemma-cpp run`")
    args = parser.parse_args()
    for tool in ("tmux", "script"):
        if shutil.which(tool) is None:
            print(f"capture_visual: {tool} is not installed", file=sys.stderr)
            return 2
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    if "--visual" not in run_args:
        run_args.append("--visual")
    # An idle session keeps the tmux server up between the short-lived sessions below.
    tmux("new-session", "-d", "-s", "dg-capture-anchor", "sleep 3600", check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shown = capture(run_args, Path(tmp), args)
    finally:
        tmux("kill-session", "-t", "dg-capture-anchor", stderr=subprocess.DEVNULL)
    Path(args.output).write_text("\n".join(shown), encoding="utf-8")
    print(f"wrote {len(shown)} frames to {args.output}")
    return 0


def capture(run_args: list[str], workdir: Path, args: argparse.Namespace) -> list[str]:
    typescript = workdir / "run.typescript"
    record([args.exe, "run", *run_args], typescript, args.width, args.height, args.timeout)
    raw = strip_script_header(typescript.read_bytes())
    return frames(raw, workdir, args.width, args.height, args.max_frames)


if __name__ == "__main__":
    sys.exit(main())
