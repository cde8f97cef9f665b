"""HF safetensors -> GGUF converter and GGUF requantizer for DiffusionGemma.

    from diffgemma_cpp.convert import convert_checkpoint, requantize_gguf
    convert_checkpoint("diffusiongemma-26B-A4B-it", "dg-q4_k_m.gguf", "q4_k_m")

Layout: checkpoint.py (lazy safetensors reader), hparams.py (config -> model keys), vocab.py (tokenizer keys),
quant_formats.py (which quantized format a checkpoint holds), quantized.py (fp8 / int8 / NVFP4 weights read row
by row, split experts re-fused; QUANTIZED_FORMATS.md documents the formats), tensors.py (HF -> GGUF
names/shapes), mmproj.py (the vision tower as a projector GGUF, MMPROJ_FORMAT.md), quant_rules.py (per-tensor
types), encode.py (ggml quantization), writer.py (streaming GGUF writer), pipeline.py (the two jobs), cli.py
(the subcommands).
"""
from .cli import add_convert_parser, add_quantize_parser
from .pipeline import convert_checkpoint, requantize_gguf

__all__ = ["convert_checkpoint", "requantize_gguf", "add_convert_parser", "add_quantize_parser"]
