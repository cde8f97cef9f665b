"""create_completion / create_chat_completion on a fake engine: shapes, streaming, stops, UTF-8, cancel, threads."""

from __future__ import annotations

import pathlib
import random
import threading

import pytest

from _fake_engine import BOS, BYTE_BASE, FakeModel
from diffgemma_cpp.errors import InvalidArgumentError, ModelBusyError

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()


def joined(chunks, key="text"):
    if key == "text":
        return "".join(c["choices"][0]["text"] for c in chunks)
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


# ---- shapes and counts ----------------------------------------------------------------------


def test_completion_is_openai_shaped():
    model = FakeModel("Blue light scatters most.", canvas_length=8)
    out = model.create_completion("Why is the sky blue?", max_tokens=64, seed=7)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["model"] == "fake-diffgemma.gguf" and isinstance(out["created"], int)
    assert out["choices"] == [{"text": "Blue light scatters most.", "index": 0, "logprobs": None,
                               "finish_reason": "stop"}]
    prompt_ids = model.calls[0]["prompt_ids"]
    assert prompt_ids[0] == BOS and out["usage"]["prompt_tokens"] == len(prompt_ids)
    assert out["usage"]["completion_tokens"] == len("Blue light scatters most.")
    assert out["usage"]["total_tokens"] == len(prompt_ids) + out["usage"]["completion_tokens"]
    assert out["usage"]["canvases"] == 4 and out["usage"]["denoising_steps"] == 4 * 3
    assert model("Why?", max_tokens=64)["choices"][0]["text"] == "Blue light scatters most."  # __call__


def test_max_tokens_cuts_the_last_canvas_and_reports_length():
    model = FakeModel("x" * 100, eos=False, canvas_length=8)
    out = model.create_completion("p", max_tokens=9)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 9 and out["choices"][0]["text"] == "x" * 9
    assert out["usage"]["canvases"] == 2  # the engine denoised two whole canvases; 9 tokens came back
    assert model.calls[0]["max_new_tokens"] == 9


def _returned(chunks_or_out, chat):
    """(text, finish_reason, usage) of a completion, streamed (a list of chunks) or not."""
    if isinstance(chunks_or_out, dict):
        choice = chunks_or_out["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        return text, choice["finish_reason"], chunks_or_out["usage"]
    text = joined(chunks_or_out, "delta" if chat else "text")
    return text, chunks_or_out[-1]["choices"][0]["finish_reason"], chunks_or_out[-1]["usage"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chat", [False, True])
def test_never_more_than_max_tokens_over_random_budgets_and_canvases(stream, chat):
    """OpenAI clients rely on the cap: a budget that is not a whole number of canvases cuts the last one."""
    rng = random.Random(17 + 2 * stream + chat)
    for _ in range(200):
        C = rng.randint(1, 12)
        answer_len = rng.randint(0, 40)
        eos = rng.random() < 0.5
        max_tokens = rng.randint(1, 45)
        model = FakeModel("y" * answer_len, eos=eos, canvas_length=C, steps=1, chat_template=GEMMA4_STYLE)
        if chat:
            out = model.create_chat_completion([{"role": "user", "content": "q"}], max_tokens=max_tokens, stream=stream)
        else:
            out = model.create_completion("q", max_tokens=max_tokens, stream=stream)
        text, finish, usage = _returned(list(out) if stream else out, chat)
        case = dict(C=C, answer_len=answer_len, eos=eos, max_tokens=max_tokens)
        expected = min(answer_len, max_tokens)
        assert text == "y" * expected, case
        assert usage["completion_tokens"] == expected <= max_tokens, case
        # "stop" when the EOS was committed: before the cap, or right at it inside the last canvas denoised.
        ended_by_eos = eos and (answer_len < max_tokens or (answer_len == max_tokens and answer_len % C != 0))
        assert finish == ("stop" if ended_by_eos else "length"), case


def test_token_id_prompt_and_no_double_bos():
    model = FakeModel("ok")
    model.create_completion([BOS, BYTE_BASE + 65], max_tokens=8)
    model.create_completion("<bos>hi", max_tokens=8)
    assert model.calls[0]["prompt_ids"] == [BOS, BYTE_BASE + 65]
    assert model.calls[1]["prompt_ids"][:2] == [BOS, BYTE_BASE + ord("h")]


def test_settings_reach_the_engine():
    model = FakeModel("ok")
    model.create_completion("p", max_tokens=8, seed=3, steps=5, t_min=0.3, t_max=0.9, entropy_bound=0.2,
                            stability_threshold=2, confidence_threshold=0.01)
    call = model.calls[0]
    assert (call["seed"], call["steps"], call["t_min"], call["t_max"], call["entropy_bound"],
            call["stability_threshold"], call["confidence_threshold"]) == (3, 5, 0.3, 0.9, 0.2, 2, 0.01)


@pytest.mark.parametrize("kwargs, error", [
    (dict(max_tokens=0), InvalidArgumentError), (dict(max_tokens="8"), InvalidArgumentError),
    (dict(max_tokens=True), InvalidArgumentError), (dict(steps=0), InvalidArgumentError),
    (dict(seed=-1), InvalidArgumentError), (dict(stop=[1]), TypeError), (dict(stop=5), TypeError),
    (dict(top_k=40), TypeError), (dict(on_step="print"), InvalidArgumentError),
])
def test_bad_arguments_are_rejected_before_generating(kwargs, error):
    model = FakeModel("ok")
    with pytest.raises(error):
        model.create_completion("p", **kwargs)
    assert model.calls == []


@pytest.mark.parametrize("prompt", [[], [10**9], [-1], [1.5], [True], None, b"bytes"])
def test_bad_prompts_are_rejected(prompt):
    model = FakeModel("ok")
    with pytest.raises(InvalidArgumentError):
        model.create_completion(prompt, max_tokens=8)


# ---- streaming -------------------------------------------------------------------------------


def test_stream_yields_one_chunk_per_canvas_then_finish():
    answer = "The quick brown fox jumps over the lazy dog."
    model = FakeModel(answer, canvas_length=8)
    chunks = list(model.create_completion("p", max_tokens=256, stream=True))
    n_canvases = -(-(len(answer) + 1) // 8)  # +1: the EOS sits in the last canvas
    assert len(chunks) == n_canvases + 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * n_canvases + ["stop"]
    assert joined(chunks) == answer
    assert chunks[-1]["usage"]["completion_tokens"] == len(answer)
    assert len({c["id"] for c in chunks}) == 1


def test_stream_and_non_stream_agree():
    model = FakeModel("same text either way " * 5, eos=False, canvas_length=7)
    full = model.create_completion("p", max_tokens=40, seed=1)["choices"][0]["text"]
    assert joined(model.create_completion("p", max_tokens=40, seed=1, stream=True)) == full


@pytest.mark.parametrize("canvas_length", [1, 2, 3, 5, 8])
def test_utf8_is_never_split_across_chunks(canvas_length):
    text = "héllo 🌍 中文 é\u0301 ﷽ 🇨🇭 done"
    model = FakeModel(text.encode("utf-8"), canvas_length=canvas_length)
    chunks = list(model.create_completion("p", max_tokens=256, stream=True))
    assert joined(chunks) == text
    for c in chunks:
        assert "\ufffd" not in c["choices"][0]["text"]


def test_invalid_utf8_becomes_replacement_characters_not_errors():
    model = FakeModel(b"ok \xff\xfe then \xe2\x82", canvas_length=3)  # stray bytes, then a truncated euro sign
    text = model.create_completion("p", max_tokens=64)["choices"][0]["text"]
    assert text == "ok \ufffd\ufffd then \ufffd"
    assert joined(model.create_completion("p", max_tokens=64, stream=True)) == text


# ---- stop strings ----------------------------------------------------------------------------


def test_stop_string_cuts_the_text():
    model = FakeModel("Answer: 42\nUser: next question", canvas_length=4)
    out = model.create_completion("p", max_tokens=256, stop=["\nUser:", "never"])
    assert out["choices"][0]["text"] == "Answer: 42" and out["choices"][0]["finish_reason"] == "stop"
    # generation stopped at the canvas that completed the stop string
    assert out["usage"]["canvases"] == 4


def test_stop_strings_never_leak_while_streaming():
    rng = random.Random(1234)
    alphabet = "ab \nSTOPé🌍"
    for trial in range(300):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        stops = rng.sample(["STOP", "\n\n", "aba", "é🌍", "Sx"], k=rng.randrange(1, 3))
        model = FakeModel(body, canvas_length=rng.randrange(1, 9))
        expected = body
        for s in stops:
            if s in expected:
                expected = expected[:expected.index(s)]
        emitted = ""
        for chunk in model.create_completion("p", max_tokens=256, stop=stops, stream=True):
            emitted += chunk["choices"][0]["text"]
            assert expected.startswith(emitted), (trial, body, stops, emitted)  # nothing past a stop, ever
        assert emitted == expected, (trial, body, stops)
        assert model.create_completion("p", max_tokens=256, stop=stops)["choices"][0]["text"] == expected


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    model = FakeModel("abcST then more", canvas_length=5)
    chunks = list(model.create_completion("p", max_tokens=256, stop="STOP", stream=True))
    assert chunks[0]["choices"][0]["text"] == "abc"  # "ST" might begin "STOP": held back
    assert joined(chunks) == "abcST then more"


# ---- per-step preview -----------------------------------------------------------------------


def test_on_step_previews_every_denoising_step():
    model = FakeModel("abcdefgh12345678", canvas_length=8, steps=4)
    seen = []
    model.create_completion("p", max_tokens=256, on_step=lambda s, n, text: seen.append((s, n, text)))
    assert [(s, n) for s, n, _ in seen] == [(s, 4) for s in (1, 2, 3, 4)] * 3
    assert seen[3][2] == "abcdefgh" and seen[7][2] == "12345678"
    assert all(isinstance(t, str) for _, _, t in seen)


# ---- cancellation and the thread contract ---------------------------------------------------


def test_cancel_from_another_thread_stops_within_a_step():
    model = FakeModel("y" * 200, eos=False, canvas_length=8, steps=10, step_delay=0.02)
    steps_seen = []

    def on_step(step, total, text):
        steps_seen.append(step)
        if len(steps_seen) == 15:  # in the middle of the second canvas
            threading.Thread(target=model.cancel).start()

    out = model.create_completion("p", max_tokens=200, on_step=on_step)
    assert out["choices"][0]["finish_reason"] == "cancelled"
    assert out["choices"][0]["text"] == "y" * 8  # the canvas committed before the cancel
    assert len(steps_seen) <= 17  # stopped within a step or two of the request (thread start latency), of 250


def test_cancel_while_streaming_ends_the_stream_with_cancelled():
    model = FakeModel("z" * 100, eos=False, canvas_length=4, steps=2)
    chunks = []
    for chunk in model.create_completion("p", max_tokens=100, stream=True):
        chunks.append(chunk)
        if len(chunks) == 2:
            model.cancel()
    assert chunks[-1]["choices"][0]["finish_reason"] == "cancelled"
    assert joined(chunks) == "z" * 8


def test_second_concurrent_call_raises_model_busy():
    model = FakeModel("w" * 40, eos=False, canvas_length=8, steps=5, step_delay=0.02)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("out", model.create_completion("p", max_tokens=40)))
    worker.start()
    assert model.step_started.wait(5)
    with pytest.raises(ModelBusyError):
        model.create_completion("q", max_tokens=8)
    with pytest.raises(ModelBusyError):
        next(iter(model.create_chat_completion([{"role": "user", "content": "x"}], chat_template=GEMMA4_STYLE,
                                               stream=True)))
    worker.join(10)
    assert result["out"]["choices"][0]["finish_reason"] == "length"
    assert len(model.calls) == 1
    assert model.create_completion("again", max_tokens=8)["choices"][0]["text"] == "w" * 8  # free again


def test_many_threads_never_overlap():
    model = FakeModel("v" * 16, canvas_length=8, steps=2, step_delay=0.001)
    outcomes = []

    def worker():
        for _ in range(10):
            try:
                outcomes.append(model.create_completion("p", max_tokens=16)["choices"][0]["text"])
            except ModelBusyError:
                outcomes.append("busy")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 60 and set(outcomes) <= {"v" * 16, "busy"}
    assert "busy" in outcomes and "v" * 16 in outcomes


def test_an_open_stream_holds_the_model_until_closed():
    model = FakeModel("s" * 40, eos=False, canvas_length=8)
    stream = model.create_completion("p", max_tokens=40, stream=True)
    model.create_completion("p", max_tokens=8)  # a stream not yet started holds nothing
    next(stream)
    with pytest.raises(ModelBusyError):
        model.create_completion("p", max_tokens=8)
    stream.close()
    assert model.create_completion("p", max_tokens=8)["choices"][0]["finish_reason"] == "length"


# ---- chat ------------------------------------------------------------------------------------


def test_chat_completion_renders_the_template_and_answers():
    model = FakeModel("Because of Rayleigh scattering.", chat_template=GEMMA4_STYLE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    out = model.create_chat_completion(messages, max_tokens=256)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Because of Rayleigh scattering."}
    assert out["choices"][0]["finish_reason"] == "stop"
    prompt = model.detokenize(model.calls[0]["prompt_ids"]).decode()
    assert prompt == ("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nWhy is the sky blue?<turn|>\n"
                      "<|turn>model\n<|channel>thought\n<channel|>")
    assert model.calls[0]["prompt_ids"].count(BOS) == 1  # the template's <bos>, not a second one
    assert out["usage"]["prompt_tokens"] == len(model.calls[0]["prompt_ids"])


def test_chat_thinking_goes_to_reasoning_content():
    model = FakeModel("<|channel>thought\nshort waves scatter<channel|>Rayleigh.", chat_template=GEMMA4_STYLE)
    out = model.create_chat_completion([{"role": "user", "content": "Why?"}], enable_thinking=True)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Rayleigh.",
                                            "reasoning_content": "short waves scatter"}
    prompt = model.detokenize(model.calls[0]["prompt_ids"]).decode()
    assert "<|think|>" in prompt and prompt.endswith("<|turn>model\n")


def test_chat_stream_deltas():
    model = FakeModel("Hello there, friend.", chat_template=GEMMA4_STYLE, canvas_length=6)
    chunks = list(model.create_chat_completion([{"role": "user", "content": "Hi"}], stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert joined(chunks, key="delta") == "Hello there, friend."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_template_override_and_missing_template():
    model = FakeModel("ok")
    with pytest.raises(InvalidArgumentError, match="no chat template"):
        model.create_chat_completion([{"role": "user", "content": "Hi"}])
    out = model.create_chat_completion([{"role": "user", "content": "Hi"}],
                                       chat_template="{% for m in messages %}{{ m.content }}|{% endfor %}")
    assert out["choices"][0]["message"]["content"] == "ok"
    assert model.detokenize(model.calls[0]["prompt_ids"]) == b"<bos>Hi|"


def test_chat_tools_reach_the_template():
    model = FakeModel("<|tool_call>call:now{}<tool_call|>", chat_template=GEMMA4_STYLE)
    tools = [{"type": "function", "function": {"name": "now", "description": "The time."}}]
    out = model.create_chat_completion([{"role": "user", "content": "Time?"}], tools=tools)
    assert "<|tool>declaration:now{" in model.detokenize(model.calls[0]["prompt_ids"]).decode()
    # the call comes back parsed (tests/test_tool_calls.py covers the notation and the streaming split)
    assert out["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "now", "arguments": "{}"}


def test_streamed_reasoning_split_equals_the_whole_text_split():
    from diffgemma_cpp.completion import THOUGHT_CLOSE, THOUGHT_OPEN, split_reasoning
    from diffgemma_cpp.textstream import ReasoningSplitter

    rng = random.Random(7)
    pieces = [THOUGHT_OPEN, THOUGHT_CLOSE, THOUGHT_OPEN[:5], THOUGHT_CLOSE[:3], " ", "\n", "a", "bc", "<", "|"]
    for trial in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 10)))
        if rng.random() < 0.5:
            text = rng.choice(["", " ", "\n "]) + THOUGHT_OPEN + text
        splitter = ReasoningSplitter(THOUGHT_OPEN, THOUGHT_CLOSE)
        reasoning = content = ""
        i = 0
        while i < len(text):
            j = i + rng.randrange(1, 6)
            r, c = splitter.push(text[i:j])
            reasoning, content, i = reasoning + r, content + c, j
        r, c = splitter.finish()
        reasoning, content = reasoning + r, content + c
        expected = split_reasoning(text)
        assert (reasoning, content) == (expected.get("reasoning_content", ""), expected["content"]), (trial, text)


def test_chat_stream_sends_reasoning_deltas():
    model = FakeModel("<|channel>thought\n  short waves scatter  <channel|>\nRayleigh.", chat_template=GEMMA4_STYLE,
                      canvas_length=3)
    chunks = list(model.create_chat_completion([{"role": "user", "content": "Why?"}], enable_thinking=True,
                                               stream=True))
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert reasoning == "short waves scatter" and joined(chunks, key="delta") == "Rayleigh."


def test_special_tokens_found_when_metadata_is_text():
    # Model.metadata holds GGUF values as text; the bos/eos ids must still be found.
    model = FakeModel("ok", chat_template="{{ bos_token }}[{{ eos_token }}]{{ messages[0].content }}")
    model.metadata = {k: str(v) for k, v in model.metadata.items()}
    model.create_chat_completion([{"role": "user", "content": "hi"}])
    assert model.detokenize(model.calls[0]["prompt_ids"]) == b"<bos>[<eos>]hi"
    assert model.calls[0]["prompt_ids"].count(BOS) == 1
