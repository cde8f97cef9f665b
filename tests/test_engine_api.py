"""Engine behaviour beyond numerics: determinism, cache semantics, argument and file errors."""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest

import engine_fixtures as fx
from diffgemma_cpp import Model, errors
from diffgemma_cpp._native import lib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path():
    # The damped variant: re-encoding the last prompt token alone (prefix reuse) rounds differently from the
    # batched pass, which the harsh default model would amplify (see engine_fixtures).
    return fx.gguf("small:replay", "f32")


def _prompt(m, n=11, seed=3):
    return np.random.default_rng(seed).integers(0, m.n_vocab, n).tolist()


def test_seeded_generation_is_deterministic_across_runs_and_thread_counts(model_path):
    outs = []
    for threads in (1, 2, 1):
        with Model(model_path, n_threads=threads) as m:
            outs.append(m.generate_ids(_prompt(m), max_new_tokens=2 * m.canvas_length, steps=5, seed=1234))
    assert outs[0] == outs[1] == outs[2]
    with Model(model_path, n_threads=2) as m:
        other = m.generate_ids(_prompt(m), max_new_tokens=2 * m.canvas_length, steps=5, seed=1235)
    assert other != outs[0], "a different seed must give different draws"


def test_generate_blocks_equals_generate_ids_and_reuses_the_prompt_cache(model_path):
    with Model(model_path, n_threads=2) as m:
        prompt = _prompt(m)
        ids = m.generate_ids(prompt, max_new_tokens=3 * m.canvas_length, steps=4, seed=9)
        blocks = list(m.generate_blocks(prompt, max_new_tokens=3 * m.canvas_length, steps=4, seed=9))
        flat = [t for b in blocks for t in b.ids]
        new = ids[len(prompt):]
        eos = set(m.eos_ids)
        cut = next((i for i, t in enumerate(new) if t in eos), len(new))
        assert flat == new[:cut]
        assert all(1 <= b.steps <= 4 for b in blocks)
        # The cache now holds the prompt plus every block but the last; a longer prompt reuses that prefix.
        assert m.n_past == len(prompt) + (len(blocks) - 1) * m.canvas_length


def test_decoder_pass_leaves_the_cache_alone_and_reset_clears_it(model_path):
    with Model(model_path) as m:
        m.encode(_prompt(m))
        before = m.n_past
        canvas = _prompt(m, m.canvas_length, seed=5)
        a = m.decoder_logits(canvas)
        assert m.n_past == before
        assert np.array_equal(a, m.decoder_logits(canvas))
        m.reset()
        assert m.n_past == 0


def test_bad_arguments_raise_specific_errors(model_path):
    with Model(model_path, n_ctx=64) as m:
        with pytest.raises(errors.InvalidArgumentError, match="outside the vocabulary"):
            m.encode([m.n_vocab + 5])
        with pytest.raises(errors.InvalidArgumentError, match="canvas_length"):
            m.decoder_logits([1, 2, 3])
        with pytest.raises(errors.InvalidArgumentError, match="sc_logits must have shape"):
            m.decoder_logits(_prompt(m, m.canvas_length), np.zeros((2, 2), np.float32))
        with pytest.raises(errors.ContextOverflowError, match=r"exceed n_ctx = 64"):
            m.generate_ids(_prompt(m, 40), max_new_tokens=5 * m.canvas_length, steps=2, seed=1)
        with pytest.raises(errors.InvalidArgumentError, match="steps"):
            m.generate_ids(_prompt(m), steps=0, seed=1)
    with pytest.raises(errors.ModelFileError, match="no such model file"):
        Model("/nonexistent/model.gguf")


def _rewrite(src, dst, *, arch=None, drop=None, reshape=None):
    """Copy a GGUF with one deliberate defect (another architecture, a dropped tensor, a misshapen tensor)."""
    r = gguf.GGUFReader(str(src))
    real_arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch=arch or real_arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value, vtype = field.contents(), field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, vtype)
    for t in r.tensors:
        if t.name == drop:
            continue
        data = np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        if t.name == reshape:
            data = data.reshape(-1)[: data.size // 2]
        w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_wrong_files_name_the_problem(model_path, tmp_path):
    with pytest.raises(errors.UnsupportedModelError, match="architecture is 'llama'.*'diffusion-gemma'"):
        Model(_rewrite(model_path, tmp_path / "llama.gguf", arch="llama"))
    with pytest.raises(errors.UnsupportedModelError, match="tensor 'blk.2.ffn_down.weight' is missing"):
        Model(_rewrite(model_path, tmp_path / "missing.gguf", drop="blk.2.ffn_down.weight"))
    with pytest.raises(errors.UnsupportedModelError, match="tensor 'blk.0.attn_q.weight' has shape"):
        Model(_rewrite(model_path, tmp_path / "shape.gguf", reshape="blk.0.attn_q.weight"))
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(errors.ModelLoadError, match="not a GGUF file"):
        Model(not_gguf)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(model_path.read_bytes()[:4096])
    with pytest.raises(errors.ModelLoadError):
        Model(truncated)


def test_gpu_layers_without_a_gpu_build_say_how_to_get_one(model_path):
    if lib.diffgemma_gpu_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(errors.BackendError, match="ggml reports no GPU.*n_gpu_layers=0 runs on the CPU.*DIFFGEMMA_CUDA=ON") as err:
        Model(model_path, n_gpu_layers=-1)
    # The install hint names the exact pinned ggml (pyproject.toml): an unpinned sdist would not match our ABI.
    pin = re.search(r'"(libggml-python==[^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"pip install --no-binary libggml-python '{pin}'" in str(err.value)


def test_chunked_encoding_of_a_long_prompt_matches_one_pass(model_path):
    """A prompt longer than the window and the chunk, encoded 5 tokens at a time, gives the same cache."""
    logits = []
    for n_batch in (5, 512):
        with Model(model_path, n_batch=n_batch) as m:
            prompt = _prompt(m, 37, seed=11)  # window 8, so chunks straddle the sliding window edge
            m.encode(prompt)
            logits.append(m.decoder_logits(_prompt(m, m.canvas_length, seed=12)))
    assert np.max(np.abs(logits[0] - logits[1])) <= 1e-4
