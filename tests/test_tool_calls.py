"""Gemma-4 tool calls: the argument notation, streaming split, OpenAI shapes, and a full round trip.

The golden direction is the template: the Gemma-4-style test template renders an assistant's tool call
(tests/chat_templates/gemma4_style.jinja, ``render_tool_call``); parsing that text must give back the
arguments it was rendered from, for random nested arguments.
"""

from __future__ import annotations

import json
import pathlib
import random
import re

import pytest

from _fake_engine import FakeModel
from diffgemma_cpp.chat import ChatTemplate
from diffgemma_cpp.errors import InvalidArgumentError
from diffgemma_cpp.tool_calls import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCallSplitter, ToolCallSyntaxError,
                                      messages_for_template, parse_tool_arguments, parse_tool_call,
                                      split_tool_calls)

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()
Q = '<|"|>'
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}


# ---- the argument notation ----------------------------------------------------------------------


def test_parses_every_kind_of_value():
    text = (f"{{city:{Q}Paris, {{France}}: \"the\" capital{Q},days:3,ratio:-0.25,big:1e+20,ok:true,no:false,"
            f"none:null,tags:[{Q}a{Q},2,[],{{}}],nested:{{inner:{{deep:[{Q}x{Q}]}}}},empty:{Q}{Q}}}")
    assert parse_tool_arguments(text) == {
        "city": 'Paris, {France}: "the" capital', "days": 3, "ratio": -0.25, "big": 1e20, "ok": True,
        "no": False, "none": None, "tags": ["a", 2, [], {}], "nested": {"inner": {"deep": ["x"]}}, "empty": ""}


def test_types_survive_json():
    args = parse_tool_arguments("{n:7,f:7.5,s:07,word:Paris}")
    assert json.loads(json.dumps(args)) == {"n": 7, "f": 7.5, "s": "07", "word": "Paris"}
    assert isinstance(args["n"], int) and isinstance(args["f"], float)


def test_whitespace_quoted_keys_and_unicode():
    assert parse_tool_arguments(f" {{ a : 1 , {Q}b c{Q} : {Q}é 🌍{Q} }} ") == {"a": 1, "b c": "é 🌍"}


@pytest.mark.parametrize("body, message", [
    ("get_weather{city:1}", "must start with 'call:NAME"),
    ("call:get_weather", "must be an object"),
    (f"call:f{{city:{Q}Paris}}", "never closes"),
    ("call:f{city:1} extra", "unexpected text after"),
    ("call:f{city 1}", "expected ':'"),
    ("call:f{city:}", "expected a value"),
    ("call:f{:1}", "expected a key"),
    ("call:f{a:1,}", "expected a key"),
    ("call:f{a:[1,2}", "expected ','"),
    ("call:f{a:1", "expected ','"),
])
def test_malformed_calls_say_what_is_wrong(body, message):
    with pytest.raises(ToolCallSyntaxError, match=re.escape(message)):
        parse_tool_call(body)


def test_deep_nesting_is_refused_not_a_crash():
    assert parse_tool_arguments("{a:" * 64 + "1" + "}" * 64) is not None
    deep = f"{TOOL_CALL_OPEN}call:f{{a:" + "[" * 100_000 + "]" * 100_000 + f"}}{TOOL_CALL_CLOSE}"
    with pytest.raises(ToolCallSyntaxError, match="deeper than 64 levels"):
        parse_tool_call(deep[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)])
    assert split_tool_calls(deep) == (deep, [])


def _random_value(rng, depth=0):
    kind = rng.choice(["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 3 else []))
    if kind == "str":
        return "".join(rng.choice('ab ,:{}[]"\'\\é🌍\n') for _ in range(rng.randint(0, 8)))
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return rng.choice([0.5, -2.25, 1e-05, 3.0e20, 123.456])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}_{rng.randint(0, 99)}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_template_rendered_calls_parse_back_to_their_arguments():
    template = ChatTemplate(GEMMA4_STYLE, bos_token="<bos>")
    rng = random.Random(3)
    for trial in range(200):
        arguments = {f"arg{i}": _random_value(rng) for i in range(rng.randint(0, 4))}
        calls = [{"type": "function", "function": {"name": f"tool_{n}", "arguments": arguments}}
                 for n in range(rng.randint(1, 3))]
        prompt = template.render([{"role": "user", "content": "go"},
                                  {"role": "assistant", "content": "", "tool_calls": calls}])
        rendered = prompt[prompt.index(TOOL_CALL_OPEN):prompt.rindex(TOOL_CALL_CLOSE) + len(TOOL_CALL_CLOSE)]
        text, parsed = split_tool_calls(rendered)
        assert text == "" and parsed == [(f"tool_{n}", arguments) for n in range(len(calls))], (trial, rendered)


# ---- splitting text from calls --------------------------------------------------------------------


def test_text_around_and_between_calls():
    text = (f"Let me check. {TOOL_CALL_OPEN}call:get_weather{{city:{Q}Paris{Q}}}{TOOL_CALL_CLOSE}"
            f"{TOOL_CALL_OPEN}call:now{{}}{TOOL_CALL_CLOSE} done")
    assert split_tool_calls(text) == ("Let me check.  done", [("get_weather", {"city": "Paris"}), ("now", {})])


def test_bad_or_unfinished_calls_stay_in_the_text():
    bad = f"{TOOL_CALL_OPEN}call:f{{city Paris}}{TOOL_CALL_CLOSE}"
    assert split_tool_calls(f"a {bad} b") == (f"a {bad} b", [])
    unfinished = f"{TOOL_CALL_OPEN}call:get_weather{{city:{Q}Par"
    assert split_tool_calls(f"x {unfinished}") == (f"x {unfinished}", [])
    assert split_tool_calls("no calls, only <|tool_ca") == ("no calls, only <|tool_ca", [])


def test_streamed_split_equals_the_whole_text_split():
    pieces = ["Sure. ", f"{TOOL_CALL_OPEN}call:get_weather{{city:{Q}Paris{Q},days:3}}{TOOL_CALL_CLOSE}",
              f"{TOOL_CALL_OPEN}call:f{{bad}}{TOOL_CALL_CLOSE}", "<|tool", " text ", f"{TOOL_CALL_OPEN}call:now{{}}",
              TOOL_CALL_CLOSE, f"{TOOL_CALL_OPEN}call:cut{{a:1"]
    rng = random.Random(11)
    for trial in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        splitter, out, calls, i = ToolCallSplitter(), "", [], 0
        while i < len(text):
            j = min(len(text), i + rng.randint(1, 9))
            piece, more = splitter.push(text[i:j])
            out, calls, i = out + piece, calls + more, j
        piece, more = splitter.finish()
        assert (out + piece, calls + more) == split_tool_calls(text), (trial, text)


def test_a_marker_split_across_canvases_is_held_back():
    splitter = ToolCallSplitter()
    assert splitter.push("Checking <|tool") == ("Checking ", [])
    assert splitter.push("_call>call:now{}") == ("", [])
    assert splitter.push("<tool_call|> ok") == (" ok", [("now", {})])


# ---- OpenAI messages in, OpenAI tool_calls out -----------------------------------------------------

CALL_TEXT = f"{TOOL_CALL_OPEN}call:get_weather{{city:{Q}Paris{Q},days:3}}{TOOL_CALL_CLOSE}"
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_chat_completion_returns_tool_calls():
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    out = model.create_chat_completion(ASK, tools=[WEATHER_TOOL])
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}


def test_thought_text_and_two_calls():
    answer = f"<|channel>thought\nneeds weather<channel|>One moment.{CALL_TEXT}{TOOL_CALL_OPEN}call:now{{}}{TOOL_CALL_CLOSE}"
    model = FakeModel(answer, chat_template=GEMMA4_STYLE)
    message = model.create_chat_completion(ASK, tools=[WEATHER_TOOL], enable_thinking=True)["choices"][0]["message"]
    assert message["reasoning_content"] == "needs weather" and message["content"] == "One moment."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "now"]
    assert len({c["id"] for c in message["tool_calls"]}) == 2


def test_streamed_tool_calls_arrive_whole_with_indices():
    answer = f"One moment.{CALL_TEXT}{TOOL_CALL_OPEN}call:now{{}}{TOOL_CALL_CLOSE}"
    model = FakeModel(answer, chat_template=GEMMA4_STYLE, canvas_length=5)
    chunks = list(model.create_chat_completion(ASK, tools=[WEATHER_TOOL], stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "One moment."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"), (1, "now")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 3}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(TOOL_CALL_OPEN not in d.get("content", "") and "<|tool" not in d.get("content", "") for d in deltas)


def test_without_tools_the_text_is_left_alone():
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    choice = model.create_chat_completion(ASK)["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CALL_TEXT} and choice["finish_reason"] == "stop"


def test_a_call_cut_by_max_tokens_keeps_length_and_its_text():
    model = FakeModel(CALL_TEXT + "more text", chat_template=GEMMA4_STYLE, canvas_length=8)
    choice = model.create_chat_completion(ASK, tools=[WEATHER_TOOL], max_tokens=16)["choices"][0]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
    content = choice["message"]["content"]  # the first 16 tokens of the call, verbatim
    assert content.startswith(TOOL_CALL_OPEN + "call:") and CALL_TEXT.startswith(content) and content != CALL_TEXT


def test_tool_choice_none_hides_the_tools_and_parses_nothing():
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    choice = model.create_chat_completion(ASK, tools=[WEATHER_TOOL], tool_choice="none")["choices"][0]
    assert "declaration:get_weather" not in model.detokenize(model.calls[0]["prompt_ids"]).decode()
    assert choice["message"]["content"] == CALL_TEXT and choice["finish_reason"] == "stop"
    model.create_chat_completion(ASK, tools=[WEATHER_TOOL], tool_choice="auto")
    assert "declaration:get_weather" in model.detokenize(model.calls[1]["prompt_ids"]).decode()


@pytest.mark.parametrize("choice", ["required", "any", {"type": "function", "function": {"name": "get_weather"}}])
def test_unsupported_tool_choice_is_refused(choice):
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    with pytest.raises(InvalidArgumentError, match="tool_choice must be one of auto, none"):
        model.create_chat_completion(ASK, tools=[WEATHER_TOOL], tool_choice=choice)
    assert model.calls == []


def _history(arguments):
    return ASK + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]


def test_openai_history_renders_like_the_dict_form():
    template = ChatTemplate(GEMMA4_STYLE, bos_token="<bos>")
    as_json = _history(json.dumps({"city": "Paris", "days": 3}))
    before = json.dumps(as_json)
    rendered = template.render(messages_for_template(as_json), add_generation_prompt=True)
    assert json.dumps(as_json) == before  # the caller's messages are not changed
    dict_form = _history({"city": "Paris", "days": 3})
    dict_form[2] = {**dict_form[2], "name": "get_weather"}
    assert rendered == template.render(dict_form, add_generation_prompt=True)
    assert f"call:get_weather{{city:{Q}Paris{Q},days:3}}" in rendered and "response:get_weather" in rendered


def test_a_whole_tool_round_trip_through_the_chat_api():
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    first = model.create_chat_completion(ASK, tools=[WEATHER_TOOL])["choices"][0]["message"]
    model.set_answer("It is sunny in Paris.")
    second = model.create_chat_completion(
        ASK + [first, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "sunny"}],
        tools=[WEATHER_TOOL])
    assert second["choices"][0]["message"]["content"] == "It is sunny in Paris."
    prompt = model.detokenize(model.calls[1]["prompt_ids"]).decode()
    assert f"{CALL_TEXT}<|tool_response>response:get_weather{Q}sunny{Q}<tool_response|>" in prompt


def test_the_openai_clients_own_message_objects_are_accepted():
    openai = pytest.importorskip("openai")
    model = FakeModel(CALL_TEXT, chat_template=GEMMA4_STYLE)
    first = model.create_chat_completion(ASK, tools=[WEATHER_TOOL])["choices"][0]["message"]
    as_object = openai.types.chat.ChatCompletionMessage.model_validate(first)  # arguments stay a JSON string
    model.set_answer("Sunny.")
    model.create_chat_completion(
        (*ASK, as_object, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "sunny"}),
        tools=[WEATHER_TOOL])
    prompt = model.detokenize(model.calls[1]["prompt_ids"]).decode()
    assert f"{CALL_TEXT}<|tool_response>response:get_weather" in prompt


def test_a_tool_message_with_an_odd_tool_call_id_is_left_to_the_template():
    history = _history(json.dumps({"city": "Paris"}))
    history[2] = {**history[2], "tool_call_id": ["not", "a", "string"]}
    assert "name" not in messages_for_template(history)[2]


@pytest.mark.parametrize("arguments, message", [
    ("{city: Paris}", r"messages\[1\].tool_calls\[0\].function.arguments is not valid JSON"),
    ('["Paris"]', "must be a JSON object, got list"),
])
def test_bad_history_arguments_name_the_message(arguments, message):
    model = FakeModel("ok", chat_template=GEMMA4_STYLE)
    with pytest.raises(InvalidArgumentError, match=message):
        model.create_chat_completion(_history(arguments), tools=[WEATHER_TOOL])
    assert model.calls == []
