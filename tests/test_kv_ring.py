"""Sliding layers keep a ring of n_swa-1+slack positions: reading across the wrap, rewinding within the slack,
and rewinding past it (re-encode from 0) must all give the logits of a cache that never wrapped."""
import numpy as np
import pytest

from diffgemma_cpp import Model
from diffgemma_cpp._native import check, lib

from engine_fixtures import gguf

# tests/tiny_hf.py "small": window 8 (7 previous keys), canvas 12. With n_batch=5 the slack is the canvas,
# so sliding layers hold 7 + 12 = 19 positions and a 57-token history wraps their ring three times.
N_BATCH = 5
HISTORY = 57


@pytest.fixture(scope="module")
def model_path():
    return gguf("small")


def _ids(m, n, seed):
    return np.random.default_rng(seed).integers(0, m.n_vocab, n).tolist()


def _encode_in_chunks(m, ids, chunk=N_BATCH):
    """The chunking a ring context with n_batch=chunk uses, on a context whose cache never wraps."""
    for i in range(0, len(ids), chunk):
        m.encode(ids[i:i + chunk])


def _logits_without_ring(path, ids, canvas, sc):
    with Model(path, n_batch=512) as m:
        _encode_in_chunks(m, ids)
        return m.decoder_logits(canvas, sc)


def _canvas_and_sc(m):
    canvas = _ids(m, m.canvas_length, seed=5)
    sc = np.random.default_rng(6).normal(0, 3, (m.canvas_length, m.n_vocab)).astype(np.float32)
    return canvas, sc


def test_sliding_layers_hold_a_ring_not_the_whole_context(model_path):
    with Model(model_path, n_batch=N_BATCH) as ring, Model(model_path, n_batch=512) as full:
        assert ring.n_ctx == full.n_ctx
        assert ring.kv_cache_bytes < full.kv_cache_bytes


def test_reading_across_the_wrap_equals_an_unwrapped_cache(model_path):
    with Model(model_path, n_batch=N_BATCH) as m:
        history = _ids(m, HISTORY, seed=1)
        canvas, sc = _canvas_and_sc(m)
        m.encode(history)
        got = [m.decoder_logits(canvas), m.decoder_logits(canvas, sc)]
    want = [_logits_without_ring(model_path, history, canvas, None), _logits_without_ring(model_path, history, canvas, sc)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("n_keep", [HISTORY - 3, HISTORY - 12, HISTORY - 13, 30, 4])
def test_rewinding_gives_the_logits_of_the_shorter_history(model_path, n_keep):
    """Within the slack (12) the ring still holds the window; beyond it the kept tokens are re-encoded.
    Either way the result equals a cache that only ever saw the kept tokens."""
    with Model(model_path, n_batch=N_BATCH) as m:
        history = _ids(m, HISTORY, seed=2)
        canvas, sc = _canvas_and_sc(m)
        m.encode(history)
        m.decoder_logits(canvas)  # the decoder never writes the cache; rewinding must not depend on it
        check(lib.diffgemma_kv_truncate(m._c, n_keep))
        assert m.n_past == n_keep
        got = m.decoder_logits(canvas, sc)
        # a new token appended after the rewind must also see the right window
        m.encode(_ids(m, 3, seed=3))
        got_after = m.decoder_logits(canvas, sc)
    # Chunk boundaries of the kept tokens differ from a fresh encode's (e.g. 50-55 kept as 50-54), which
    # moves the last bits; a window read from overwritten slots would move logits by O(1).
    want = _logits_without_ring(model_path, history[:n_keep], canvas, sc)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    with Model(model_path, n_batch=512) as ref:
        _encode_in_chunks(ref, history[:n_keep])
        _encode_in_chunks(ref, _ids(ref, 3, seed=3))
        want_after = ref.decoder_logits(canvas, sc)
    np.testing.assert_allclose(got_after, want_after, rtol=0, atol=1e-4)


def test_repeated_generation_reuses_or_rebuilds_the_cache_and_stays_deterministic(model_path):
    """Generating 1 block then repeating the prompt rewinds by one canvas (within the slack); generating 3
    blocks rewinds by 36 (beyond it): both repeats must equal a fresh context's output."""
    with Model(model_path, n_batch=N_BATCH, seed=0) as fresh:
        prompt = _ids(fresh, 21, seed=4)
        want = {n: fresh.generate_ids(prompt, max_new_tokens=n, seed=9) for n in (12, 36)}
        for n in (12, 36):
            with Model(model_path, n_batch=N_BATCH) as m:
                first = m.generate_ids(prompt, max_new_tokens=n, seed=9)
                again = m.generate_ids(prompt, max_new_tokens=n, seed=9)
            assert first == want[n] and again == want[n]
