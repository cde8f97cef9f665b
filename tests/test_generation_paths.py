"""One generation loop (csrc/runtime/generation.cpp) behind every way of asking for text: the C API's whole-loop call, its
stepping calls, generate_ids, generate_blocks, create_completion (streamed and not), chat and the server all give
the same tokens for the same seed, including generations that end with EOS inside a canvas and ones that run
several canvases."""
from __future__ import annotations

import numpy as np
import pytest

import engine_fixtures as fx
from diffgemma_cpp import Model, errors
from diffgemma_cpp._native import check, ffi, lib

SEEDS = range(20)
STEPS = 4


@pytest.fixture(scope="module")
def model():
    # The damped tiny model: it ends some generations with an end-of-turn token mid-canvas and runs others
    # over all three canvases asked for.
    with Model(fx.gguf("small:replay", "f32"), n_threads=1, n_ctx=256) as m:
        yield m


def _prompt_text(seed: int) -> str:
    return f"Question {seed}: what comes next?"


def _c_whole_loop(m: Model, prompt: list, max_new_tokens: int, seed: int) -> list:
    """diffgemma_generate, the C API's one-call loop, straight through cffi."""
    p = m.generation_params(len(prompt), max_new_tokens, STEPS, seed)
    C = m.canvas_length
    cap = -(-max_new_tokens // C) * C
    out = np.zeros(cap, dtype=np.int32)
    n_out = ffi.new("size_t *")
    prompt_arr = np.asarray(prompt, dtype=np.int32)
    check(lib.diffgemma_generate(m._c, ffi.from_buffer("int32_t[]", prompt_arr), len(prompt), p, ffi.NULL, ffi.NULL,
                                 ffi.NULL, ffi.from_buffer("int32_t[]", out), cap, n_out, ffi.NULL))
    return prompt + out[: n_out[0]].tolist()


def test_every_path_gives_the_same_tokens(model):
    from test_server import Running

    m, C = model, model.canvas_length
    budget = 3 * C
    server = Running(m)
    ended_mid_canvas = ran_several = 0
    try:
        for seed in SEEDS:
            text = _prompt_text(seed)
            prompt = m.tokenize(text)
            ids = m.generate_ids(prompt, max_new_tokens=budget, steps=STEPS, seed=seed)
            blocks = list(m.generate_blocks(prompt, max_new_tokens=budget, steps=STEPS, seed=seed))
            assert _c_whole_loop(m, prompt, budget, seed) == ids, seed
            assert prompt + [t for b in blocks for t in b.canvas] == ids, seed
            content = [t for b in blocks for t in b.ids]
            eos = blocks[-1].eos
            ended_mid_canvas += eos and len(blocks[-1].ids) < C - 1
            ran_several += len(blocks) > 1

            settings = dict(max_tokens=budget, steps=STEPS, seed=seed)
            plain = m.create_completion(text, **settings)
            streamed = list(m.create_completion(text, stream=True, **settings))
            served = server.client.completions.create(model="m", prompt=text, max_tokens=budget, seed=seed,
                                                      extra_body={"steps": STEPS})
            answer = plain["choices"][0]["text"]
            assert plain["usage"]["completion_tokens"] == len(content), seed
            assert answer == m.detokenize(content).decode("utf-8", errors="replace"), seed
            assert plain["choices"][0]["finish_reason"] == ("stop" if eos else "length")
            assert "".join(c["choices"][0]["text"] for c in streamed) == answer, seed
            assert served.choices[0].text == answer and served.usage.completion_tokens == len(content), seed

            messages = [{"role": "user", "content": text}]
            chat_prompt = m._prompt_ids(m.apply_chat_template(messages), add_bos=True)  # as the chat call does
            chat_blocks = list(m.generate_blocks(chat_prompt, max_new_tokens=budget, steps=STEPS, seed=seed))
            chat_content = [t for b in chat_blocks for t in b.ids]
            chat = m.create_chat_completion(messages, **settings)
            chat_streamed = list(m.create_chat_completion(messages, stream=True, **settings))
            assert chat["usage"]["completion_tokens"] == len(chat_content), seed
            assert chat_streamed[-1]["usage"]["completion_tokens"] == len(chat_content), seed
            served_chat = server.client.chat.completions.create(model="m", messages=messages, max_tokens=budget,
                                                                seed=seed, extra_body={"steps": STEPS})
            assert served_chat.usage.completion_tokens == len(chat_content), seed
            assert served_chat.choices[0].message.content == chat["choices"][0]["message"]["content"], seed
    finally:
        server.close()
    # The comparison covered what it claims to cover.
    assert ended_mid_canvas >= 3 and ran_several >= 3, (ended_mid_canvas, ran_several)


def test_a_stream_dropped_early_ends_its_generation(model):
    m = model
    for seed in SEEDS:  # a seed whose first canvas does not end the generation
        stream = m.generate_blocks(m.tokenize("x"), max_new_tokens=3 * m.canvas_length, steps=2, seed=seed)
        if not next(stream).eos:
            break
        stream.close()
    with pytest.raises(errors.ModelBusyError, match="a generation is open"):
        m.encode([2, 3])  # the C library refuses to change the cache under the open generation
    stream.close()
    m.encode([2, 3])  # ended: the context is free again
    m.reset()


def test_stepping_calls_refuse_what_is_out_of_order(model):
    m = model
    info = ffi.new("diffgemma_canvas_info *")
    canvas = np.zeros(m.canvas_length, dtype=np.int32)
    with pytest.raises(errors.InvalidArgumentError, match="no generation is open"):
        check(lib.diffgemma_generate_next(m._c, ffi.NULL, ffi.NULL, ffi.from_buffer("int32_t[]", canvas), info))
    check(lib.diffgemma_generate_end(m._c))  # nothing open: ending is a no-op
    p = m.generation_params(3, m.canvas_length, 2, 1)
    prompt = np.asarray([2, 3, 4], dtype=np.int32)
    check(lib.diffgemma_generate_begin(m._c, ffi.from_buffer("int32_t[]", prompt), 3, p, ffi.NULL))
    with pytest.raises(errors.ModelBusyError, match="a generation is open"):
        check(lib.diffgemma_generate_begin(m._c, ffi.from_buffer("int32_t[]", prompt), 3, p, ffi.NULL))
    check(lib.diffgemma_generate_next(m._c, ffi.NULL, ffi.NULL, ffi.from_buffer("int32_t[]", canvas), info))
    assert info.done == 1 and info.block == 0 and info.steps >= 1  # one canvas asked for: done after it
    with pytest.raises(errors.InvalidArgumentError, match="no generation is open"):
        check(lib.diffgemma_generate_next(m._c, ffi.NULL, ffi.NULL, ffi.from_buffer("int32_t[]", canvas), info))


def test_the_settings_are_checked_once_in_c_before_any_work(model):
    m = model
    with pytest.raises(errors.InvalidArgumentError, match=r"steps must be in 1\.\.100000, got 0"):
        m.generate_blocks([2, 3], max_new_tokens=4, steps=0)  # raised when the blocks are made, not at next()
    with pytest.raises(errors.InvalidArgumentError, match="steps must be in"):
        m.create_completion("hi", max_tokens=4, steps=0, stream=True)
    with pytest.raises(errors.InvalidArgumentError, match="temperatures must be positive"):
        m.create_completion("hi", max_tokens=4, t_min=-1.0)
    assert m.n_past == 0 or m.n_past > 0  # the model stays usable
    assert len(m.generate_ids([2, 3], max_new_tokens=4, steps=2, seed=1)) == 2 + m.canvas_length


def test_the_whole_loop_call_checks_settings_before_the_buffer(model):
    m = model
    p = m.generation_params(2, m.canvas_length, 2, 1)
    p.max_new_tokens = 0
    prompt = np.asarray([2, 3], dtype=np.int32)
    n_out = ffi.new("size_t *")
    with pytest.raises(errors.InvalidArgumentError, match="max_new_tokens must be positive"):
        check(lib.diffgemma_generate(m._c, ffi.from_buffer("int32_t[]", prompt), 2, p, ffi.NULL, ffi.NULL, ffi.NULL,
                                     ffi.NULL, 0, n_out, ffi.NULL))
    p.max_new_tokens = 2 * m.canvas_length
    with pytest.raises(errors.BufferTooSmallError, match="the output buffer holds 0 tokens"):
        check(lib.diffgemma_generate(m._c, ffi.from_buffer("int32_t[]", prompt), 2, p, ffi.NULL, ffi.NULL, ffi.NULL,
                                     ffi.NULL, 0, n_out, ffi.NULL))
    assert n_out[0] == 2 * m.canvas_length  # the size a caller should allocate
