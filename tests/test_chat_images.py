"""Images in chats: OpenAI / HF content parts rendered as HF's processor renders them, each image marker expanded
into begin-of-image + soft tokens + end-of-image, the decoded images handed to the engine in prompt order, and
the errors (no projector, a template that drops images, a prompt that no longer fits).

The engine is the fake one (tests/_fake_engine.py); the parity tests run Google's Gemma-4 template and the release
vocabulary from ../shared against HF transformers' own pieces of Gemma4Processor."""

from __future__ import annotations

import base64
import io
import pathlib

import numpy as np
import pytest

from _fake_engine import BOI, BOS, EOI, IMAGE, FakeModel, gemma4_image_tokens
from diffgemma_cpp.errors import ContextOverflowError, ImageError, InvalidArgumentError
from diffgemma_cpp.images import BOI_TEXT, EOI_TEXT, Image, expand_image_markers, split_image_parts

GEMMA4_STYLE = (pathlib.Path(__file__).parent / "chat_templates" / "gemma4_style.jinja").read_text()
REAL = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gemma4-real"


def pixels(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_data_url(a) -> str:
    pil = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    pil.fromarray(a).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def three_image_conversation(a, b, third) -> list:
    """A system turn, a user turn with image a before its text, an answer, a user turn with text, image b and a
    third image part `third` (HF's {"type": "image", "image": ...} form): the order and forms HF's processor
    must agree with us on."""
    return [
        {"role": "system", "content": "You describe pictures."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(a)}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "Noise."},
        {"role": "user", "content": [{"type": "text", "text": "And these two?"},
                                     {"type": "image_url", "image_url": {"url": png_data_url(b)}},
                                     {"type": "image", "image": third}]},
    ]


def vision_model(**kw):
    return FakeModel("A cat.", chat_template=GEMMA4_STYLE, canvas_length=8, has_vision=True, **kw)


def runs(ids, token=IMAGE):
    """[(start, length)] of each run of `token`."""
    out = []
    for i, t in enumerate(ids):
        if t == token:
            if i and ids[i - 1] == token:
                out[-1][1] += 1
            else:
                out.append([i, 1])
    return [tuple(r) for r in out]


# ---- parts and markers --------------------------------------------------------------------------


def test_split_image_parts_converts_openai_parts_as_hf_does():
    a = pixels(2, 2)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}},
                                     {"type": "image_url", "image_url": "/tmp/b.png"}]},
        {"role": "user", "content": [{"type": "image", "image": a}, {"type": "image", "base64": "aGk="}]},
    ]
    out, sources = split_image_parts(messages)
    assert out[0] is messages[0]
    assert out[1]["content"] == [{"type": "text", "text": "Compare"},
                                 {"type": "image", "url": "data:image/png;base64,AAA"},
                                 {"type": "image", "url": "/tmp/b.png"}]
    assert sources[:2] == ["data:image/png;base64,AAA", "/tmp/b.png"] and sources[2] is a and sources[3] == b"hi"
    assert messages[1]["content"][1]["type"] == "image_url"  # the caller's messages are not changed
    assert split_image_parts(out)[0] == out  # idempotent


@pytest.mark.parametrize("part, match", [
    ({"type": "image_url"}, "image_url.url"),
    ({"type": "image_url", "image_url": {"url": 3}}, "image_url.url"),
    ({"type": "image"}, "exactly one"),
    ({"type": "image", "url": "a.png", "path": "b.png"}, "exactly one"),
    ({"type": "image", "base64": "!!"}, "base64"),
])
def test_malformed_image_parts(part, match):
    with pytest.raises(ImageError, match=match):
        split_image_parts([{"role": "user", "content": [part]}])


def test_expand_image_markers():
    def tokenize(text, add_bos):
        return ([0] if add_bos else []) + [ord(c) for c in text]

    images = [Image(1, 1, b"abc"), Image(2, 1, b"abcdef")]
    ids = expand_image_markers("a<M>b<M>", images, marker="<M>", image_token=9, boi=7, eoi=8,
                               n_tokens=lambda w, h: w + 1, tokenize=tokenize)
    assert ids == [0, ord("a"), 7, 9, 9, 8, ord("b"), 7, 9, 9, 9, 8]
    with pytest.raises(ImageError, match="wrote 1 image marker"):
        expand_image_markers("a<M>", images, marker="<M>", image_token=9, boi=7, eoi=8, n_tokens=lambda w, h: 1,
                             tokenize=tokenize)


# ---- create_chat_completion ---------------------------------------------------------------------


def test_chat_with_images_hands_the_engine_the_ids_and_the_pixels():
    model = vision_model()
    first, second = pixels(30, 50, 1), pixels(200, 10, 2)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(first)}},
        {"type": "text", "text": "and"},
        {"type": "image", "image": second},
        {"type": "text", "text": "What differs?"}]}]
    out = model.create_chat_completion(messages, max_tokens=16, seed=1)
    assert out["choices"][0]["message"]["content"] == "A cat."
    call = model.calls[0]
    ids, images = call["prompt_ids"], call["images"]
    assert [(i.width, i.height) for i in images] == [(50, 30), (10, 200)]
    assert images[0].to_numpy().tolist() == first.tolist() and images[1].to_numpy().tolist() == second.tolist()
    n = [gemma4_image_tokens(50, 30), gemma4_image_tokens(10, 200)]
    assert [length for _, length in runs(ids)] == n and n[0] != n[1]
    for (start, length) in runs(ids):
        assert ids[start - 1] == BOI and ids[start + length] == EOI
    assert ids.count(BOI) == ids.count(EOI) == 2 and ids[0] == BOS
    # Outside the soft tokens the prompt is the template's text, with the marker where each image was.
    text = model.apply_chat_template(messages)
    first_start, first_len = runs(ids)[0]
    second_start, second_len = runs(ids)[1]
    rebuilt = (model.detokenize(ids[:first_start - 1]) + b"<|image|>"
               + model.detokenize(ids[first_start + first_len + 1:second_start - 1]) + b"<|image|>"
               + model.detokenize(ids[second_start + second_len + 1:]))
    assert rebuilt.decode() == text and "<|image|>and<|image|>What differs?" in text
    assert out["usage"]["prompt_tokens"] == len(ids)  # the soft tokens count, as in HF's input_ids


def test_text_only_chat_passes_no_images():
    model = vision_model()
    model.create_chat_completion([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], max_tokens=8)
    assert model.calls[0]["images"] is None and IMAGE not in model.calls[0]["prompt_ids"]


def test_streaming_chat_with_an_image():
    model = vision_model()
    chunks = list(model.create_chat_completion(
        [{"role": "user", "content": [{"type": "image", "image": pixels(9, 9)}, {"type": "text", "text": "?"}]}],
        max_tokens=16, stream=True))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "A cat."
    assert len(model.calls[0]["images"]) == 1


def test_create_completion_with_images_expands_the_prompts_markers():
    model = vision_model()
    out = model.create_completion("Caption <|image|>:", images=[pixels(10, 10)], max_tokens=8)
    assert out["choices"][0]["text"] == "A cat."
    ids = model.calls[0]["prompt_ids"]
    assert runs(ids) == [(len("Caption ") + 2, gemma4_image_tokens(10, 10))]
    assert ids[:2] == [BOS, ids[1]] and model.detokenize(ids[1:len("Caption ") + 1]) == b"Caption "
    with pytest.raises(ImageError, match="wrote 1 image marker"):
        model.create_completion("<|image|>", images=[pixels(2, 2), pixels(2, 2)])
    with pytest.raises(InvalidArgumentError, match="text prompt"):
        model.create_completion([BOS, 20], images=[pixels(2, 2)])
    with pytest.raises(ImageError, match="no vision projector"):
        FakeModel("x").create_completion("<|image|>", images=[pixels(2, 2)])
    assert len(model.calls) == 1


def test_apply_chat_template_renders_image_url_parts_like_hf_image_parts():
    model = vision_model()
    openai_form = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                {"type": "text", "text": "Describe."}]}]
    hf_form = [{"role": "user", "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "Describe."}]}]
    assert model.apply_chat_template(openai_form) == model.apply_chat_template(hf_form)
    assert "<|image|>Describe." in model.apply_chat_template(openai_form)


def test_a_text_model_refuses_images_before_decoding_them():
    model = FakeModel("x", chat_template=GEMMA4_STYLE)  # no projector
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}
    with pytest.raises(ImageError, match="no vision projector.*mmproj"):
        model.create_chat_completion([message])
    assert model.calls == []


def test_bad_image_is_an_image_error_and_nothing_runs():
    model = vision_model()
    with pytest.raises(ImageError, match="not valid base64"):
        model.create_chat_completion([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}])
    with pytest.raises(ImageError, match="never fetches"):
        model.create_chat_completion([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert model.calls == []


def test_literal_marker_in_the_text_is_refused():
    model = vision_model()
    with pytest.raises(ImageError, match="wrote 2 image marker"):
        model.create_chat_completion([{"role": "user", "content": [
            {"type": "image", "image": pixels(4, 4)}, {"type": "text", "text": "what is <|image|>?"}]}])


def test_template_without_image_support_is_refused():
    model = vision_model()
    model.chat_template = "{% for m in messages %}{{ m.role }}{% endfor %}"
    with pytest.raises(ImageError, match="wrote 0 image marker"):
        model.create_chat_completion([{"role": "user", "content": [{"type": "image", "image": pixels(4, 4)}]}])


def test_images_that_overflow_the_context_raise_context_overflow():
    model = vision_model(n_ctx=400)
    message = {"role": "user", "content": [{"type": "image", "image": pixels(64, 64)},
                                           {"type": "image", "image": pixels(64, 64)}, {"type": "text", "text": "?"}]}
    with pytest.raises(ContextOverflowError, match="max_tokens"):
        model.create_chat_completion([message], max_tokens=16)
    model.create_chat_completion([{**message, "content": message["content"][1:]}], max_tokens=16)  # one fits
    assert len(model.calls) == 1


def test_fake_engine_counts_match_hf_image_processor():
    pytest.importorskip("PIL.Image")
    gemma4 = pytest.importorskip("transformers.models.gemma4.image_processing_pil_gemma4")
    from PIL import Image as PILImage

    sizes = [(300, 100), (41, 37), (10, 1000), (1000, 10), (768, 768), (1, 1), (5000, 3000)]
    hf = gemma4.Gemma4ImageProcessorPil()(
        images=[PILImage.new("RGB", size) for size in sizes])["num_soft_tokens_per_image"]
    assert [gemma4_image_tokens(w, h) for w, h in sizes] == list(hf)


# ---- parity with HF on Google's template and the release vocabulary -----------------------------


class RealVocabModel(FakeModel):
    """The fake engine with the release Gemma-4 vocabulary (our C tokenizer, equal to HF's: test_tokenizer_parity)."""

    def __init__(self, tokenizer, template):
        self._tok = tokenizer
        super().__init__("", chat_template=template, has_vision=True)
        self.tokenizer = tokenizer
        self.n_vocab = tokenizer.n_tokens
        self.image_token = 258880

    def tokenize(self, text, add_bos=True, special=True):
        return self._tok.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids):
        return self._tok.detokenize(list(ids))


@pytest.fixture(scope="module")
def real():
    if not (REAL / "ggml-vocab-gemma-4.gguf").is_file():
        pytest.skip(f"the release Gemma-4 vocabulary is not here ({REAL}: ../shared is absent in a user's clone)")
    from diffgemma_cpp.tokenizer import Tokenizer

    template = (REAL / "chat_template.gemma-4-26B-A4B.jinja").read_text()
    with Tokenizer.from_gguf(REAL / "ggml-vocab-gemma-4.gguf") as tok:
        yield RealVocabModel(tok, template), tok, template


def test_release_vocabulary_has_hf_image_token_ids(real):
    model, tok, _ = real
    pytest.importorskip("transformers")
    from transformers.models.diffusion_gemma.configuration_diffusion_gemma import DiffusionGemmaConfig

    config = DiffusionGemmaConfig()
    assert tok.tokenize(BOI_TEXT, add_bos=False) == [config.boi_token_id] == [255999]
    assert tok.tokenize(EOI_TEXT, add_bos=False) == [config.eoi_token_id] == [258882]
    assert tok.token_text(config.image_token_id) == "<|image|>" and model.image_token == config.image_token_id


def test_prompt_ids_equal_hf_processor_on_the_release_template(real):
    """HF's processor.apply_chat_template(tokenize=True) with images: normalise the conversation (image_url ->
    image), render the template, replace each <|image|> with boi + n x image + eoi, tokenize. We run HF's own
    functions for each step but the tokenizer (HF's Gemma-4 tokenizer cannot be built offline from the vocab GGUF;
    ours equals it, test_tokenizer_parity) and compare the ids."""
    pytest.importorskip("transformers")
    pytest.importorskip("PIL.Image")
    from types import SimpleNamespace

    from PIL import Image as PILImage
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    from transformers.processing_utils import ProcessorMixin
    from transformers.utils.chat_template_utils import render_jinja_template

    model, tok, template = real
    a, b = pixels(120, 200, 3), pixels(500, 90, 4)
    messages = three_image_conversation(a, b, a)
    model.create_chat_completion(messages, max_tokens=8)
    ours = model.calls[-1]["prompt_ids"]

    conversations, _ = ProcessorMixin._normalize_conversations(None, messages)
    rendered, _ = render_jinja_template(conversations=conversations, chat_template=template,
                                        add_generation_prompt=True, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    counts = Gemma4ImageProcessorPil()(images=[PILImage.fromarray(x) for x in (a, b, a)])["num_soft_tokens_per_image"]
    hf_tokens = SimpleNamespace(boi_token=BOI_TEXT, image_token="<|image|>", eoi_token=EOI_TEXT)
    replacements = [Gemma4Processor.replace_image_token(hf_tokens, {"num_soft_tokens_per_image": counts}, i)
                    for i in range(3)]
    processor = SimpleNamespace(all_special_multimodal_tokens=["<|image|>"], image_token="<|image|>",
                                video_token=None, audio_token=None)
    (expanded,), _ = ProcessorMixin.get_text_with_replacements(processor, list(rendered), replacements)
    assert expanded.startswith("<bos>")  # HF then tokenizes without adding another
    theirs = tok.tokenize(expanded, add_bos=False)
    assert ours == theirs
    assert [length for _, length in runs(ours, 258880)] == list(counts)
    assert ours.count(255999) == ours.count(258882) == 3
