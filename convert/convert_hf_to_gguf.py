#!/usr/bin/env python3
"""Convert a Hugging Face DiffusionGemma checkpoint to GGUF (same as `diffgemma-cpp convert`).

    python convert/convert_hf_to_gguf.py HF_DIR --outfile model.gguf --outtype q4_k_m
"""
import sys

from diffgemma_cpp.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
