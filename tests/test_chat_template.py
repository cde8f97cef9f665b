"""Chat-template rendering must equal transformers' apply_chat_template for the same template and inputs."""

from __future__ import annotations

import pathlib

import pytest

from diffgemma_cpp.chat import ChatTemplate, ChatTemplateError

HERE = pathlib.Path(__file__).parent
GEMMA4_STYLE = (HERE / "chat_templates" / "gemma4_style.jinja").read_text()
SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}

# ---- simple templates of the kinds found on the Hub -----------------------------------------

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tools as pretty JSON, tool calls via tojson, strict alternation via raise_exception.
TOOLS_JSON = """{{ bos_token }}
{%- if tools %}
<tools>
{% for tool in tools %}{{ tool | tojson(indent=2) }}
{% endfor %}</tools>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' and loop.previtem is defined and loop.previtem.role == 'user' %}
{{- raise_exception('two user messages in a row') }}
{%- endif %}
[{{ message.role | upper }}] {{ message.content | default('') }}
{%- if message.tool_calls is defined %}
{%- for call in message.tool_calls %} <call>{{ call.function | tojson }}</call>{% endfor %}
{%- endif %}
{{ eos_token if message.role == 'assistant' else '' }}
{% endfor %}
{%- if add_generation_prompt %}[ASSISTANT]{% endif %}"""

# Llama-2-like: system folded into the first user turn, whitespace control, namespace and dict().
LLAMA2_LIKE = """{%- set ns = namespace(system='') -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}
{%- else -%}{%- set msgs = messages -%}{%- endif -%}
{%- set meta = dict(first=true) -%}
{%- for m in msgs -%}
  {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('roles must alternate user/assistant') }}{%- endif -%}
  {%- if m['role'] == 'user' -%}
    {{ bos_token }}[INST] {% if loop.first and ns.system %}<<SYS>>
{{ ns.system }}
<</SYS>>

{% endif %}{{ m['content'] | trim }} [/INST]
  {%- else -%}
 {{ m['content'] | trim }} {{ eos_token }}
  {%- endif -%}
{%- endfor -%}"""

# {% generation %} markers (used by HF for assistant masks) must render their body.
GENERATION_TAGS = (
    "{% for m in messages %}<{{ m.role }}>"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
    "</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)

# ---- tools and conversations ----------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city. Returns <b>HTML-ish</b> & quotes' text.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "description": "Forecast days"},
                "options": {"type": "object", "properties": {"wind": {"type": "boolean"}}, "required": ["wind"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "$comment": {"type": "string"},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {"type": "function", "function": {"name": "search", "description": "Search the web.",
                                                 "parameters": {"type": "object",
                                                                "properties": {"query": {"type": "string"}},
                                                                "required": ["query"]}}}
BARE_TOOL = {"name": "now", "description": "The time."}

SYSTEM = {"role": "system", "content": "You are a terse assistant.\n"}
USER_1 = {"role": "user", "content": "Why is the sky blue?"}
ASSISTANT_1 = {"role": "assistant", "content": "Rayleigh scattering.  "}
USER_2 = {"role": "user", "content": "  And sunsets? 🌅 <b>bold</b> \"quoted\" 'single'  "}
TOOL_CALL_TURN = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius", "days": 2,
                                                       "options": {"wind": True}, "tags": ["a", "b"]}}}]}
TOOL_CALL_STRING_ARGS = {"role": "assistant", "tool_calls": [
    {"type": "function", "function": {"name": "search", "arguments": "{\"query\": \"ggml\"}"}}]}
TOOL_RESPONSE = {"role": "tool", "name": "get_weather", "content": {"temp": 21.5, "sky": "clear", "wind": None}}
TOOL_RESPONSE_TEXT = {"role": "tool", "name": "search", "content": "ggml is a tensor library"}
TWO_CALLS = {"role": "assistant", "content": "Let me check both.", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
    {"type": "function", "function": {"name": "search", "arguments": {"query": "Oslo events"}}}]}
THINKING_ANSWER = {"role": "assistant", "content": "Blue light scatters more.",
                   "reasoning_content": "  Short wavelengths scatter more (λ^-4).  "}
OLD_THINKING = {"role": "assistant", "content": "Rayleigh.", "thinking": "old reasoning that must be dropped"}
MULTIMODAL_USER = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is this? "}]}

GEMMA_CASES = {
    "single_user": dict(messages=[USER_1]),
    "single_user_no_prompt": dict(messages=[USER_1], add_generation_prompt=False),
    "system_user": dict(messages=[SYSTEM, USER_1]),
    "developer_role": dict(messages=[{"role": "developer", "content": "Be brief."}, USER_1]),
    "multi_turn": dict(messages=[SYSTEM, USER_1, ASSISTANT_1, USER_2]),
    "multi_turn_no_system": dict(messages=[USER_1, ASSISTANT_1, USER_2]),
    "thinking_on": dict(messages=[USER_1], enable_thinking=True),
    "thinking_on_system": dict(messages=[SYSTEM, USER_1], enable_thinking=True),
    "thinking_off_explicit": dict(messages=[SYSTEM, USER_1], enable_thinking=False),
    "thinking_history_current_turn": dict(messages=[USER_1, THINKING_ANSWER], add_generation_prompt=False,
                                          enable_thinking=True),
    "thinking_history_dropped": dict(messages=[USER_1, OLD_THINKING, USER_2], enable_thinking=True),
    "tools_declared": dict(messages=[USER_1], tools=[WEATHER_TOOL, SEARCH_TOOL]),
    "tools_bare_schema": dict(messages=[SYSTEM, USER_1], tools=[BARE_TOOL]),
    "tool_call_and_response": dict(messages=[SYSTEM, USER_1, TOOL_CALL_TURN, TOOL_RESPONSE],
                                   tools=[WEATHER_TOOL]),
    "tool_call_string_args": dict(messages=[USER_1, TOOL_CALL_STRING_ARGS, TOOL_RESPONSE_TEXT],
                                  tools=[SEARCH_TOOL]),
    "two_calls_two_responses": dict(messages=[USER_1, TWO_CALLS, TOOL_RESPONSE, TOOL_RESPONSE_TEXT, ASSISTANT_1,
                                              USER_2], tools=[WEATHER_TOOL, SEARCH_TOOL]),
    "tools_thinking": dict(messages=[SYSTEM, USER_1, TOOL_CALL_TURN, TOOL_RESPONSE], tools=[WEATHER_TOOL],
                           enable_thinking=True),
    "open_tool_call_at_end": dict(messages=[USER_1, TOOL_CALL_TURN], tools=[WEATHER_TOOL],
                                  add_generation_prompt=False),
    "multimodal_content": dict(messages=[SYSTEM, MULTIMODAL_USER]),
    "model_role_alias": dict(messages=[USER_1, {"role": "model", "content": "Hi."}, USER_2]),
    "unicode_and_specials_in_text": dict(messages=[{"role": "user", "content": "<|turn>x<turn|> ñ 中文 \u0301e\t\n\n"}]),
    "with_date_helper": dict(messages=[USER_1], with_date=True),
    "continue_final": dict(messages=[USER_1, {"role": "assistant", "content": "The sky is"}],
                           add_generation_prompt=False, continue_final_message=True),
}

SIMPLE_CASES = {
    "chatml_multi": (CHATML, dict(messages=[SYSTEM, USER_1, ASSISTANT_1, USER_2])),
    "chatml_no_prompt": (CHATML, dict(messages=[USER_1, ASSISTANT_1], add_generation_prompt=False)),
    "tools_json": (TOOLS_JSON, dict(messages=[USER_1, TOOL_CALL_TURN], tools=[WEATHER_TOOL, BARE_TOOL])),
    "tools_json_plain": (TOOLS_JSON, dict(messages=[USER_1, ASSISTANT_1, USER_2])),
    "llama2_system": (LLAMA2_LIKE, dict(messages=[SYSTEM, USER_1, ASSISTANT_1, USER_2],
                                        add_generation_prompt=False)),
    "llama2_no_system": (LLAMA2_LIKE, dict(messages=[USER_1], add_generation_prompt=False)),
    "generation_tags": (GENERATION_TAGS, dict(messages=[USER_1, ASSISTANT_1, USER_2])),
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer whose only job is apply_chat_template (no vocab needed beyond specials)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    assert tok.special_tokens_map == SPECIAL_TOKENS
    return tok


def _both(hf_tokenizer, template: str, case: dict) -> tuple[str, str]:
    kwargs = dict(case)
    messages = kwargs.pop("messages")
    kwargs.setdefault("add_generation_prompt", True)
    expected = hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    ours = ChatTemplate(template, special_tokens=SPECIAL_TOKENS).render(messages, **kwargs)
    return ours, expected


@pytest.mark.parametrize("name", sorted(GEMMA_CASES))
def test_gemma4_style_matches_transformers(hf_tokenizer, name):
    ours, expected = _both(hf_tokenizer, GEMMA4_STYLE, GEMMA_CASES[name])
    assert ours == expected


@pytest.mark.parametrize("name", sorted(SIMPLE_CASES))
def test_simple_templates_match_transformers(hf_tokenizer, name):
    template, case = SIMPLE_CASES[name]
    ours, expected = _both(hf_tokenizer, template, case)
    assert ours == expected


def test_parity_case_count():
    # The acceptance bar is >= 20 conversations compared with transformers.
    assert len(GEMMA_CASES) + len(SIMPLE_CASES) >= 20


# ---- behaviour the parity cases rely on (these fail if the feature is missing) ----------------


def _gemma(**kwargs):
    return ChatTemplate(GEMMA4_STYLE, special_tokens=SPECIAL_TOKENS).render(**kwargs)


def test_generation_prompt_closes_empty_thought_when_thinking_off():
    text = _gemma(messages=[USER_1], add_generation_prompt=True)
    assert text.startswith("<bos><|turn>user\nWhy is the sky blue?<turn|>\n")
    assert text.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert "<|think|>" not in text


def test_thinking_on_marks_system_turn_and_leaves_turn_open():
    text = _gemma(messages=[USER_1], add_generation_prompt=True, enable_thinking=True)
    assert text.startswith("<bos><|turn>system\n<|think|><turn|>\n")
    assert text.endswith("<|turn>model\n")


def test_tools_render_declarations_and_calls():
    text = _gemma(messages=[USER_1, TOOL_CALL_TURN, TOOL_RESPONSE], tools=[WEATHER_TOOL])
    assert "<|tool>declaration:get_weather{" in text
    assert "<|tool_call>call:get_weather{city:<|\"|>Zürich<|\"|>" in text
    assert '<|tool_response>response:get_weather{"sky":"clear","temp":21.5,"wind":null}<tool_response|>' in text


def test_tojson_does_not_html_escape():
    text = ChatTemplate("{{ messages | tojson }}").render([{"role": "user", "content": "<a href='x'>&</a>"}])
    assert "<a href='x'>&</a>" in text


def test_none_values_are_dropped_and_reasoning_is_aliased():
    text = ChatTemplate("{% for m in messages %}{{ m | tojson(sort_keys=true) }}{% endfor %}").render(
        [{"role": "assistant", "content": None, "reasoning": "r"}])
    assert text == '{"reasoning": "r", "reasoning_content": "r", "role": "assistant", "thinking": "r"}'


def test_raise_exception_becomes_chat_template_error():
    with pytest.raises(ChatTemplateError, match="role must be user, assistant or tool, not narrator"):
        _gemma(messages=[{"role": "narrator", "content": "x"}])


def test_tool_response_without_call_is_rejected():
    with pytest.raises(ChatTemplateError, match="must follow an assistant tool call"):
        _gemma(messages=[USER_1, TOOL_RESPONSE_TEXT])


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = [1] %}{{ x.append(2) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",
    "{{ messages.__class__ }}{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_blocks_escapes_and_mutation(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([USER_1])


@pytest.mark.parametrize("source", ["", "   ", "{% for m in messages %}", "{{ messages[0].content | nosuchfilter }}"])
def test_bad_templates_fail_clearly(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([USER_1])


@pytest.mark.parametrize("messages", [[], "hello", [42], None])
def test_bad_messages_fail_clearly(messages):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(CHATML).render(messages)


def test_caller_objects_are_not_exposed_to_the_template():
    class Secret:
        def leak(self):
            return "leaked"

    text = ChatTemplate("{{ messages[0].content }}").render([{"role": "user", "content": Secret()}])
    assert text == "<Secret>"


def test_callers_messages_are_not_modified():
    messages = [USER_1, {"role": "assistant", "content": "The sky is", "tool_calls": None}]
    before = repr(messages)
    _gemma(messages=messages, continue_final_message=True)
    assert repr(messages) == before
