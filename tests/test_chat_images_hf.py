"""Our chat prompt with images against HF transformers' whole Gemma4Processor, built offline: HF's GemmaTokenizer
read from the release vocabulary GGUF (../shared), its PIL image processor, Google's template. The processor's
apply_chat_template(tokenize=True) with images and our create_chat_completion must give the same input_ids.

Marked long: HF reads the 262,144-token vocabulary in about 30 s. test_chat_images.py runs the same comparison in
the default suite with HF's functions for each step and our tokenizer."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from test_chat_images import RealVocabModel, three_image_conversation

pytestmark = pytest.mark.long

REAL = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gemma4-real"
# Gemma-4's tokenizer_config names these; the vocabulary GGUF does not carry them.
EXTRA_SPECIAL_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                        "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}


@pytest.fixture(scope="module")
def processor():
    if not (REAL / "ggml-vocab-gemma-4.gguf").is_file():
        pytest.skip(f"the release Gemma-4 vocabulary is not here ({REAL}: ../shared is absent in a user's clone)")
    pytest.importorskip("transformers")
    pytest.importorskip("PIL.Image")
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    from transformers.processing_utils import ProcessorMixin

    tokenizer = GemmaTokenizer.from_pretrained(REAL, gguf_file="ggml-vocab-gemma-4.gguf",
                                               extra_special_tokens=EXTRA_SPECIAL_TOKENS)
    template = (REAL / "chat_template.gemma-4-26B-A4B.jinja").read_text()
    # The video processor needs torchvision, which the test environment lacks; images never reach it, so the
    # processor is built without one (its constructor's class check would refuse None).
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        yield Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                              image_processor=Gemma4ImageProcessorPil(), tokenizer=tokenizer, video_processor=None,
                              chat_template=template), template
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def test_input_ids_equal_hf_gemma4_processor(processor):
    from PIL import Image as PILImage

    from diffgemma_cpp.tokenizer import Tokenizer

    hf, template = processor
    rng = np.random.default_rng(9)
    a, b, c = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((120, 200, 3), (500, 90, 3), (33, 33, 3)))
    messages = three_image_conversation(a, b, PILImage.fromarray(c))
    theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    with Tokenizer.from_gguf(REAL / "ggml-vocab-gemma-4.gguf") as tok:
        model = RealVocabModel(tok, template)
        model.create_chat_completion(messages, max_tokens=8)
        ours = model.calls[-1]["prompt_ids"]
    hf_ids = list(np.asarray(theirs["input_ids"]).reshape(-1))
    assert ours == hf_ids
    assert [im.width for im in model.calls[-1]["images"]] == [200, 90, 33]
