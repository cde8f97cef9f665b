"""Images over HTTP: the official openai client sends a data: URL image to the server on 127.0.0.1; refused images
come back as OpenAI-shaped 400s. The engine is the fake one with vision (tests/_fake_engine.py); the lead's
test_server_e2e runs the real model."""

from __future__ import annotations

import base64
import io
import json
import pathlib

import numpy as np
import pytest

from _fake_engine import BOI, EOI, IMAGE, FakeModel, gemma4_image_tokens
from diffgemma_cpp.errors import ContextOverflowError
from test_server import Running

openai = pytest.importorskip("openai")
PILImage = pytest.importorskip("PIL.Image")

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()
PIXELS = np.random.default_rng(5).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def data_url(a=PIXELS) -> str:
    buf = io.BytesIO()
    PILImage.fromarray(a).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(url, text="What is in this picture?"):
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}


@pytest.fixture
def serve():
    servers = []

    def start(**model_options):
        model = FakeModel("A striped cat.", chat_template=GEMMA4_STYLE, canvas_length=8, **model_options)
        servers.append(Running(model))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_openai_client_sends_a_data_url_image(serve):
    running = serve(has_vision=True)
    out = running.client.chat.completions.create(model="x", messages=[image_message(data_url())], max_tokens=32)
    assert out.choices[0].message.content == "A striped cat." and out.choices[0].finish_reason == "stop"
    call = running.model.calls[0]
    (image,) = call["images"]
    assert image.to_numpy().tolist() == PIXELS.tolist()
    ids = call["prompt_ids"]
    n = gemma4_image_tokens(40, 24)
    start = ids.index(IMAGE)
    assert ids[start - 1] == BOI and ids[start:start + n] == [IMAGE] * n and ids[start + n] == EOI
    assert out.usage.prompt_tokens == len(ids)

    chunks = list(running.client.chat.completions.create(model="x", messages=[image_message(data_url())],
                                                         max_tokens=32, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "A striped cat."


def _error(running, messages, **body):
    status, raw, _ = running.raw("POST", "/v1/chat/completions", {"model": "x", "messages": messages, **body})
    return status, json.loads(raw)["error"]


@pytest.mark.parametrize("url, match", [
    ("https://example.com/cat.png", "never fetches"),
    ("file:///etc/passwd", "data:image"),
    ("/etc/passwd", "data:image"),
    ("data:image/png;base64,@@@", "base64"),
    ("data:image/png;base64," + base64.b64encode(b"not a picture").decode(), "not an image"),
])
def test_refused_images_are_400(serve, url, match):
    running = serve(has_vision=True)
    status, error = _error(running, [image_message(url)])
    assert status == 400 and error["type"] == "invalid_request_error" and match in error["message"]
    assert running.model.calls == []
    with pytest.raises(openai.BadRequestError):
        running.client.chat.completions.create(model="x", messages=[image_message(url)])


def test_hf_style_parts_and_malformed_parts_are_400(serve):
    running = serve(has_vision=True)
    for part in ({"type": "image", "path": "/etc/passwd"}, {"type": "image_url", "image_url": {}},
                 {"type": "image_url"}, "text"):
        status, error = _error(running, [{"role": "user", "content": [part]}])
        assert status in (400, 422) and error["param"].startswith("messages[0].content[0]"), part
    assert running.model.calls == []


def test_text_only_model_says_it_needs_a_projector(serve):
    running = serve()  # no vision
    status, error = _error(running, [image_message(data_url())])
    assert status == 400 and error["code"] == "invalid_image" and "mmproj" in error["message"]


def test_images_over_the_context_are_context_length_exceeded(serve):
    running = serve(has_vision=True, n_ctx=300)
    status, error = _error(running, [image_message(data_url(np.zeros((64, 64, 3), np.uint8)))], max_tokens=64)
    assert status == 400 and error["code"] == "context_length_exceeded" and "max_tokens" in error["message"]


class LateChecks(FakeModel):
    """An engine that checks its images when the generation begins (at the first canvas asked for)."""

    def generate_blocks(self, prompt_ids, max_new_tokens=256, images=None, **kwargs):
        if images:
            raise_now = ContextOverflowError("2 images of 256 soft tokens do not fit n_ctx 300")
            def late():
                raise raise_now
                yield
            return late()
        return super().generate_blocks(prompt_ids, max_new_tokens, **kwargs)


def test_a_check_at_the_first_chunk_of_a_stream_is_still_a_400():
    running = Running(LateChecks("x", chat_template=GEMMA4_STYLE, has_vision=True))
    try:
        status, error = _error(running, [image_message(data_url())], stream=True)
        assert status == 400 and error["code"] == "context_length_exceeded" and "n_ctx 300" in error["message"]
        status, error = _error(running, [image_message(data_url())])
        assert status == 400 and error["code"] == "context_length_exceeded"
    finally:
        running.close()
