"""python -m diffgemma_cpp.convert HF_DIR --outfile OUT.gguf --outtype TYPE"""
import sys

from .cli import main

sys.exit(main())
