"""Converter failure modes: each bad input gives a specific error, and no failure or interruption leaves a
(partial) output file or temporary folder behind."""
import errno
import json
import os
import shutil
import signal
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
from diffgemma_cpp.errors import ModelFileError, UnsupportedModelError, UnsupportedTypeError


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_cli_conversion_leaves_no_output(checkpoints, tmp_path, sig):
    """A real `diffgemma-cpp convert` process, slowed down and signalled once it is writing tensor data."""
    out = tmp_path / "o.gguf"
    script = textwrap.dedent(f"""
        import sys, time
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
    _, err = proc.communicate(timeout=60)
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
