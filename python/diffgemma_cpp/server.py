"""An OpenAI-compatible HTTP server for one model, on the standard library only.

    diffgemma-cpp serve -m model.gguf --host 127.0.0.1 --port 8080

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``"stream": true`` sends
server-sent events, one per committed canvas, then ``data: [DONE]``), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``. The ``/v1`` prefix is optional.

Requests queue: the model runs one generation at a time behind a lock, so concurrent clients wait their
turn (at most ``max_queue`` waiting; more get ``503``). Bodies over ``max_body_bytes`` get ``413``; a
malformed body gets ``400``; a well-formed body with bad fields gets ``422``; unknown paths ``404``;
a wrong method ``405``; an image we refuse (not a data: URL, undecodable, too many pixels, or a model
without a vision projector) ``400``. Every error is OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
A client that disconnects mid-stream stops its generation at the next canvas.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from .chat import ChatTemplateError
from .errors import ContextOverflowError, DiffGemmaError, ImageError, InvalidArgumentError, ModelBusyError
from .openai_params import RequestError, chat_kwargs, completion_kwargs

__all__ = ["CompletionServer", "make_server", "serve"]

log = logging.getLogger("diffgemma_cpp.server")

DEFAULT_MAX_BODY_BYTES = 20 << 20  # room for a few base64 (data: URL) photos
DEFAULT_MAX_QUEUE = 32
SOCKET_TIMEOUT_S = 60.0  # a client that stalls reading or writing this long is dropped


class CompletionServer(ThreadingHTTPServer):
    """The HTTP server plus the one model it serves and the queue in front of it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: Any, *, model_name: str | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        super().__init__(address, _Handler)
        self.model = model
        self.model_name = model_name or (model._model_name() if hasattr(model, "_model_name") else "diffgemma")
        self.max_body_bytes = max_body_bytes
        self.max_queue = max_queue
        self.created = int(time.time())
        self._model_lock = threading.Lock()
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.stopping = threading.Event()

    def claim_model(self) -> bool:
        """Wait for the model; False if the queue is full or the server is stopping."""
        with self._waiting_lock:
            if self._waiting >= self.max_queue:
                return False
            self._waiting += 1
        try:
            while not self.stopping.is_set():
                if self._model_lock.acquire(timeout=0.25):
                    return True
            return False
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def release_model(self) -> None:
        self._model_lock.release()

    def stop(self) -> None:
        """Stop accepting requests, cancel the running generation, and close. Safe from any thread."""
        self.stopping.set()
        cancel = getattr(self.model, "cancel", None)
        if cancel is not None:
            cancel()
        threading.Thread(target=self.shutdown, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "diffgemma-cpp"
    timeout = SOCKET_TIMEOUT_S
    server: CompletionServer

    # ---- routing ------------------------------------------------------------------------------

    def _route(self) -> tuple[str, dict[str, Callable[[], None]]]:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path.startswith("/v1/"):
            path = path[3:]
        if path.startswith("/models/") and len(path) > len("/models/"):
            return path, {"GET": lambda: self._get_model(path[len("/models/"):])}
        return path, {
            "/health": {"GET": self._get_health},
            "/models": {"GET": self._get_models},
            "/completions": {"POST": lambda: self._post_generation(completion_kwargs, "create_completion")},
            "/chat/completions": {"POST": lambda: self._post_generation(chat_kwargs, "create_chat_completion")},
        }.get(path, {})

    def _dispatch(self) -> None:
        self._body_read = False
        self._status: int | None = None
        self._tokens: int | None = None  # completion tokens sent, where a generation ran
        started = time.perf_counter()
        try:
            self._handle()
        finally:
            tokens = "-" if self._tokens is None else self._tokens
            log.info("%s %s %s %s tokens %.0f ms", self.command, self.path, self._status or "-", tokens,
                     (time.perf_counter() - started) * 1e3)

    def _handle(self) -> None:
        try:
            path, methods = self._route()
            if not methods:
                self._send_error(404, f"no such endpoint: {self.command} {path}", "not_found_error")
            elif self.command not in methods:
                allowed = ", ".join(methods)
                self._send_error(405, f"{path} accepts {allowed}, not {self.command}", "invalid_request_error",
                                 headers={"Allow": allowed})
            else:
                methods[self.command]()
        except RequestError as exc:
            self._send_error(exc.status, str(exc), exc.error_type, param=exc.param, code=exc.code)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - one bad request must never take the server down
            log.exception("unexpected error serving %s %s", self.command, self.path)
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code  # for the access-log line _dispatch writes when the request is done
        super().send_response(code, message)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _dispatch logs one line per request, with its tokens and time, when it is done

    def log_message(self, fmt: str, *args: Any) -> None:  # http.server's own complaints (bad request lines)
        log.info("%s - %s", self.address_string(), fmt % args)

    # ---- responses ----------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, status: int, message: str, error_type: str, *, param: str | None = None,
                    code: str | None = None, headers: dict | None = None) -> None:
        self._discard_unread_body()
        self._send_json(status, {"error": {"message": message, "type": error_type, "param": param,
                                           "code": code if code is not None else HTTPStatus(status).phrase}},
                        headers)

    def _discard_unread_body(self) -> None:
        # An error sent before the body was read would leave it in the socket as the "next request".
        if not getattr(self, "_body_read", False):
            self.close_connection = True

    # ---- request body -------------------------------------------------------------------------

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise RequestError("chunked request bodies are not supported; send Content-Length", status=411)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise RequestError("a Content-Length header is required", status=411)
        try:
            length = int(length_text)
        except ValueError:
            raise RequestError(f"bad Content-Length: {length_text!r}", status=400) from None
        if length < 0:
            raise RequestError(f"bad Content-Length: {length_text!r}", status=400)
        if length > self.server.max_body_bytes:
            raise RequestError(f"request body of {length} bytes exceeds the limit of "
                               f"{self.server.max_body_bytes} bytes", status=413)
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) != length:
            raise RequestError("request body ended before Content-Length bytes", status=400)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"request body is not valid JSON: {exc}", status=400) from None

    # ---- endpoints ----------------------------------------------------------------------------

    def _get_health(self) -> None:
        self._send_json(200, {"status": "ok"})

    def _model_card(self) -> dict:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created,
                "owned_by": "diffgemma-cpp"}

    def _get_models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self._model_card()]})

    def _get_model(self, model_id: str) -> None:
        if model_id != self.server.model_name:
            raise RequestError(f"model {model_id!r} not found; this server serves {self.server.model_name!r}",
                               status=404, error_type="not_found_error", param="model")
        self._send_json(200, self._model_card())

    def _post_generation(self, parse: Callable[[Any], dict], method: str) -> None:
        kwargs = parse(self._read_json())
        stream = kwargs["stream"]
        if not self.server.claim_model():
            raise RequestError("the server is busy (request queue full) or shutting down; retry later",
                               status=503, error_type="server_error")
        try:
            try:
                result = getattr(self.server.model, method)(**kwargs)
            except (RequestError, BrokenPipeError, ConnectionResetError):
                raise
            except (DiffGemmaError, ChatTemplateError, ValueError, TypeError) as exc:
                raise _request_error(exc) from exc
            if stream:
                self._send_events(result)
            else:
                self._tokens = result.get("usage", {}).get("completion_tokens")
                self._send_json(200, result)
        finally:
            self.server.release_model()

    def _send_events(self, chunks: Iterator[dict]) -> None:
        # Close-delimited event stream: no Content-Length, the connection ends with the stream.
        self.close_connection = True
        started = False
        try:
            for chunk in chunks:
                if not started:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    started = True
                if "usage" in chunk:
                    self._tokens = chunk["usage"].get("completion_tokens")
                self._write_event(json.dumps(chunk, ensure_ascii=False))
            self._write_event("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.info("client went away mid-stream; generation stopped")
        except DiffGemmaError as exc:
            if not started:  # the engine checks some things when the generation begins, at the first chunk
                raise _request_error(exc) from exc
            self._write_event(json.dumps({"error": {"message": str(exc), "type": "server_error",
                                                    "param": None, "code": None}}))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _write_event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
        self.wfile.flush()


def _request_error(exc: Exception) -> RequestError:
    """The HTTP answer to an error of the model call: the client's fault (400 / 422), a busy model (503), ours (500)."""
    if isinstance(exc, ContextOverflowError):
        return RequestError(str(exc), status=400, code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return RequestError(str(exc), status=400, param="messages", code="invalid_image")
    if isinstance(exc, (ChatTemplateError, InvalidArgumentError, ValueError, TypeError)):
        return RequestError(str(exc), status=422)
    if isinstance(exc, ModelBusyError):  # someone used the model outside the server's queue
        return RequestError(str(exc), status=503, error_type="server_error")
    return RequestError(f"{type(exc).__name__}: {exc}", status=500, error_type="server_error")


def make_server(model: Any, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> CompletionServer:
    """Bind (port 0 picks a free one; see ``server.server_address``) without serving yet."""
    return CompletionServer((host, port), model, **options)


def serve(model: Any, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> None:
    """Serve until SIGINT/SIGTERM; then cancel the running generation and close cleanly."""
    server = make_server(model, host, port, **options)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: server.stop())
    host_shown, port_shown = server.server_address[:2]
    log.info("serving %s on http://%s:%d/v1 (Ctrl-C to stop)", server.model_name, host_shown, port_shown)
    try:
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
