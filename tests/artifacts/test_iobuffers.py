"""Shape buckets and persistent IO-binding buffers: the GPU path's bookkeeping, run on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.iobuffers import ShapeBuckets

from tests.helpers.tiny_model import corpus_texts


def test_buckets_are_powers_of_two_capped_at_the_configured_maxima() -> None:
    buckets = ShapeBuckets(64, 128)
    assert buckets.batch_sizes == [1, 2, 4, 8, 16, 32, 64]
    assert buckets.lengths == [16, 32, 64, 128]
    odd = ShapeBuckets(48, 100)
    assert odd.batch_sizes == [1, 2, 4, 8, 16, 32, 48] and odd.lengths == [16, 32, 64, 100]
    assert len(buckets) == 28


def test_a_batch_is_padded_to_the_smallest_bucket_that_holds_it() -> None:
    buckets = ShapeBuckets(64, 128)
    assert buckets.fit(5, 17) == (8, 32)
    assert buckets.fit(1, 1) == (1, 16)
    assert buckets.fit(64, 128) == (64, 128)
    assert buckets.fit(33, 100) == (64, 128)


def test_a_batch_beyond_every_bucket_has_none() -> None:
    buckets = ShapeBuckets(8, 64)
    assert buckets.fit(9, 10) is None
    assert buckets.fit(1, 65) is None
    with pytest.raises(ValueError, match="at least one row"):
        buckets.fit(0, 4)


def test_bucketed_buffers_give_the_plain_probabilities(tiny_artifact: Path) -> None:
    plain = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=False)
    bucketed = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=True, max_batch_size=8)
    assert plain.buffers is None and bucketed.buffers is not None
    texts = corpus_texts()
    expected = plain.predict(texts, max_batch_size=8)
    got = bucketed.predict(texts, max_batch_size=8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert bucketed.buffers.allocated  # the bucketed path really ran


def test_buffers_are_allocated_once_per_bucket_and_reused(tiny_artifact: Path) -> None:
    engine = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=True, max_batch_size=8)
    texts = corpus_texts()
    first = engine.predict(texts, max_batch_size=8)
    allocated = engine.buffers.allocated
    slots = {shape: engine.buffers._slots[shape].host["input_ids"] for shape in allocated}
    second = engine.predict(list(reversed(texts)), max_batch_size=8)
    assert engine.buffers.allocated == allocated  # no new bucket for the same texts
    assert all(engine.buffers._slots[shape].host["input_ids"] is array for shape, array in slots.items())
    np.testing.assert_allclose(second, first[::-1], atol=1e-6)


def test_a_batch_larger_than_every_bucket_runs_the_plain_way(tiny_artifact: Path) -> None:
    plain = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=False)
    small = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=True, max_batch_size=2)
    texts = corpus_texts()[:12]
    np.testing.assert_allclose(small.predict(texts, max_batch_size=12), plain.predict(texts), atol=1e-5)
    assert small.buffers.allocated == []


def test_a_closed_engine_has_released_its_buffers(tiny_artifact: Path) -> None:
    engine = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", buffers=True)
    engine.predict(corpus_texts()[:3])
    engine.close()
    assert engine.buffers is None


def test_host_buffers_to_be_pinned_own_whole_pages() -> None:
    from autoannotator.artifacts.iobuffers import PAGE, _page_aligned_zeros

    a, b = _page_aligned_zeros((3, 5), np.int64), _page_aligned_zeros((64, 128), np.int64)
    assert a.ctypes.data % PAGE == 0 and b.ctypes.data % PAGE == 0
    assert a.shape == (3, 5) and a.dtype == np.int64 and not a.any()
    a[:] = 7  # writable, and the rest of its page belongs to no other array
    assert not b.any()
