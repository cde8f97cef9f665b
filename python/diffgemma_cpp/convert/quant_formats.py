"""Which quantized checkpoint format a folder holds: config.json `quantization_config` (or Model Optimizer's
hf_quant_config.json) -> a QuantScheme that names, for one weight, the tensors holding its codes and scales.

The formats and the meaning of every field are written down in QUANTIZED_FORMATS.md (next to this file), with
where each fact was learned. This module only decides the scheme; quantized.py reads the tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError, UnsupportedTypeError

# Per-weight activation scales of the W8A8 / W4A4 recipes: the engine runs unquantized activations, so these
# are read past (never an error), like the KV-cache scales.
IGNORED_SUFFIXES = ("input_scale", "input_global_scale", "activation_scale", "input_zero_point", "k_scale",
                    "v_scale", "q_scale")


@dataclass(frozen=True)
class QuantScheme:
    """How one checkpoint stores its quantized weights.

    method: "fp8" (HF fine-grained FP8), "modelopt", or "compressed-tensors"; kind: "fp8", "int8" or "nvfp4";
    codes: suffix that replaces "weight" for the stored codes ("weight", or "weight_packed" for
    compressed-tensors nvfp4); scale: suffix of the (block / channel / tensor) scale; scale2: suffix of the
    per-tensor second-level scale (nvfp4 only); scale2_is_divisor: compressed-tensors stores 1/scale2
    (`weight_global_scale`); block: fp8 block shape [rows, cols] from weight_block_size, or None;
    group: nvfp4 / int8 group size along a row (0 for per-channel / per-tensor)."""
    method: str
    label: str
    kind: str
    codes: str = "weight"
    scale: str = "weight_scale"
    scale2: str | None = None
    scale2_is_divisor: bool = False
    block: tuple | None = None
    group: int = 0
    zero_point: str | None = None

    def describe(self) -> str:
        return f"{self.method} ({self.label})"


def _unsupported(what: str) -> UnsupportedTypeError:
    return UnsupportedTypeError(f"{what}; the converter reads quant_method fp8 (e4m3, per-tensor / per-channel / "
                                "block scales), modelopt NVFP4 and FP8, and compressed-tensors int-quantized (int8), "
                                "float-quantized (fp8) and nvfp4-pack-quantized (see convert/QUANTIZED_FORMATS.md)")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable JSON ({exc})") from None


def load_quant_scheme(directory) -> QuantScheme | None:
    """The checkpoint's QuantScheme, or None for an unquantized (F32/F16/BF16) checkpoint."""
    directory = Path(directory)
    cfg = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if qc is None and isinstance(cfg, dict) and isinstance(cfg.get("text_config"), dict):
        qc = cfg["text_config"].get("quantization_config")
    hqc_path = directory / "hf_quant_config.json"
    if qc is None and hqc_path.is_file():
        hqc = _read_json(hqc_path)
        q = hqc.get("quantization") if isinstance(hqc, dict) else None
        if not isinstance(q, dict):
            raise ModelFileError(f"{hqc_path}: no \"quantization\" object")
        qc = dict(q, quant_method="modelopt")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ModelFileError(f"{directory / 'config.json'}: quantization_config is not an object")
    method = qc.get("quant_method")
    if method == "fp8":
        return _fp8_scheme(qc)
    if method == "modelopt":
        return _modelopt_scheme(qc, hqc_path)
    if method == "compressed-tensors":
        return _compressed_tensors_scheme(qc)
    raise _unsupported(f"quantization_config has quant_method {method!r}, which the converter does not read")


def _fp8_scheme(qc: dict) -> QuantScheme:
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise _unsupported(f"quant_method fp8 with fmt {fmt!r}")
    if qc.get("scale_fmt", "float") not in ("float", None):
        raise _unsupported(f"quant_method fp8 with scale_fmt {qc.get('scale_fmt')!r}")
    block = qc.get("weight_block_size")
    if block is not None:
        if (not isinstance(block, list) or len(block) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise _unsupported(f"quant_method fp8 with weight_block_size {block!r} (expected two positive integers)")
        block = tuple(block)
    label = f"e4m3, {block[0]}x{block[1]} blocks" if block else "e4m3"
    return QuantScheme("fp8", label, "fp8", scale="weight_scale_inv", block=block)


def _modelopt_scheme(qc: dict, hqc_path: Path) -> QuantScheme:
    algo = qc.get("quant_algo")
    if algo is None and hqc_path.is_file():  # config.json may name only the method; the algorithm is here
        q = _read_json(hqc_path).get("quantization", {})
        algo = q.get("quant_algo")
        qc = dict(q, **qc)
    if algo == "NVFP4":
        group = qc.get("group_size", 16)
        if group != 16:
            raise _unsupported(f"quant_method modelopt NVFP4 with group_size {group!r} (the format has 16)")
        return QuantScheme("modelopt", "NVFP4", "nvfp4", scale="weight_scale", scale2="weight_scale_2", group=16)
    if algo == "FP8":
        return QuantScheme("modelopt", "FP8", "fp8", scale="weight_scale")
    raise _unsupported(f"quant_method modelopt with quant_algo {algo!r}")


def _compressed_tensors_scheme(qc: dict) -> QuantScheme:
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _unsupported("quant_method compressed-tensors without config_groups")
    schemes = set()
    for gname, group in groups.items():
        if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
            raise _unsupported(f"compressed-tensors config group {gname!r} has no weights arguments")
        w = group["weights"]
        fmt = group.get("format") or qc.get("format")
        bits, typ, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
        what = (f"compressed-tensors format {fmt!r} (group {gname!r}: {bits}-bit {typ}, strategy {strategy!r}"
                f"{', asymmetric' if w.get('symmetric') is False else ''})")
        if fmt == "int-quantized" and bits == 8 and typ == "int" and strategy in ("channel", "tensor", "group"):
            if w.get("symmetric") is False:
                raise _unsupported(what + ": asymmetric int8 (zero points) is not supported")
            gsize = (w.get("group_size") or 0) if strategy == "group" else 0
            schemes.add(QuantScheme("compressed-tensors", f"int-quantized int8 {strategy}", "int8",
                                    zero_point="weight_zero_point", group=int(gsize)))
        elif fmt == "float-quantized" and bits == 8 and typ == "float" and strategy in ("channel", "tensor", "block"):
            block = w.get("block_structure") if strategy == "block" else None
            if strategy == "block" and (not isinstance(block, list) or len(block) != 2):
                raise _unsupported(what + f": block_structure {block!r}")
            schemes.add(QuantScheme("compressed-tensors", f"float-quantized fp8 {strategy}", "fp8",
                                    block=tuple(block) if block else None))
        elif fmt == "nvfp4-pack-quantized" and bits == 4 and typ == "float" and strategy == "tensor_group":
            if w.get("group_size", 16) != 16:
                raise _unsupported(what + f": group_size {w.get('group_size')!r} (NVFP4 has 16)")
            schemes.add(QuantScheme("compressed-tensors", "nvfp4-pack-quantized", "nvfp4", codes="weight_packed",
                                    scale2="weight_global_scale", scale2_is_divisor=True, group=16))
        else:
            raise _unsupported(what)
    if len(schemes) > 1:
        raise _unsupported("compressed-tensors checkpoint mixing several weight schemes ("
                           + ", ".join(sorted(s.label for s in schemes)) + ")")
    return schemes.pop()
