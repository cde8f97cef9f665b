"""The two jobs: HF checkpoint -> GGUF (`convert_checkpoint`) and GGUF -> requantized GGUF (`requantize_gguf`).

Both build a plan (ordered metadata + ordered output tensors with a row source and a type each), then either
print it (`dry_run`) or hand it to the streaming writer.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType as VT
from gguf.utility import size_label as gguf_size_label

from .. import names
from ..errors import (InvalidArgumentError, ModelFileError, ModelLoadError, UnsupportedModelError,
                      UnsupportedTypeError)
from .checkpoint import Checkpoint, bf16_to_f32
from .hparams import load_generation_eos, load_hparams, model_kv
from .mmproj import (CLIP_ARCH, assign_mmproj_types, load_vision_hparams, mmproj_kv, plan_mmproj_tensors,
                     projector_outtype, text_vision_kv)
from .quant_formats import load_quant_scheme
from .quant_rules import FLOAT_TYPES, assign_types, parse_outtype, parse_overrides
from .tensors import RowSource, OutTensor, array_source, out_scale_name, plan_tensors, role_of
from .vocab import load_vocab, vocab_kv
from .writer import Staging, tensor_nbytes, write_gguf

logger = logging.getLogger("diffgemma_cpp.convert")


def size_label(tensors) -> str:
    """Parameter-count label as llama.cpp computes it ("128x2.6B" for the release)."""
    total = shared = expert = 0
    expert_sum = n_expert_tensors = 0
    for t in tensors:
        n = int(np.prod(t.ne))
        total += n
        if "_exps." in t.name and len(t.ne) >= 3:
            expert += n // t.ne[2]
            expert_sum += t.ne[2]
            n_expert_tensors += 1
        else:
            shared += n
    count = expert_sum // n_expert_tensors if n_expert_tensors else 0
    return gguf_size_label(total, shared, expert, count)


def format_plan(tensors, paths=()) -> str:
    """The --dry-run listing: every output tensor with its type, shape and size, then the total."""
    from gguf.gguf_writer import GGUFWriter

    lines = [f"{'tensor':<40} {'type':<6} {'shape (ne)':<24} {'size':>10}"]
    for t in tensors:
        lines.append(f"{t.name:<40} {Q(t.qtype).name:<6} {str(list(t.ne)):<24} "
                     f"{GGUFWriter.format_n_bytes_to_str(tensor_nbytes(t)):>10}")
    total = sum(tensor_nbytes(t) for t in tensors)
    counts: dict[str, int] = {}
    for t in tensors:
        counts[Q(t.qtype).name] = counts.get(Q(t.qtype).name, 0) + 1
    lines.append(f"{len(tensors)} tensors, {GGUFWriter.format_n_bytes_to_str(total)} "
                 f"({total} bytes); types: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    for p in paths:
        lines.append(f"would write {p}")
    return "\n".join(lines)


def _emit(msg: str, quiet: bool) -> None:
    logger.info(msg)
    if not quiet:
        print(msg, flush=True)


def add_out_scales(tensors) -> list:
    """After each weight kept in NVFP4 from an NVFP4 checkpoint, its second-level scale as an F32 sidecar
    ("<weight>.out_scale": one value per output row, [rows] or [rows, experts]) that the graph multiplies the
    product by. A weight re-encoded to another type has its scale applied in its dequantized values instead."""
    out = []
    for t in tensors:
        out.append(t)
        if t.qtype != Q.NVFP4 or t.source.raw_type != Q.NVFP4 or t.source.row_scale is None:
            continue
        name = out_scale_name(t.name)
        if name is None:
            raise UnsupportedModelError(f"{t.hf_name or t.name}: NVFP4 is not supported for this tensor")
        scale = t.source.row_scale()
        ne = (t.ne[1],) if len(t.ne) == 2 else (t.ne[1], t.ne[2])
        s = OutTensor(name, ne, "scale", t.layer, array_source(scale.reshape(tuple(reversed(ne)))), t.hf_name)
        s.qtype = Q.F32
        out.append(s)
    return out


def file_type_main(tensors) -> int:
    """The most common type among the matrices (by bytes): what names a `auto` conversion of a quantized file."""
    sizes: dict = {}
    for t in tensors:
        if t.n_dims >= 2 and t.role not in ("scale",):
            sizes[t.qtype] = sizes.get(t.qtype, 0) + tensor_nbytes(t)
    return max(sizes, key=sizes.get)


def _file_type(tensors, ot):
    from gguf import LlamaFileType as FT

    main = Q(file_type_main(tensors))
    return {Q.NVFP4: FT.MOSTLY_NVFP4, Q.Q8_0: FT.MOSTLY_Q8_0, Q.BF16: FT.MOSTLY_BF16, Q.F16: FT.MOSTLY_F16,
            Q.F32: FT.ALL_F32}.get(main, ot.file_type)


def convert_checkpoint(hf_dir, outfile=None, outtype: str = "auto", *, tensor_types=(), dry_run: bool = False,
                       split_max_size: int = 0, threads: int | None = None, progress: bool = True,
                       quiet: bool = False, mmproj=None, mmproj_outtype: str | None = None,
                       mmproj_only: bool = False) -> list:
    """Convert a HF DiffusionGemma checkpoint directory to GGUF. Returns the written paths ([] for a dry run).

    mmproj: also write the vision tower as a projector GGUF at this path (llama.cpp's Gemma-4 "clip" layout,
    mmproj.py), in the same run; both files are published only once both are written. Its type is
    `mmproj_outtype` (f32 / f16 / bf16 / q8_0), by default --outtype's when that is one of those, else the
    checkpoint's 16-bit float type. mmproj_only: write the projector alone (no text GGUF, no tokenizer needed)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ModelFileError(f"{hf_dir}: not a directory (expected a Hugging Face checkpoint folder)")
    if mmproj_only and mmproj is None:
        raise InvalidArgumentError("--mmproj-only needs --mmproj OUT (where to write the projector)")
    hp = load_hparams(hf_dir)
    vhp = None
    if mmproj is not None:
        vhp = load_vision_hparams(hf_dir)
        if vhp is None:
            raise UnsupportedModelError(f"{hf_dir}: config.json has no vision_config, so the checkpoint has no vision "
                                        "tower to write as a projector; leave out --mmproj")
    vocab = None if mmproj_only else load_vocab(hf_dir, generation_eos=load_generation_eos(hf_dir))
    overrides = parse_overrides(tensor_types)
    scheme = load_quant_scheme(hf_dir)
    if scheme is not None:
        _emit(f"quantized checkpoint: {scheme.describe()}", quiet)
    with Checkpoint(hf_dir) as ckpt:
        jobs = []  # (outfile, kv, tensors, arch, what)
        if not mmproj_only:
            tensors = plan_tensors(hp, ckpt, n_vocab_out=len(vocab), log=lambda m: _emit(m, quiet), scheme=scheme,
                                   vision_converted=mmproj is not None)
            source_dtypes = {t.source.dtype for t in tensors if t.hf_name}
            ot = parse_outtype(outtype, source_dtypes)
            keep_native = scheme is not None and outtype.lower() == "auto"
            assign_types(tensors, ot, overrides, n_layer=hp.n_layer, keep_native=keep_native)
            tensors = add_out_scales(tensors)
            file_type = _file_type(tensors, ot) if keep_native else ot.file_type
            name = ot.name.upper() if not keep_native else Q(file_type_main(tensors)).name
            if outfile is None:
                outfile = hf_dir / f"{hp.name}-{name}.gguf"
            embd = next(t for t in tensors if t.role == "token_embd")
            kv = (model_kv(hp, int(file_type), size_label(tensors), embed_dtype=embd.source.dtype,
                           extra=text_vision_kv(hf_dir, len(vocab), log=lambda m: _emit(m, quiet))) + vocab_kv(vocab))
            kept = (" (quantized weights keep their format: NVFP4 as NVFP4, FP8 / INT8 as Q8_0)"
                    if keep_native else "")
            jobs.append((Path(outfile), kv, tensors, names.ARCH, f"{ot.name}{kept}"))
        if mmproj is not None:
            vtensors = plan_mmproj_tensors(vhp, ckpt, scheme)
            vsource = {t.source.dtype for t in vtensors}
            vtype = (mmproj_outtype or projector_outtype(outtype, vsource)).lower()
            vfile_type = assign_mmproj_types(vtensors, vtype)
            vkv = mmproj_kv(vhp, hp.name, size_label(vtensors), vfile_type)
            if jobs and Path(mmproj).resolve() == jobs[0][0].resolve():
                raise InvalidArgumentError(f"--mmproj {mmproj}: the projector must not overwrite the text GGUF")
            jobs.append((Path(mmproj), vkv, vtensors, CLIP_ARCH, f"projector, {vtype}"))
        if dry_run:
            for path, _, ts, _, _ in jobs:
                print(format_plan(ts, [path]))
            return []
        staging = Staging()
        try:
            paths = []
            for path, kv, ts, arch, what in jobs:
                _emit(f"converting {hf_dir} -> {path} ({what}, {len(ts)} tensors)", quiet)
                # --split-max-size shards the text GGUF only: the projector is small and loaded as one file
                paths += write_gguf(path, kv, ts, split_max_size=split_max_size if arch == names.ARCH else 0,
                                    threads=threads, progress=progress, arch=arch, staging=staging)
            staging.publish()
            return paths
        finally:
            staging.discard()


# ---------------------------------------------------------------------------------------------------------------
# Requantizing an existing GGUF
# ---------------------------------------------------------------------------------------------------------------

def _field_kv(field):
    main = field.types[0]
    if main == VT.ARRAY:
        sub = field.types[-1]
        value = field.contents()
        if sub == VT.STRING:
            return value, VT.ARRAY, VT.STRING
        return list(value), VT.ARRAY, sub
    return field.contents(), main, None


def _gguf_source(path: Path, fd: int, rt) -> RowSource:
    qtype = Q(int(rt.tensor_type))
    ne = [int(d) for d in rt.shape]
    row_len, n_rows = ne[0], int(np.prod(ne[1:])) if len(ne) > 1 else 1
    from gguf import GGML_QUANT_SIZES

    block, tsize = GGML_QUANT_SIZES[qtype]
    rbytes = row_len // block * tsize

    def read_raw(start, count):
        want = count * rbytes
        data = os.pread(fd, want, rt.data_offset + start * rbytes)
        if len(data) != want:
            raise ModelFileError(f"{path}: unexpected end of file in tensor {rt.name}")
        return np.frombuffer(data, dtype=np.uint8)

    def read(start, count):
        raw = read_raw(start, count)
        if qtype == Q.F32:
            return raw.view("<f4").reshape(count, row_len)
        if qtype == Q.F16:
            return raw.view("<f2").astype(np.float32).reshape(count, row_len)
        if qtype == Q.BF16:
            return bf16_to_f32(raw.view("<u2")).reshape(count, row_len)
        raise UnsupportedTypeError(f"{path}: tensor {rt.name} is already {qtype.name}; requantize from an F32, F16 "
                                   "or BF16 GGUF (or keep its type with --tensor-type)")

    return RowSource(n_rows, row_len, qtype.name, read, read_raw, int(qtype), origin=str(path))


def requantize_gguf(infile, outfile, outtype: str, *, tensor_types=(), dry_run: bool = False,
                    split_max_size: int = 0, threads: int | None = None, progress: bool = True,
                    quiet: bool = False) -> list:
    """Rewrite a DiffusionGemma GGUF with the tensor types of `outtype` (same rules as convert)."""
    import gguf

    infile, outfile = Path(infile), Path(outfile)
    if infile.resolve() == outfile.resolve():
        raise ModelFileError(f"{outfile}: the output must not overwrite the input")
    try:
        reader = gguf.GGUFReader(infile)
    except FileNotFoundError:
        raise ModelFileError(f"{infile}: no such file") from None
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{infile}: not a readable GGUF file ({exc})") from None
    arch_field = reader.fields.get(names.key("GENERAL_ARCHITECTURE"))
    arch = arch_field.contents() if arch_field else None
    if arch != names.ARCH:
        raise UnsupportedModelError(f"{infile}: architecture {arch!r}; only {names.ARCH!r} GGUFs can be requantized")
    if "split.count" in reader.fields and int(reader.fields["split.count"].contents()) > 1:
        raise UnsupportedModelError(f"{infile}: a split GGUF; merge it first (llama-gguf-split --merge)")

    source_types = {Q(int(t.tensor_type)).name for t in reader.tensors}
    ot = parse_outtype(outtype, source_types)
    overrides = parse_overrides(tensor_types)
    fd = os.open(infile, os.O_RDONLY)
    try:
        tensors = []
        for rt in reader.tensors:
            role, layer = role_of(rt.name)
            tensors.append(OutTensor(rt.name, tuple(int(d) for d in rt.shape), role, layer,
                                     _gguf_source(infile, fd, rt)))
        n_layer = reader.fields.get(names.key("BLOCK_COUNT"))
        assign_types(tensors, ot, overrides, n_layer=int(n_layer.contents()) if n_layer else None)
        for t in tensors:  # fail before writing anything if a quantized input would need re-encoding
            if t.source.raw_type != t.qtype and Q(t.source.raw_type) not in FLOAT_TYPES:
                raise UnsupportedTypeError(f"{infile}: tensor {t.name} is {Q(t.source.raw_type).name} but the "
                                           f"{ot.name} recipe wants {Q(t.qtype).name}; requantize from an F32, F16 "
                                           "or BF16 GGUF, or keep it with --tensor-type")
        kv = []
        skip = {names.key("GENERAL_ARCHITECTURE"), "split.no", "split.count", "split.tensors.count"}
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in skip:
                continue
            value, vtype, sub = _field_kv(field)
            if name == names.key("GENERAL_FILE_TYPE"):
                value = int(ot.file_type)
            kv.append((name, value, vtype, sub))
        if dry_run:
            print(format_plan(tensors, [outfile]))
            return []
        _emit(f"requantizing {infile} -> {outfile} ({ot.name}, {len(tensors)} tensors)", quiet)
        return write_gguf(outfile, kv, tensors, split_max_size=split_max_size, threads=threads, progress=progress)
    finally:
        os.close(fd)
