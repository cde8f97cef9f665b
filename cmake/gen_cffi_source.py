"""Generate the cffi (API mode) C source for the Python bindings from the public header.

Usage: gen_cffi_source.py diffgemma.h OUT.c

The declarations between `// cffi-begin` and `// cffi-end` in diffgemma.h are the cdef, so the header is the
single source of truth for the C API; only the export macro is stripped. Callbacks that Python implements
are declared here as `extern "Python"` (they exist only on the Python side).
"""
import re
import sys

import cffi

# Python-side implementations of the header's callback types (see diffgemma_cpp/_native.py).
PYTHON_CALLBACKS = """
extern "Python" void _dg_py_log_callback(int32_t, const char *, void *);
extern "Python" int32_t _dg_py_step_callback(int32_t, int32_t, int32_t, const int32_t *, int32_t, void *);
extern "Python" void _dg_py_tensor_callback(const char *, int32_t, const int64_t *, const float *, void *);
"""


def extract_cdef(header_text: str) -> str:
    match = re.search(r"// cffi-begin\n(.*?)// cffi-end", header_text, re.S)
    if match is None:
        raise SystemExit("diffgemma.h lacks the '// cffi-begin' ... '// cffi-end' region")
    return match.group(1).replace("DIFFGEMMA_API ", "")


def main() -> None:
    header_path, out_path = sys.argv[1], sys.argv[2]
    with open(header_path, encoding="utf-8") as f:
        cdef = extract_cdef(f.read())
    ffi = cffi.FFI()
    ffi.cdef(cdef + PYTHON_CALLBACKS)
    ffi.set_source("diffgemma_cpp._diffgemma_cffi", '#include "diffgemma.h"')
    ffi.emit_c_code(out_path)


if __name__ == "__main__":
    main()
