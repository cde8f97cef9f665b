"""Converter failure modes: each bad input gives a specific error, and no failure or interruption leaves a
(partial) output file or temporary folder behind."""
import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from convert_helpers import checkpoints  # noqa: F401
from diffgemma_cpp import cli
from diffgemma_cpp.convert import convert_checkpoint, writer
from diffgemma_cpp.errors import (InvalidArgumentError, ModelFileError, ModelLoadError, UnsupportedModelError,
                                  UnsupportedTypeError)


@pytest.fixture
def small(checkpoints, tmp_path):
    """A private, writable copy of the "small" checkpoint."""
    dst = tmp_path / "hf"
    shutil.copytree(checkpoints["small"], dst)
    return dst


def _convert(src, out, outtype="q8_0", **kw):
    return convert_checkpoint(src, out, outtype, progress=False, quiet=True, **kw)


def _no_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.suffix == ".gguf" or "partial" in p.name]


def _edit_tensors(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_not_a_diffusiongemma_checkpoint_names_supported_architectures(small, tmp_path):
    cfg = json.loads((small / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["Gemma3ForCausalLM"], "gemma3"
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="not a DiffusionGemma checkpoint.*Gemma3ForCausalLM.*"
                                                    "DiffusionGemmaForBlockDiffusion"):
        _convert(small, tmp_path / "o.gguf")


def test_missing_config_and_missing_canvas_length(small, tmp_path):
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").unlink()
    with pytest.raises(ModelFileError, match="missing config.json"):
        _convert(small, tmp_path / "o.gguf")
    del cfg["canvas_length"]
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="canvas_length"):
        _convert(small, tmp_path / "o.gguf")


def test_missing_tensor_is_named_with_its_shape(small, tmp_path):
    _edit_tensors(small, lambda t: t.pop("model.decoder.layers.1.mlp.up_proj.weight"))
    with pytest.raises(UnsupportedModelError, match=r"missing tensor.*model\.decoder\.layers\.1\.mlp\.up_proj\.weight "
                                                    r"\[40, 64\]"):
        _convert(small, tmp_path / "o.gguf")


def test_misshapen_tensor_gives_both_shapes(small, tmp_path):
    def edit(t):
        t["model.decoder.layers.0.self_attn.q_proj.weight"] = np.zeros((32, 64), np.float32)
    _edit_tensors(small, edit)
    with pytest.raises(UnsupportedModelError, match=r"q_proj\.weight: expected \[64, 64\], found \[32, 64\]"):
        _convert(small, tmp_path / "o.gguf")


def test_unsupported_dtype(small, tmp_path):
    def edit(t):
        t["model.decoder.norm.weight"] = t["model.decoder.norm.weight"].astype(np.float64)
    _edit_tensors(small, edit)
    with pytest.raises(UnsupportedTypeError, match=r"model\.decoder\.norm\.weight has dtype F64"):
        _convert(small, tmp_path / "o.gguf")


def test_truncated_safetensors(small, tmp_path):
    data = (small / "model.safetensors").read_bytes()
    (small / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        _convert(small, tmp_path / "o.gguf")


def test_unreadable_or_missing_tokenizer(small, tmp_path):
    (small / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(ModelFileError, match="unreadable tokenizer"):
        _convert(small, tmp_path / "o.gguf")
    (small / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match="missing tokenizer.json"):
        _convert(small, tmp_path / "o.gguf")


@pytest.mark.parametrize("flags, match", [
    ({"lstrip": True}, "sets lstrip=true"),
    ({"rstrip": True}, "sets rstrip=true"),
    ({"single_word": True}, "sets single_word=true"),
    ({"content": "<unused 0>", "normalized": True}, "matched after normalization and contains a space"),
], ids=["lstrip", "rstrip", "single_word", "normalized_space"])
def test_added_token_flags_a_gguf_cannot_record_are_refused(small, tmp_path, flags, match):
    """HF moves whitespace into such tokens (or matches them only as whole words / in normalized text); a GGUF
    has no field for that, so the converter refuses rather than write a file that tokenizes differently."""
    tj = json.loads((small / "tokenizer.json").read_text())
    entry = next(a for a in tj["added_tokens"] if a["content"] == "<unused0>")
    if "content" in flags:
        tj["model"]["vocab"][flags["content"]] = tj["model"]["vocab"].pop("<unused0>")
    entry.update(flags)
    (small / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedModelError, match=match):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_not_enough_disk_space_is_reported_before_writing(small, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ModelFileError, match="not enough disk space"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_disk_full_mid_write_removes_the_partial_file_and_keeps_an_old_output(small, tmp_path, monkeypatch):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous good file")
    calls = {"n": 0}
    real_drain = writer._drain_one

    def drain(pending, fout, bar):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_drain(pending, fout, bar)

    monkeypatch.setattr(writer, "_drain_one", drain)
    with pytest.raises(ModelFileError, match="disk full"):
        _convert(small, out)
    assert out.read_bytes() == b"previous good file"
    assert _no_leftovers(tmp_path) == ["o.gguf"]


def test_interrupt_in_process_leaves_no_output(small, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = writer.encode_rows

    def encode(qtype, rows):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(qtype, rows)

    monkeypatch.setattr(writer, "encode_rows", encode)
    with pytest.raises(KeyboardInterrupt):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_stop_requested_while_encoding_stops_at_a_chunk_boundary(small, tmp_path, monkeypatch):
    """What the CLI's signal handler does while the encoder threads run: it only notes the request
    (writer.interrupt_now_or_soon), and the main thread raises KeyboardInterrupt at the next chunk, outside any
    executor lock; the output is not published."""
    calls = {"n": 0}
    real = writer.encode_rows

    def encode(qtype, rows):
        calls["n"] += 1
        if calls["n"] == 30:
            writer.interrupt_now_or_soon()  # a worker thread, as a handler would be mid-write: must not raise here
        return real(qtype, rows)

    monkeypatch.setattr(writer, "encode_rows", encode)
    with pytest.raises(KeyboardInterrupt):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # outside the threaded section it raises at once
        writer.interrupt_now_or_soon()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_cli_conversion_leaves_no_output(checkpoints, tmp_path, sig):
    """A real `diffgemma-cpp convert` process, slowed down and signalled once it is writing tensor data."""
    out = tmp_path / "o.gguf"
    script = textwrap.dedent(f"""
        import faulthandler, signal, sys, time
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's view into a hang
        from diffgemma_cpp.convert import writer
        real = writer.encode_rows
        def slow(qtype, rows):
            time.sleep(0.05)
            return real(qtype, rows)
        writer.encode_rows = slow
        writer.CHUNK_ELEMENTS = 256
        from diffgemma_cpp import cli
        sys.exit(cli.main(["convert", {str(checkpoints["wide"])!r}, "--outfile", {str(out)!r},
                           "--outtype", "q8_0", "--no-progress", "-t", "1"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".o.gguf.partial-*/o.gguf")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".o.gguf.partial-*/o.gguf")), "conversion never started writing"
    time.sleep(0.3)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Seen once in ~10 full-suite runs (SIGINT), never alone: leave the next occurrence its thread dump.
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the converter did not stop within 60 s of {sig.name}; its threads:\n{err[-6000:]}")
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _no_leftovers(tmp_path) == []


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "nope"), "--outfile", str(tmp_path / "o.gguf")]) == 1
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err


def test_dry_run_lists_every_tensor_and_writes_nothing(checkpoints, tmp_path, capsys):
    assert cli.main(["convert", str(checkpoints["small"]), "--outfile", str(tmp_path / "o.gguf"),
                     "--outtype", "q4_k_m", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "blk.4.enc_layer_output_scale.weight" in text and "token_embd.weight" in text
    assert "120 tensors" in text and "would write" in text
    assert _no_leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == []


def test_script_entry_point_converts(checkpoints, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "convert", "convert_hf_to_gguf.py")
    out = tmp_path / "s.gguf"
    run = subprocess.run([sys.executable, script, str(checkpoints["small"]), "--outfile", str(out), "--outtype",
                          "q8_0", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.is_file() and f"wrote {out}" in run.stdout


# ---------------------------------------------------------------------------------------------------------------
# NaN / Inf weights: checked chunk by chunk in the writer, for every output type
# ---------------------------------------------------------------------------------------------------------------

UP = "model.decoder.layers.1.mlp.up_proj.weight"            # [40, 64], quantized in q8_0 / q4_k_m
NORM = "model.decoder.layers.2.input_layernorm.weight"       # [64], stays F32 in every recipe
EXPERTS = "model.decoder.layers.0.experts.gate_up_proj"      # [6, 24, 64]
BAD_AT = {UP: [(0, 5), (2, 7), (39, 0)], NORM: [(9,), (10,), (63,)], EXPERTS: [(1, 3, 2), (1, 3, 3), (5, 23, 63)]}
GGUF_OF = {UP: "blk.1.ffn_up.weight", NORM: "blk.2.attn_norm.weight", EXPERTS: "blk.0.ffn_gate_up_exps.weight"}


def _poison(values, name):
    """NaN, +Inf and -Inf at the three BAD_AT positions of tensor `name` (first one NaN)."""
    for pos, v in zip(BAD_AT[name], (np.nan, np.inf, -np.inf)):
        values[pos] = v


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_k_m"])
@pytest.mark.parametrize("name", [UP, NORM, EXPERTS], ids=["matrix", "norm", "experts"])
def test_nan_or_inf_weight_is_refused_with_tensor_first_index_and_count(small, tmp_path, monkeypatch, outtype,
                                                                        name):
    """One row per chunk, so the three bad values sit in different chunks: the report must still give the
    first one and count all three (the later chunks are counted after the first bad one is found)."""
    def edit(t):
        a = t[name].copy()
        _poison(a, name)
        t[name] = a
    _edit_tensors(small, edit)
    row_len = {UP: 64, NORM: 64, EXPERTS: 64}[name]
    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", row_len)
    first = list(BAD_AT[name][0])
    with pytest.raises(ModelLoadError) as info:
        _convert(small, tmp_path / "o.gguf", outtype, threads=2)
    msg = str(info.value)
    assert f"tensor {name} in model.safetensors (GGUF {GGUF_OF[name]}) holds 3 NaN/Inf value(s)" in msg, msg
    assert f"the first is nan at index {first}" in msg, msg
    assert not isinstance(info.value, InvalidArgumentError)  # ours, not the C quantizer's late refusal
    assert _no_leftovers(tmp_path) == []


def test_nan_in_a_bf16_checkpoint_copied_as_bf16_is_found_in_the_raw_bits(checkpoints, tmp_path):
    """bf16 -> bf16 copies the stored bytes without widening them; the check reads the exponent bits."""
    import torch
    from safetensors.torch import load_file as load_pt, save_file as save_pt

    src = tmp_path / "hf"
    shutil.copytree(checkpoints["wide_bf16"], src)
    tensors = load_pt(str(src / "model.safetensors"))
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    tensors[name][3, 1] = float("inf")
    tensors[name][4, 0] = float("nan")
    save_pt(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert tensors[name].dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match=rf"tensor {re.escape(name)} in model\.safetensors .* holds 2 NaN/Inf "
                                             r"value\(s\).*the first is inf at index \[3, 1\]"):
        _convert(src, tmp_path / "o.gguf", "bf16")
    assert _no_leftovers(tmp_path) == []


def test_nan_in_a_gguf_being_requantized_names_the_input_file(checkpoints, tmp_path):
    import gguf

    from diffgemma_cpp.convert import requantize_gguf

    f32 = _convert(checkpoints["small"], tmp_path / "in.gguf", "f32")[0]
    rt = next(t for t in gguf.GGUFReader(f32).tensors if t.name == "blk.3.ffn_gate.weight")
    with open(f32, "r+b") as f:
        f.seek(rt.data_offset + 4 * 70)  # row 1, column 6 of a [40, 64] tensor
        f.write(np.float32(np.inf).tobytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelLoadError, match=rf"tensor blk\.3\.ffn_gate\.weight in {re.escape(str(f32))} holds 1 "
                                             r"NaN/Inf value\(s\).*first is inf at index \[1, 6\]"):
        requantize_gguf(f32, out_dir / "q.gguf", "q8_0", progress=False, quiet=True)
    assert _no_leftovers(out_dir) == []


# ---------------------------------------------------------------------------------------------------------------
# Sharded checkpoints: missing shards, index and shards that disagree
# ---------------------------------------------------------------------------------------------------------------

def _shard(folder, n=3):
    """Split folder/model.safetensors into n shards + model.safetensors.index.json (the HF layout)."""
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(n):
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::n]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_checkpoint_converts(small, tmp_path):
    _shard(small)
    assert _convert(small, tmp_path / "o.gguf")[0].is_file()


def test_missing_shard_names_the_shard_and_its_tensors(small, tmp_path):
    weight_map = _shard(small)
    (small / "model-00002-of-00003.safetensors").unlink()
    held = sorted(k for k, v in weight_map.items() if v == "model-00002-of-00003.safetensors")
    with pytest.raises(ModelFileError, match=rf"1 shard\(s\) that are not in the directory.*"
                                             rf"model-00002-of-00003\.safetensors \(should hold {len(held)} "
                                             rf"tensor\(s\): {re.escape(held[0])}"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_index_naming_a_tensor_absent_from_its_shard(small, tmp_path):
    weight_map = _shard(small)
    shard = weight_map[UP]
    tensors = load_file(str(small / shard))
    del tensors[UP]
    save_file(tensors, str(small / shard), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=rf"not where the index says: {re.escape(UP)} \(index says "
                                             rf"{re.escape(shard)}, in no shard\)"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_index_pointing_outside_the_folder_is_refused(small, tmp_path):
    weight_map = _shard(small)
    weight_map[UP] = "../elsewhere.safetensors"
    (small / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelFileError, match=r"maps to '\.\./elsewhere\.safetensors', not a shard file name"):
        _convert(small, tmp_path / "o.gguf")


# ---------------------------------------------------------------------------------------------------------------
# Corrupt safetensors headers
# ---------------------------------------------------------------------------------------------------------------

def _rewrite_header(folder, edit):
    """Apply edit(header dict) to folder/model.safetensors, keeping its data bytes; returns the header."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return header


def _data_len(folder):
    raw = (folder / "model.safetensors").read_bytes()
    return len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]


NORM_B = "model.decoder.layers.3.input_layernorm.weight"  # same size as NORM


@pytest.mark.parametrize("case, match", [
    ("offsets_past_end", rf"tensor '{re.escape(NORM)}' has data_offsets \[\d+, \d+\] but the file holds only \d+ "
                         r"data bytes"),
    ("negative_offset", rf"entry for tensor '{re.escape(NORM)}': data_offsets \[-256, 0\] is not a valid byte range"),
    ("reversed_offsets", rf"entry for tensor '{re.escape(NORM)}': data_offsets \[\d+, \d+\] is not a valid byte "
                         r"range"),
    ("string_offsets", rf"entry for tensor '{re.escape(NORM)}': data_offsets \['0', '256'\] is not a pair of "
                       r"integers"),
    ("three_offsets", rf"entry for tensor '{re.escape(NORM)}': data_offsets .* is not a pair of integers"),
    ("overlap", rf"tensors .*'{re.escape(NORM_B)}'.* overlap"),
    ("shape_vs_range", rf"tensor '{re.escape(NORM)}' is F32 \[32\] \(128 bytes\) but its data_offsets \[\d+, \d+\] "
                       r"span 256 bytes"),
    ("dtype_vs_range", rf"tensor '{re.escape(NORM)}' is F16 \[64\] \(128 bytes\) but its data_offsets \[\d+, \d+\] "
                       r"span 256 bytes"),
    ("negative_dim", rf"entry for tensor '{re.escape(NORM)}': shape \[-64\] is not a list of non-negative integers"),
    ("entry_not_object", rf"entry for tensor '{re.escape(NORM)}': expected an object, found list"),
])
def test_corrupt_safetensors_header_names_file_and_tensor(small, tmp_path, case, match):
    size = _data_len(small)

    def edit(h):
        e = h[NORM]
        b, end = e["data_offsets"]
        if case == "offsets_past_end":
            e["data_offsets"] = [size - 128, size + 128]
        elif case == "negative_offset":
            e["data_offsets"] = [-256, 0]
        elif case == "reversed_offsets":
            e["data_offsets"] = [end, b]
        elif case == "string_offsets":
            e["data_offsets"] = ["0", "256"]
        elif case == "three_offsets":
            e["data_offsets"] = [b, end, end]
        elif case == "overlap":
            h[NORM_B]["data_offsets"] = [b + 128, end + 128]
        elif case == "shape_vs_range":
            e["shape"] = [32]
        elif case == "dtype_vs_range":
            e["dtype"] = "F16"
        elif case == "negative_dim":
            e["shape"] = [-64]
        elif case == "entry_not_object":
            h[NORM] = [1, 2]
    _rewrite_header(small, edit)
    with pytest.raises(ModelFileError, match=match) as info:
        _convert(small, tmp_path / "o.gguf")
    assert "model.safetensors" in str(info.value)
    assert _no_leftovers(tmp_path) == []


def test_header_length_beyond_the_file(small, tmp_path):
    path = small / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    with pytest.raises(ModelFileError, match=rf"model\.safetensors: not a safetensors file or truncated \(its first "
                                             rf"8 bytes give a header length of {len(raw) * 2} bytes, the file holds "
                                             rf"{len(raw)} bytes\)"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


@pytest.mark.parametrize("garbage", [b"{not json at all", b"\xff\xfe\x00binary", b"[1, 2, 3]"],
                         ids=["not_json", "not_utf8", "json_list"])
def test_header_that_is_not_a_json_object(small, tmp_path, garbage):
    path = small / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:8] + garbage.ljust(n) + raw[8 + n:])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: corrupt safetensors header"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# Wrong shapes beyond the 2-D case above
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, bad_shape, expected", [
    (EXPERTS, (6, 20, 64), "[6, 24, 64]"),
    (EXPERTS, (5, 24, 64), "[6, 24, 64]"),
    (EXPERTS, (6 * 24, 64), "[6, 24, 64]"),
    (NORM, (32,), "[64]"),
    (NORM, (1, 64), "[64]"),
], ids=["experts_rows", "experts_count", "experts_2d", "norm_short", "norm_2d"])
def test_wrong_shape_expert_stack_or_norm(small, tmp_path, name, bad_shape, expected):
    def edit(t):
        t[name] = np.zeros(bad_shape, np.float32)
    _edit_tensors(small, edit)
    with pytest.raises(UnsupportedModelError, match=rf"misshapen tensor.*{re.escape(name)}: expected "
                                                    rf"{re.escape(expected)}, found {re.escape(str(list(bad_shape)))}"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_value_beyond_f16_range_is_refused_with_a_way_out(small, tmp_path):
    """A finite f32 weight above 65504 would become Inf in an F16 GGUF: refused, and the suggested override works."""
    def edit(t):
        a = t[UP].copy()
        a[7, 3] = -1.0e5
        t[UP] = a
    _edit_tensors(small, edit)
    with pytest.raises(UnsupportedTypeError, match=rf"tensor {re.escape(UP)} \(GGUF blk\.1\.ffn_up\.weight\): value "
                                                   r"-100000\.0 at index \[7, 3\] does not fit in F16") as info:
        _convert(small, tmp_path / "o.gguf", "f16")
    assert _no_leftovers(tmp_path) == []
    override = re.search(r"--tensor-type '([^']+)'", str(info.value)).group(1)
    assert _convert(small, tmp_path / "o.gguf", "f16", tensor_types=[override])[0].is_file()


# ---------------------------------------------------------------------------------------------------------------
# Seeded mutation run over one safetensors file: whatever the damage, a DiffGemmaError (or a good GGUF), never
# another exception, never a leftover file
# ---------------------------------------------------------------------------------------------------------------

_ODD_VALUES = [None, -1, 0, 1.5, True, "x", "", [], {}, [1], [1, 2, 3], [-1, 5], [5, 1], [0, 2 ** 62], ["a", "b"],
               [2 ** 40, 2 ** 40], [0, 2 ** 64 + 5], 2 ** 63, "F64", "Q4_K", "BF16", "F16", [64], [64, 64]]


def _mutations(raw: bytes, header: dict, rng):
    """(label, bytes) of damaged copies of a safetensors file: byte flips in the header, truncations at the
    section boundaries and at random points, odd header lengths, and odd values in tensor entries."""
    (n,) = struct.unpack("<Q", raw[:8])
    names = [k for k in header if k != "__metadata__"]
    cuts = {0, 4, 7, 8, 9, 8 + n - 1, 8 + n, len(raw) - 1}
    for k in names[:12]:
        b, e = header[k]["data_offsets"]
        cuts |= {8 + n + b, 8 + n + (b + e) // 2}
    for c in sorted(cuts):
        yield f"truncate@{c}", raw[:c]
    for c in rng.integers(0, len(raw), 10):
        yield f"truncate@{c}", raw[:int(c)]
    for v in (0, 1, n - 1, n + 1, len(raw), 2 ** 63, 2 ** 64 - 1):
        yield f"header_len={v}", struct.pack("<Q", v) + raw[8:]
    for i in range(60):
        b = bytearray(raw)
        for pos in rng.integers(8, 8 + n, int(rng.integers(1, 4))):
            b[int(pos)] = int(rng.integers(0, 256))
        yield f"flip#{i}", bytes(b)
    for i in range(120):
        h = json.loads(raw[8:8 + n])
        name = names[int(rng.integers(len(names)))]
        field = ["dtype", "shape", "data_offsets"][int(rng.integers(3))]
        value = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
        h[name][field] = value
        text = json.dumps(h).encode()
        yield f"{name}.{field}={value!r}", struct.pack("<Q", len(text)) + text + raw[8 + n:]
    yield "deep_nesting", struct.pack("<Q", 100000) + b"[" * 100000 + raw[8 + n:]
    dup = b'{' + json.dumps(names[0]).encode() + b': {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
        + raw[9:8 + n]
    yield "duplicate_key", struct.pack("<Q", len(dup)) + dup + raw[8 + n:]


def test_damaged_safetensors_never_escape_as_another_exception(small, tmp_path):
    from diffgemma_cpp.errors import DiffGemmaError

    path = small / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(20261127)
    outcomes = {"refused": 0, "converted": 0}
    out = tmp_path / "out"
    out.mkdir()
    for label, data in _mutations(raw, json.loads(raw[8:8 + n]), rng):
        path.write_bytes(data)
        try:
            _convert(small, out / "o.gguf", "q8_0", threads=1)
            outcomes["converted"] += 1
            (out / "o.gguf").unlink()
        except DiffGemmaError:
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
        assert _no_leftovers(out) == [], label
    print(f"damaged safetensors: {outcomes}")
    assert outcomes["refused"] >= 200


def test_deeply_nested_or_duplicate_key_header(small, tmp_path):
    path = small / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", 50000) + b"[" * 50000 + raw[8 + n:])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: corrupt safetensors header \(nested too deeply\)"):
        _convert(small, tmp_path / "o.gguf")
    entry = b'"model.decoder.norm.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
    dup = b"{" + entry + raw[9:8 + n]
    path.write_bytes(struct.pack("<Q", len(dup)) + dup + raw[8 + n:])
    with pytest.raises(ModelFileError, match=r"corrupt safetensors header \(key 'model\.decoder\.norm\.weight' "
                                             r"appears twice\)"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []


def test_io_errors_reading_the_checkpoint_name_the_file(small, tmp_path, monkeypatch):
    """EIO from the disk (or EACCES; the tests may run as root, where chmod cannot provoke it) while reading a
    header or tensor data: a ModelFileError naming the file (and the tensor), no leftovers."""
    from diffgemma_cpp.convert import checkpoint

    real_preadv = os.preadv
    calls = {"n": 0}

    def failing_preadv(fd, buffers, offset):
        calls["n"] += 1
        if calls["n"] == 25:
            raise OSError(errno.EIO, "Input/output error")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(checkpoint.os, "preadv", failing_preadv)
    with pytest.raises(ModelFileError, match=r"model\.safetensors: read error in tensor model\.\S+ at byte \d+ "
                                             r"\(Input/output error\)"):
        _convert(small, tmp_path / "o.gguf", threads=1)
    assert _no_leftovers(tmp_path) == []
    monkeypatch.undo()

    real_open = open

    def denied(path, *args, **kw):
        if str(path).endswith(".safetensors"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    with pytest.raises(ModelFileError, match=r"model\.safetensors: cannot read the safetensors file "
                                             r"\(Permission denied\)"):
        _convert(small, tmp_path / "o.gguf")
    assert _no_leftovers(tmp_path) == []
