"""Read-only summary of a GGUF file for `diffgemma-cpp info`: metadata, tensor type histogram, sizes.

Uses gguf-py's memory-mapped reader, so it is cheap even for a 50 GB file.
"""
from collections import Counter
from pathlib import Path

from .errors import ModelFileError, ModelLoadError

# Arrays longer than this are summarised (vocabularies have 262k entries).
_MAX_ARRAY_SHOWN = 16


def _field_value(field):
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        n = len(field.data)
        if n > _MAX_ARRAY_SHOWN:
            return f"[{n} x {types[-1].name.lower()}]"
        return [_scalar(field, i) for i in field.data]
    return _scalar(field, field.data[0])


def _scalar(field, index):
    import gguf

    part = field.parts[index]
    if field.types[-1] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", "replace")
    value = part.tolist()
    return value[0] if len(value) == 1 else value


def read_summary(path) -> dict:
    """{"metadata": {key: value}, "tensor_types": {type: count}, "n_tensors", "tensor_bytes", "file_bytes"}."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such model file: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf-py raises ValueError/struct errors for foreign or corrupt files
        raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from exc
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        metadata[name] = _field_value(field)
    types = Counter(t.tensor_type.name.lower() for t in reader.tensors)
    return {
        "metadata": metadata,
        "tensor_types": dict(types.most_common()),
        "n_tensors": len(reader.tensors),
        "tensor_bytes": int(sum(int(t.n_bytes) for t in reader.tensors)),
        "file_bytes": path.stat().st_size,
    }


def format_summary(summary: dict) -> str:
    lines = ["metadata:"]
    width = max((len(k) for k in summary["metadata"]), default=0)
    for key, value in summary["metadata"].items():
        text = str(value)
        if len(text) > 120:
            text = text[:117] + "..."
        lines.append(f"  {key:<{width}}  {text}")
    lines.append(f"tensors: {summary['n_tensors']}")
    for name, count in summary["tensor_types"].items():
        lines.append(f"  {name:<8} {count}")
    gib = summary["tensor_bytes"] / 2**30
    lines.append(f"weights: {summary['tensor_bytes']:,} bytes ({gib:.2f} GiB); file {summary['file_bytes']:,} bytes")
    return "\n".join(lines)
