"""The OpenAI-compatible server, driven by the official openai client and by raw bad requests.

The model behind it is the fake engine (tests/_fake_engine.py); test_server_e2e (the lead's tiny
converted model) covers the same path with the real engine.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import socket
import threading
import time

import pytest

from _fake_engine import FakeModel
from diffgemma_cpp.server import make_server

openai = pytest.importorskip("openai")

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()
ANSWER = "Rayleigh scattering makes the sky blue. 🌍"


class Running:
    """A server on a free loopback port, served from a background thread."""

    def __init__(self, model, **options):
        self.model = model
        self.server = make_server(model, "127.0.0.1", 0, **options)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=20)

    def close(self):
        self.server.stop()
        self.thread.join(10)
        self.server.server_close()
        assert not self.thread.is_alive()

    def raw(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read(), response
        finally:
            conn.close()


@pytest.fixture
def running():
    server = Running(FakeModel(ANSWER, chat_template=GEMMA4_STYLE, canvas_length=8))
    yield server
    server.close()


# ---- with the official client -----------------------------------------------------------------


def test_models_and_health(running):
    models = running.client.models.list()
    assert [m.id for m in models.data] == ["fake-diffgemma.gguf"]
    assert running.client.models.retrieve("fake-diffgemma.gguf").id == "fake-diffgemma.gguf"
    status, body, _ = running.raw("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_chat_completion_non_streaming(running):
    out = running.client.chat.completions.create(
        model="fake-diffgemma.gguf", messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=64)
    assert out.choices[0].message.content == ANSWER
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == len(running.model.calls[0]["prompt_ids"])
    assert out.usage.completion_tokens == len(ANSWER.encode())


def test_chat_completion_streaming_one_event_per_canvas(running):
    stream = running.client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Why?"}], stream=True, max_tokens=256)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == ANSWER
    n_canvases = -(-(len(ANSWER.encode()) + 1) // 8)
    assert len(chunks) == n_canvases + 1
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_non_streaming_and_streaming(running):
    out = running.client.completions.create(model="x", prompt="The sky is", max_tokens=64, stop=["blue"])
    assert out.choices[0].text == "Rayleigh scattering makes the sky "
    assert out.choices[0].finish_reason == "stop"
    chunks = list(running.client.completions.create(model="x", prompt="The sky is", max_tokens=64, stream=True,
                                                    stop=["blue"]))
    assert "".join(c.choices[0].text for c in chunks) == "Rayleigh scattering makes the sky "


def test_diffusion_settings_and_thinking_via_extra_body(running):
    running.client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], seed=5,
        extra_body={"steps": 7, "t_max": 0.7, "stability_threshold": 2, "chat_template_kwargs": {"enable_thinking": True}})
    call = running.model.calls[0]
    assert (call["steps"], call["t_max"], call["stability_threshold"], call["seed"]) == (7, 0.7, 2, 5)
    assert "<|think|>" in running.model.detokenize(call["prompt_ids"]).decode()


def test_response_format_text_is_accepted(running):
    out = running.client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}],
                                                 response_format={"type": "text"}, max_tokens=64)
    assert out.choices[0].message.content == ANSWER


def test_client_sees_clear_errors(running):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        running.client.chat.completions.create(model="x", messages=[], max_tokens=8)
    assert "messages" in str(info.value)
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        running.client.completions.create(model="x", prompt="p", max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        running.client.models.retrieve("other-model")


def test_tool_call_round_trip_with_the_official_client():
    call_text = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>'
    server = Running(FakeModel(call_text, chat_template=GEMMA4_STYLE, canvas_length=8))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    try:
        out = server.client.chat.completions.create(model="x", messages=ask, tools=tools, max_tokens=64)
        assert out.choices[0].finish_reason == "tool_calls" and out.choices[0].message.content is None
        (call,) = out.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}

        chunks = list(server.client.chat.completions.create(model="x", messages=ask, tools=tools, max_tokens=64,
                                                            stream=True))
        streamed = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
        assert [(c.index, c.function.name) for c in streamed] == [(0, "get_weather")]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        server.model.set_answer("Sunny, 21 C in Paris.")
        history = ask + [out.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
        final = server.client.chat.completions.create(model="x", messages=history, tools=tools, max_tokens=64)
        assert final.choices[0].message.content == "Sunny, 21 C in Paris."
        prompt = server.model.detokenize(server.model.calls[-1]["prompt_ids"]).decode()
        assert call_text + "<|tool_response>response:get_weather" in prompt
    finally:
        server.close()


# ---- raw bad requests ---------------------------------------------------------------------------


def _error(body):
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("POST", "/v1/chat/completions", b"{not json", None, 400),
    ("POST", "/v1/chat/completions", b"\xff\xfe", None, 400),
    ("POST", "/v1/chat/completions", [1, 2], None, 400),
    ("POST", "/v1/chat/completions", {"messages": "hi"}, None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"content": "no role"}]}, None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "narrator", "content": "x"}]}, None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
     None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": {"name": "f"}},
     None, 422),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                      "response_format": {"type": "json_object"}}, None, 422),
    ("POST", "/v1/completions", {"prompt": 42}, None, 422),
    ("POST", "/v1/completions", {"prompt": "x", "stop": [1]}, None, 422),
    ("POST", "/v1/completions", {"prompt": "x", "seed": -3}, None, 422),
    ("POST", "/v1/completions", {"prompt": "x", "t_min": "hot"}, None, 422),
    ("POST", "/v1/completions", {"prompt": [10**9]}, None, 422),
    ("GET", "/v1/chat/completions", None, None, 405),
    ("DELETE", "/v1/models", None, None, 405),
    ("GET", "/v1/nothing-here", None, None, 404),
    ("POST", "/v1/completions", b"{}", {"Content-Length": "-5"}, 400),
])
def test_bad_requests_get_openai_shaped_4xx(running, method, path, body, headers, status):
    got, raw, _ = running.raw(method, path, body, headers)
    assert got == status, raw
    _error(raw)
    assert running.model.calls == []


def test_oversized_body_is_refused_with_413():
    server = Running(FakeModel("ok", chat_template=GEMMA4_STYLE), max_body_bytes=1000)
    try:
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        status, raw, _ = server.raw("POST", "/v1/chat/completions", big)
        assert status == 413 and "exceeds" in _error(raw)["message"]
        status, _, _ = server.raw("GET", "/health")  # still serving
        assert status == 200
    finally:
        server.close()


def test_missing_content_length_gets_411(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 411")


def test_sse_wire_format_ends_with_done(running):
    status, raw, response = running.raw("POST", "/v1/completions", {"prompt": "p", "stream": True, "max_tokens": 16})
    assert status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    events = [line for line in raw.decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


# ---- queueing, disconnects, shutdown --------------------------------------------------------------


def test_concurrent_clients_queue_and_all_succeed():
    server = Running(FakeModel("q" * 24, chat_template=GEMMA4_STYLE, canvas_length=8, steps=3, step_delay=0.01))
    try:
        results, errors = [], []

        def one(i):
            try:
                if i % 2:
                    out = server.client.chat.completions.create(model="x", messages=[{"role": "user", "content": str(i)}])
                    results.append(out.choices[0].message.content)
                else:
                    chunks = server.client.completions.create(model="x", prompt=str(i), stream=True)
                    results.append("".join(c.choices[0].text for c in chunks))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and results == ["q" * 24] * 8
        assert len(server.model.calls) == 8
    finally:
        server.close()


def test_full_queue_answers_503():
    model = FakeModel("s" * 64, eos=False, canvas_length=8, steps=4, step_delay=0.05)
    server = Running(model, max_queue=1)
    try:
        statuses = []

        def post():
            statuses.append(server.raw("POST", "/v1/completions", {"prompt": "p", "max_tokens": 64})[0])

        first = threading.Thread(target=post)
        first.start()
        assert model.step_started.wait(10)
        second = threading.Thread(target=post)
        second.start()
        deadline = time.monotonic() + 5
        while server.server._waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, raw, _ = server.raw("POST", "/v1/completions", {"prompt": "p", "max_tokens": 8})
        assert status == 503 and _error(raw)["type"] == "server_error"
        first.join(30)
        second.join(30)
        assert statuses == [200, 200]
    finally:
        server.close()


def test_client_disconnect_mid_stream_frees_the_model():
    model = FakeModel("d" * 400, eos=False, canvas_length=8, steps=2, step_delay=0.01)
    server = Running(model)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            body = json.dumps({"prompt": "p", "stream": True, "max_tokens": 400}).encode()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # the server notices at its next write and releases the model; a new request then succeeds
        out = server.client.completions.create(model="x", prompt="p", max_tokens=8)
        assert out.choices[0].text == "d" * 8
    finally:
        server.close()


def test_stop_cancels_running_generation_and_closes():
    model = FakeModel("c" * 800, eos=False, canvas_length=8, steps=5, step_delay=0.02)
    server = Running(model)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        server.raw("POST", "/v1/completions", {"prompt": "p", "max_tokens": 800})))
    worker.start()
    assert model.step_started.wait(10)
    server.close()
    worker.join(10)
    assert not worker.is_alive()  # uncancelled, the request would run 100 canvases (10 s) and still be going
    status, raw, _ = results[0]
    assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] == "cancelled"


# ---- the max_tokens cap and the access log ------------------------------------------------------


def test_never_more_than_max_tokens_through_the_server(running):
    """The cap holds over the wire too, streaming and not (canvases of 8; the answer is 46 tokens long)."""
    import random

    rng = random.Random(3)
    for max_tokens in [1, 5, 7, 8, 9, 40] + [rng.randint(1, 60) for _ in range(6)]:
        out = running.client.completions.create(model="x", prompt="p", max_tokens=max_tokens)
        assert out.usage.completion_tokens <= max_tokens
        assert len(out.choices[0].text.encode()) == out.usage.completion_tokens  # byte tokens in the fake
        chunks = list(running.client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "q"}], max_tokens=max_tokens, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(content.encode()) <= max_tokens
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == (["length"] if max_tokens < len(ANSWER.encode()) else ["stop"])


def test_one_access_log_line_per_request(running, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="diffgemma_cpp.server"):
        running.client.completions.create(model="x", prompt="p", max_tokens=5)
        running.raw("GET", "/nope")
        list(running.client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}],
                                                    max_tokens=64, stream=True))
        deadline = time.monotonic() + 10  # a stream's line is written once the handler is done, after [DONE]
        while time.monotonic() < deadline and sum(r.name == "diffgemma_cpp.server" for r in caplog.records) < 3:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "diffgemma_cpp.server"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("POST /v1/completions 200 5 tokens ") and lines[0].endswith(" ms")
    assert lines[1].startswith("GET /nope 404 - tokens ")
    assert lines[2].startswith(f"POST /v1/chat/completions 200 {len(ANSWER.encode())} tokens ")
