"""Images end to end on the real engine: a tiny random DiffusionGemma with a vision tower, converted to a text
GGUF and a projector (`convert --mmproj`), served over HTTP to the official openai client (a data: URL image),
and run from the CLI with `--image`. The model is random, so the text is noise; what is checked is that the
image travels all the way: its soft tokens are counted in the prompt, it changes the answer, and the server,
the Python API and the CLI agree token for token."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

openai = pytest.importorskip("openai")
PILImage = pytest.importorskip("PIL.Image")

import tiny_hf  # noqa: E402
from diffgemma_cpp import Model, cli  # noqa: E402
from diffgemma_cpp.convert import convert_checkpoint  # noqa: E402
from test_server import Running  # noqa: E402

CANVAS = tiny_hf.CONFIGS["small"]["canvas_length"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-e2e")
    ckpt = tiny_hf.make_tiny_vision_checkpoint(root / "hf", seed=5, max_soft_tokens=70)
    text, mmproj = root / "tiny.gguf", root / "mmproj-tiny.gguf"
    convert_checkpoint(ckpt, text, "f32", mmproj=mmproj, progress=False, quiet=True)
    return text, mmproj


@pytest.fixture(scope="module")
def model(files):
    text, mmproj = files
    with Model(text, mmproj=mmproj, n_threads=1) as m:
        yield m


def _png(seed: int, width: int = 90, height: int = 60) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _messages(png: bytes | None, image_first: bool = False) -> list:
    content = [{"type": "text", "text": "What is in this picture?"}]
    if png is not None:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        content.insert(0 if image_first else 1, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": content}]


def test_openai_client_sends_an_image_to_the_server(model):
    server = Running(model)
    try:
        ask = dict(model="tiny", max_tokens=CANVAS, seed=4, extra_body={"steps": 3})
        with_image = server.client.chat.completions.create(messages=_messages(_png(1)), **ask)
        other_image = server.client.chat.completions.create(messages=_messages(_png(2)), **ask)
        no_image = server.client.chat.completions.create(messages=_messages(None), **ask)
    finally:
        server.close()
    n_image = model.image_n_tokens(90, 60)
    # boi + soft tokens + eoi more than the same message without the image
    assert with_image.usage.prompt_tokens == no_image.usage.prompt_tokens + n_image + 2
    assert with_image.choices[0].finish_reason in ("stop", "length")
    assert with_image.choices[0].message.content != other_image.choices[0].message.content  # the pixels matter
    direct = model.create_chat_completion(_messages(_png(1)), max_tokens=CANVAS, seed=4, steps=3)
    assert direct["choices"][0]["message"]["content"] == with_image.choices[0].message.content


def test_server_refuses_images_it_cannot_use(model, files):
    text, _ = files
    with Model(text, n_threads=1) as text_only:
        server = Running(text_only)
        try:
            with pytest.raises(openai.BadRequestError, match="(?i)projector"):
                server.client.chat.completions.create(model="tiny", messages=_messages(_png(1)), max_tokens=CANVAS)
        finally:
            server.close()
    server = Running(model)
    try:
        broken = [{"role": "user", "content": [{"type": "image_url",
                                                "image_url": {"url": "data:image/png;base64,bm90IGEgcG5n"}}]}]
        with pytest.raises(openai.BadRequestError):
            server.client.chat.completions.create(model="tiny", messages=broken, max_tokens=CANVAS)
        with pytest.raises(openai.BadRequestError):
            server.client.chat.completions.create(
                model="tiny", max_tokens=CANVAS,
                messages=[{"role": "user", "content": [{"type": "image_url",
                                                        "image_url": {"url": "https://example.com/cat.png"}}]}])
        # the server still answers afterwards
        ok = server.client.chat.completions.create(model="tiny", messages=_messages(_png(3)), max_tokens=CANVAS,
                                                   extra_body={"steps": 2})
        assert ok.choices[0].finish_reason in ("stop", "length")
    finally:
        server.close()


def test_cli_run_with_an_image(files, tmp_path, capsys, model):
    text, mmproj = files
    path = tmp_path / "picture.png"
    path.write_bytes(_png(1))
    code = cli.main(["run", "-m", str(text), "--mmproj", str(mmproj), "-t", "1", "-p", "What is in this picture?",
                     "--image", str(path), "-n", str(CANVAS), "--seed", "4", "--steps", "3"])
    assert code in (0, None)
    out = capsys.readouterr().out
    # the CLI puts the images before the prompt's text (as Gemma-4's examples do)
    expected = model.create_chat_completion(_messages(_png(1), image_first=True), max_tokens=CANVAS, seed=4, steps=3)
    assert expected["choices"][0]["message"]["content"].strip() in out
