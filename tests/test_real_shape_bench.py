"""bench/make_real_shape_gguf.py (random GGUF at the released shapes) and bench/gpu_bench_step.py (the GPU step
benchmark of issue 8), exercised on the CPU at one layer with a small vocabulary and 8 experts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q, GGUFReader
from gguf.quants import dequantize

import diffgemma_cpp
from diffgemma_cpp import Model, names
from diffgemma_cpp.bench_flops import read_shape

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import make_real_shape_gguf as mk  # noqa: E402

SMALL = dict(n_vocab=4096, n_expert=8)  # full hidden width and heads; a small vocabulary and expert count


@pytest.mark.parametrize("qtype,row_len", [(Q.Q4_K, 2816), (Q.Q6_K, 2816), (Q.Q5_0, 704), (Q.Q8_0, 704)])
def test_random_blocks_dequantize_to_the_target_spread(qtype, row_len):
    pool = mk.BlockPool(qtype, 4096, np.random.default_rng(1))
    rows = 512
    raw = pool.source(rows, row_len, offset=pool.n - 17).read_raw(0, rows)  # a window that wraps around the pool
    w = dequantize(raw.reshape(rows, -1), qtype)
    assert np.isfinite(w).all()
    assert w.std() == pytest.approx(mk.WEIGHT_STD, rel=0.03)
    assert abs(w.mean()) < 0.02 * mk.WEIGHT_STD
    assert len({w[i].tobytes() for i in range(rows)}) == rows  # no repeated rows


def test_the_30_layer_plan_is_the_published_q4_k_m_mix():
    _, tensors = mk.plan_types(mk.release_hparams(30))
    counts = {}
    for t in tensors:
        counts[Q(t.qtype).name] = counts.get(Q(t.qtype).name, 0) + 1
    assert len(tensors) == 692
    assert counts == {"F32": 423, "Q4_K": 194, "Q5_0": 33, "Q8_0": 28, "Q6_K": 14}
    assert 15.5 < mk.file_bytes(tensors) / 2**30 < 15.8


def test_first_layers_keep_the_release_pattern_and_their_release_types():
    _, full = mk.plan_types(mk.release_hparams(30))
    _, six = mk.plan_types(mk.release_hparams(6))
    by_name = {t.name: t for t in full}
    assert [t.name for t in six] == [t.name for t in full if t.layer is None or t.layer < 6]
    assert all(t.qtype == by_name[t.name].qtype and t.ne == by_name[t.name].ne for t in six)
    names_six = {t.name for t in six}
    assert names.layer_tensor("ATTN_V", 4) in names_six and names.layer_tensor("ATTN_V", 5) not in names_six
    assert by_name[names.layer_tensor("ATTN_Q", 5)].ne == (2816, 16 * 512)
    assert by_name[names.layer_tensor("FFN_GATE_UP_EXPS", 0)].ne == (2816, 2 * 704, 128)
    assert by_name[names.tensor("TOKEN_EMBD")].ne == (2816, 262144)


def test_bad_sizes_are_refused():
    for kwargs in (dict(n_layers=0), dict(n_layers=31), dict(n_vocab=100), dict(n_expert=4)):
        with pytest.raises(ValueError):
            mk.release_hparams(**kwargs)


def test_built_file_loads_and_gives_finite_order_one_logits(tmp_path):
    info = mk.build(tmp_path / "m.gguf", n_layers=1, **SMALL)
    assert info["bytes"] == Path(info["path"]).stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name != "m.gguf"]  # the writer's temporary folder is gone
    reader = GGUFReader(info["path"])
    assert reader.fields[names.key("BLOCK_COUNT")].contents() == 1
    assert reader.fields[names.key("EMBEDDING_LENGTH")].contents() == 2816
    assert reader.fields[names.key("CANVAS_LENGTH")].contents() == 256
    assert names.key("TOKENIZER_TOKENS") not in reader.fields
    shape = read_shape(info["path"])
    assert (shape.n_vocab, shape.n_layer, shape.n_expert, shape.n_expert_used) == (4096, 1, 8, 8)

    with Model(info["path"], n_threads=2, n_ctx=512) as m:
        assert (m.n_vocab, m.n_layer, m.n_embd, m.canvas_length) == (4096, 1, 2816, 256)
        rng = np.random.default_rng(0)
        m.encode(rng.integers(5, m.n_vocab, 16).tolist())
        logits = m.decoder_logits(rng.integers(5, m.n_vocab, 256).tolist())
        assert np.isfinite(logits).all()
        assert 0.5 < logits.std() < 2.0 and np.abs(logits).max() < 30.0
        sc = m.decoder_logits(rng.integers(5, m.n_vocab, 256).tolist(), sc_logits=logits / 0.8)
        assert np.isfinite(sc).all() and 0.5 < sc.std() < 2.0


def _bench(tmp_path, *extra):
    cmd = [sys.executable, str(BENCH / "gpu_bench_step.py"), "--out", str(tmp_path / "out"), "--layers", "1",
           "--vocab", "4096", "--experts", "8", "--steps", "2", "-r", "1", "-p", "16", "--timeout-s", "120",
           "--model-dir", str(tmp_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    data = json.loads((tmp_path / "out" / "gpu_step_bench.json").read_text())
    return proc, data


def test_step_bench_writes_the_split_and_the_labelled_extrapolation(tmp_path):
    proc, d = _bench(tmp_path, "--n-gpu-layers", "0")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert d["status"] == "ok" and d["headline_layers"] == 1 and len(d["rounds"]) == 1
    r = d["rounds"][0]
    assert r["status"] == "ok" and r["model"]["n_layers"] == 1 and r["load_s"] > 0 and r["model"]["seconds"] > 0
    assert r["derived"] == d["derived"]
    m = d["derived"]["measured"]
    assert m["step_ms"] > 0 and m["backbone_ms"] > 0 and m["head_ms"] > 0 and m["sc_ms"] > 0
    assert m["sampler_ms"] > 0 and m["backbone_ms_per_layer"] == pytest.approx(m["backbone_ms"])
    assert m["tok_s_at_20_steps"] == pytest.approx(256 * 1000 / (20 * m["step_ms"]))
    assert m["step_ms_unsplit"] == pytest.approx(r["unsplit_run"]["step_ms"]) and m["step_ms_unsplit"] > 0
    e = d["derived"]["extrapolated_30_layers"]
    assert "EXTRAPOLATED" in e["label"]
    assert e["step_ms"] == pytest.approx(m["step_ms"] + 29 * m["backbone_ms"])
    assert r["logits_check"]["finite"]
    assert "EXTRAPOLATED to 30 layers" in proc.stdout and "EXTRAPOLATED" in d["summary_text"]
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]  # the temporary model is removed


@pytest.mark.skipif("CUDA" in diffgemma_cpp.system_info(), reason="this build has a GPU backend")
def test_step_bench_on_a_cpu_only_build_fails_clearly_when_asked_for_the_gpu(tmp_path):
    proc, d = _bench(tmp_path, "--n-gpu-layers", "-1")
    assert proc.returncode == 1
    assert d["status"] == "failed" and d["phase"] == "1L: load" and "n_gpu_layers" in d["error"]
    assert d["rounds"][0]["status"] == "failed"
    assert "FAILED in phase '1L: load'" in proc.stderr


def test_step_bench_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_bench_step.py"), "--out", str(tmp_path), "--layers", "31"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--layers must be in 1..30" in proc.stderr


def test_budget_mode_picks_more_layers_for_more_time():
    import gpu_bench_step as gb

    bytes_for = lambda n: mk.file_bytes(mk.plan_types(mk.release_hparams(n))[1])  # noqa: E731
    pick = lambda **kw: gb.choose_layers(gb.parse_args(["--out", "x", *kw.get("argv", [])]), bytes_for)[0]  # noqa: E731
    assert pick() == gb.DEFAULT_LAYERS
    assert pick(argv=["--layers", "3"]) == 3
    small, large = pick(argv=["--budget-s", "60"]), pick(argv=["--budget-s", "1000"])
    assert 1 <= small < large == 30
