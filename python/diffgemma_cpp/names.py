"""GGUF key and tensor names, parsed from csrc/core/gguf_names.def (the single name table shared with C).

    from diffgemma_cpp.names import KEY, TENSOR, LAYER_TENSOR, ARCH, key, layer_tensor
    key("BLOCK_COUNT")            -> "diffusion-gemma.block_count"
    layer_tensor("ATTN_Q", 3)     -> "blk.3.attn_q.weight"
"""
import re
from importlib import resources
from pathlib import Path


def _read_table() -> str:
    # Installed: the table ships inside the package; in a source checkout it lives in csrc/core/.
    packaged = resources.files("diffgemma_cpp").joinpath("data/gguf_names.def")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "csrc" / "core" / "gguf_names.def").read_text(encoding="utf-8")


_TEXT = _read_table()
_ENTRY = re.compile(r'^\s*(DG_KEY|DG_TENSOR|DG_LAYER_TENSOR)\((\w+),\s*"([^"]+)"\)', re.M)

ARCH: str = re.search(r'DG_ARCH\("([^"]+)"\)', _TEXT).group(1)
KEY: dict = {}
TENSOR: dict = {}
LAYER_TENSOR: dict = {}
for _kind, _id, _name in _ENTRY.findall(_TEXT):
    {"DG_KEY": KEY, "DG_TENSOR": TENSOR, "DG_LAYER_TENSOR": LAYER_TENSOR}[_kind][_id] = _name


def key(ident: str, arch: str = ARCH) -> str:
    """The GGUF metadata key for a table id, with the architecture prefix filled in."""
    return KEY[ident].replace("%s", arch)


def tensor(ident: str) -> str:
    return TENSOR[ident]


def layer_tensor(ident: str, layer: int) -> str:
    return LAYER_TENSOR[ident].replace("%d", str(layer))
