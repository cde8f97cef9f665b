"""End to end on the real engine: a tiny random DiffusionGemma, converted to GGUF, served over HTTP and driven
by the official openai client (streaming and not), plus a cancel from another thread.

The model is random, so the text is noise; what is checked is the plumbing: shapes, whole canvases, EOS/length
accounting, seeds, per-canvas streaming, the chat template from the GGUF, and cancellation.
"""

from __future__ import annotations

import threading

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
try:
    from diffgemma_cpp import model as model_module
except (ImportError, AttributeError) as exc:  # the engine's bindings are not in this build yet
    pytest.skip(f"the engine (diffgemma_cpp.model) is not available: {exc}", allow_module_level=True)

import tiny_hf  # noqa: E402
from test_server import Running  # noqa: E402

CANVAS = tiny_hf.CONFIGS["small"]["canvas_length"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from diffgemma_cpp.convert.pipeline import convert_checkpoint

    root = tmp_path_factory.mktemp("e2e")
    hf_dir = tiny_hf.save_checkpoint("small", root / "hf", seed=3)
    (path,) = convert_checkpoint(hf_dir, root / "tiny-small.gguf", outtype="f32", progress=False, quiet=True)
    return path


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with model_module.Model(tiny_gguf, n_threads=1) as m:
        yield m


@pytest.fixture
def running(model):
    server = Running(model)
    yield server
    server.close()


def test_gguf_chat_template_and_canvas(model):
    assert model.chat_template and model.canvas_length == CANVAS
    prompt = model.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert "Hello" in prompt


def test_openai_client_chat_non_streaming_and_streaming(running):
    client, steps = running.client, {"steps": 3}
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2 * CANVAS, seed=11,
                                           extra_body=steps)
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2 * CANVAS, seed=11,
                                           extra_body=steps)
    assert first.object == "chat.completion" and first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 0
    assert 0 <= first.usage.completion_tokens <= 2 * CANVAS
    if first.choices[0].finish_reason == "length":
        assert first.usage.completion_tokens == 2 * CANVAS  # whole canvases
    assert again.choices[0].message.content == first.choices[0].message.content  # same seed, same text

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=2 * CANVAS, seed=11,
                                                 stream=True, extra_body=steps))
    assert chunks[-1].choices[0].finish_reason == first.choices[0].finish_reason
    n_canvases = len(chunks) - 1
    assert 1 <= n_canvases <= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == first.choices[0].message.content


def test_openai_client_completions(running):
    out = running.client.completions.create(model="tiny", prompt="The sky is", max_tokens=CANVAS, seed=2,
                                            extra_body={"steps": 2})
    assert out.object == "text_completion" and out.choices[0].finish_reason in ("stop", "length")
    streamed = list(running.client.completions.create(model="tiny", prompt="The sky is", max_tokens=CANVAS, seed=2,
                                                      stream=True, extra_body={"steps": 2}))
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_cancel_from_another_thread_on_the_real_engine(model):
    steps_seen = []

    def on_step(step, total, text):
        steps_seen.append(step)
        if len(steps_seen) == 2:
            threading.Thread(target=model.cancel).start()
            done.wait(5)  # the cancel has landed before the engine takes its next step

    done = threading.Event()
    original_cancel = model.cancel

    def cancel_and_signal():
        original_cancel()
        done.set()

    model.cancel = cancel_and_signal
    try:
        # confidence_threshold=0 never stops a canvas early, so all 8 steps would run without the cancel
        out = model.create_completion("p", max_tokens=20 * CANVAS, steps=8, confidence_threshold=0.0,
                                      on_step=on_step, seed=5)
    finally:
        del model.cancel
    assert out["choices"][0]["finish_reason"] == "cancelled"
    assert len(steps_seen) <= 3  # stopped within one denoising step of the cancel
    # the model is usable again afterwards
    assert model.create_completion("p", max_tokens=CANVAS, steps=2, seed=1)["choices"][0]["finish_reason"] in (
        "stop", "length")
