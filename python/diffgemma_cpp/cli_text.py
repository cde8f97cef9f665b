"""The text subcommands of ``diffgemma-cpp``: ``run``, ``chat`` and ``serve``.

    diffgemma-cpp run -m model.gguf -p "Why is the sky blue?" -n 256 --seed 1 --visual
    diffgemma-cpp chat -m model.gguf --system "Be brief."
    diffgemma-cpp serve -m model.gguf --host 127.0.0.1 --port 8080

``run`` wraps the prompt in the model's chat template as one user turn (``--raw`` sends it as is).
Ctrl-C during a generation cancels it within one denoising step; a second Ctrl-C quits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from typing import Any, Iterator

__all__ = ["add_text_commands", "add_offload_options", "offload_options"]


# ---- model loading and shared options ---------------------------------------------------------


def add_offload_options(parser: argparse.ArgumentParser) -> None:
    """-ngl, -mg, -ts, -dev, --rpc, --cpu-moe, --n-cpu-moe, --fit (the Model arguments of the same names; unset =
    the default)."""
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=None,
                        help="layers to offload, counted from the last (-1 = all and the head; default 0)")
    parser.add_argument("-mg", "--main-gpu", type=int, default=None,
                        help="put every offloaded layer on this device (index in `diffgemma-cpp info`); default: "
                             "share them over the devices")
    parser.add_argument("-ts", "--tensor-split", default=None, metavar="N0,N1,...",
                        help="each device's share of the offloaded layers, e.g. 3,1 (default: by free memory)")
    parser.add_argument("-dev", "--device", dest="devices", default=None, metavar="DEV1,DEV2",
                        help="the devices to offload to, in layer order (ggml names: CUDA0, Vulkan0, RPC0; default all)")
    parser.add_argument("--rpc", dest="rpc_servers", default=None, metavar="HOST:PORT,...",
                        help="use the devices of these ggml RPC servers (`diffgemma-cpp rpc-server`; no "
                             "authentication: loopback, an SSH tunnel or a private network only)")
    parser.add_argument("--cpu-moe", action="store_true", default=None,
                        help="keep every layer's expert weights in host memory (runs the MoE on the CPU)")
    parser.add_argument("--n-cpu-moe", type=int, default=None, metavar="N",
                        help="keep the expert weights of the first N layers in host memory")
    parser.add_argument("--fit", action="store_true", default=None,
                        help="if the offload asked for does not fit the GPU, keep more experts in host memory "
                             "(then offload fewer layers) until it does, instead of failing")


def offload_options(args: argparse.Namespace) -> dict:
    """The offload options given on the command line, as Model keyword arguments."""
    names = ("n_gpu_layers", "main_gpu", "tensor_split", "devices", "rpc_servers", "cpu_moe", "n_cpu_moe", "fit")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="GGUF model file")
    add_offload_options(parser)
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="CPU threads at most (default: one per physical core); each pass uses only the CPUs "
                             "free at that moment")
    parser.add_argument("--fixed-threads", action="store_true", default=None,
                        help="run exactly --threads threads on every pass, even above the CPUs we may use or "
                             "while other programs keep them busy")
    parser.add_argument("-c", "--ctx-size", type=int, default=None, help="context size in tokens (default: model's)")
    parser.add_argument("--sc-top-k", type=int, default=None, metavar="K",
                        help="approximate self-conditioning with each position's K most probable tokens "
                             "(faster; default 0 = exact)")
    parser.add_argument("--mmproj", default=None, metavar="FILE",
                        help="the vision projector GGUF (mmproj-*.gguf), so the model takes images")


def _add_image_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--image", action="append", default=None, metavar="PATH", help=help_text)


def _image_parts(args: argparse.Namespace) -> list[dict]:
    """The --image files as content parts, decoded now (a bad file fails before the model loads)."""
    from .images import load_image

    return [{"type": "image", "image": load_image(path)} for path in args.image or []]


def _user_message(text: str, parts: list[dict]) -> dict:
    """A user turn: plain text, or the images first and then the text (as Gemma-4's examples place them)."""
    if not parts:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--n-predict", type=int, default=256,
                        help="tokens to generate, rounded up to whole canvases (default 256)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--steps", type=int, default=None, help="max denoising steps per canvas (default: model's)")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop before this text (repeatable)")
    parser.add_argument("--think", action="store_true", help="enable the model's thinking channel")
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="Jinja chat template file overriding the GGUF's")


def _load_model(args: argparse.Namespace) -> Any:
    """Open the model with the options given (options left unset keep the library defaults)."""
    from . import Model  # the engine; imported here so `--help` works without loading anything

    names = {"n_threads": "threads", "fixed_threads": "fixed_threads", "n_ctx": "ctx_size", "sc_top_k": "sc_top_k",
             "mmproj": "mmproj"}
    options = {option: getattr(args, attr, None) for option, attr in names.items()}
    return Model(args.model, **offload_options(args), **{k: v for k, v in options.items() if v is not None})


def _read_template(args: argparse.Namespace) -> str | None:
    if not args.chat_template:
        return None
    with open(args.chat_template, encoding="utf-8") as f:
        return f.read()


@contextlib.contextmanager
def _cancel_on_sigint(model: Any) -> Iterator[None]:
    """First Ctrl-C cancels the running generation (it ends within one denoising step); a second one quits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []

    def handler(signum: int, frame: Any) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        print("\n^C cancelling (press again to quit)", file=sys.stderr, flush=True)
        model.cancel()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _friendly_errors(command: Any) -> Any:
    """Report bad templates, unreadable files and bad arguments as one line, not a traceback."""
    from .chat import ChatTemplateError
    from .errors import DiffGemmaError

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except DiffGemmaError:
            raise  # cli.main reports these
        except (ChatTemplateError, OSError, ValueError, TypeError) as exc:
            print(f"diffgemma-cpp {args.command}: error: {exc}", file=sys.stderr)
            return 1

    wrapped.__name__ = command.__name__
    return wrapped


def _generation_kwargs(args: argparse.Namespace) -> dict:
    return {"max_tokens": args.n_predict, "seed": args.seed, "steps": args.steps, "stop": args.stop}


def _stats(usage: dict, seconds: float, finish: str) -> str:
    tokens = usage.get("completion_tokens", 0)
    rate = tokens / seconds if seconds > 0 else 0.0
    return (f"[{finish}] {usage.get('canvases', '?')} canvas(es), {usage.get('denoising_steps', '?')} steps, "
            f"{tokens} tokens in {seconds:.2f} s ({rate:.1f} tok/s), prompt {usage.get('prompt_tokens', '?')} tokens")


def _stream_to_terminal(chunks: Iterator[dict], view: Any, key: str) -> tuple[str, dict, str]:
    """Print each committed canvas's text; return (text, usage, finish_reason)."""
    text, usage, finish = "", {}, "stop"
    for chunk in chunks:
        choice = chunk["choices"][0]
        piece = choice["text"] if key == "text" else choice["delta"].get("content", "")
        text += piece
        if view is not None:
            view.commit(piece)
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
        if choice["finish_reason"]:
            finish, usage = choice["finish_reason"], chunk.get("usage", {})
    return text, usage, finish


def _on_step(view: Any) -> Any:
    if view is not None:
        return view.step
    return lambda step, total, text: None  # still gives the interpreter a moment to run the Ctrl-C handler


# ---- run --------------------------------------------------------------------------------------


def _canvas_view(args: argparse.Namespace) -> Any:
    """The live canvas of --visual, on a terminal only: redirected output gets plain text, no cursor codes."""
    from .visual import CanvasView

    return CanvasView() if args.visual and sys.stdout.isatty() else None


def _cmd_run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            print("diffgemma-cpp run: error: give a prompt with -p, or pipe one on stdin", file=sys.stderr)
            return 2
        prompt = sys.stdin.read()
    parts = _image_parts(args)
    model = _load_model(args)
    view = _canvas_view(args)
    kwargs = dict(_generation_kwargs(args), stream=True, on_step=_on_step(view))
    start = time.perf_counter()
    with _cancel_on_sigint(model):
        if args.raw:  # the prompt holds the image markers itself (Gemma-4: <|image|>), one per --image
            chunks = model.create_completion(prompt, images=[part["image"] for part in parts], **kwargs)
            key = "text"
        else:
            chunks = model.create_chat_completion([_user_message(prompt, parts)],
                                                  chat_template=_read_template(args),
                                                  enable_thinking=args.think or None, **kwargs)
            key = "delta"
        _, usage, finish = _stream_to_terminal(chunks, view, key)
    if view is not None:
        view.close()
    else:
        print()
    print(_stats(usage, time.perf_counter() - start, finish), file=sys.stderr)
    return 130 if finish == "cancelled" else 0


# ---- chat -------------------------------------------------------------------------------------


CHAT_HELP = ("commands: /exit (or Ctrl-D) quits, /reset forgets the conversation, /image PATH shows an image with "
             "the next message, Ctrl-C stops an answer")


def _cmd_chat(args: argparse.Namespace) -> int:
    parts = _image_parts(args)  # shown with the first message
    model = _load_model(args)
    template = _read_template(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = list(system)
    print(CHAT_HELP, file=sys.stderr)
    while True:
        print("> ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print()
            return 0
        if not line:  # EOF
            print()
            return 0
        user = line.rstrip("\n")
        if user.strip() == "/exit":
            return 0
        if user.strip() == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if user.strip().startswith("/image "):
            from .errors import ImageError
            from .images import load_image

            try:
                parts.append({"type": "image", "image": load_image(user.strip()[len("/image "):].strip())})
                print(f"(image {len(parts)} goes with the next message)", file=sys.stderr)
            except ImageError as exc:
                print(f"diffgemma-cpp chat: {exc}", file=sys.stderr)
            continue
        if not user.strip():
            continue
        history.append(_user_message(user, parts))
        parts = []
        view = _canvas_view(args)
        start = time.perf_counter()
        with _cancel_on_sigint(model):
            chunks = model.create_chat_completion(history, chat_template=template, stream=True,
                                                  enable_thinking=args.think or None, on_step=_on_step(view),
                                                  **_generation_kwargs(args))
            answer, usage, finish = _stream_to_terminal(chunks, view, "delta")
        if view is not None:
            view.close()
        else:
            print()
        if args.verbose_stats:
            print(_stats(usage, time.perf_counter() - start, finish), file=sys.stderr)
        history.append({"role": "assistant", "content": answer})


# ---- serve ------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import log as server_log
    from .server import serve

    server_log.setLevel(logging.INFO)  # the start line and one access line per request, whatever the CLI's level
    model = _load_model(args)
    serve(model, args.host, args.port, model_name=args.alias, max_body_bytes=args.max_body_bytes,
          max_queue=args.max_queue)
    return 0


# ---- wiring -----------------------------------------------------------------------------------


def add_text_commands(subparsers: Any) -> None:
    """Add ``run``, ``chat`` and ``serve`` to an argparse subparsers object (``cli.py`` calls this)."""
    run = subparsers.add_parser("run", help="generate text for one prompt",
                                description="Generate text for one prompt, streamed one canvas at a time.")
    _add_model_options(run)
    run.add_argument("-p", "--prompt", default=None, help="the prompt (default: read stdin)")
    _add_sampling_options(run)
    run.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    _add_image_option(run, "an image to show the model with the prompt (repeatable; needs --mmproj)")
    run.add_argument("--visual", action="store_true", help="watch each canvas denoise live (on a terminal; plain text when redirected)")
    run.set_defaults(func=_friendly_errors(_cmd_run))

    chat = subparsers.add_parser("chat", help="interactive multi-turn chat",
                                 description="Interactive chat. " + CHAT_HELP + ".")
    _add_model_options(chat)
    _add_sampling_options(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    _add_image_option(chat, "an image to show the model with the first message (repeatable; needs --mmproj)")
    chat.add_argument("--visual", action="store_true",
                      help="watch each canvas denoise live (on a terminal; plain text when redirected)")
    chat.add_argument("--verbose-stats", action="store_true", help="print timing after each answer")
    chat.set_defaults(func=_friendly_errors(_cmd_chat))

    from .server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE

    srv = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server",
                                description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health.")
    _add_model_options(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    srv.add_argument("--alias", default=None, help="model id reported by /v1/models (default: file name)")
    srv.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                     help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES})")
    srv.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                     help=f"requests allowed to wait for the model (default {DEFAULT_MAX_QUEUE})")
    srv.set_defaults(func=_friendly_errors(_cmd_serve))
