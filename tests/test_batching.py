"""Length-grouped dynamic batching: coverage, padding, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data.encoded import Encoded
from trainables.training.batching import (
    CHUNK_BATCHES,
    PAD_ID,
    PAD_MULTIPLE,
    collate,
    epoch_batches,
    epoch_plan,
    eval_plan,
    padded_width,
    shared_widths,
)


def random_encoded(n: int, *, seed: int = 0, pairs: bool = True, max_len: int = 60) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(1, 1000, size=offsets[-1]).astype(np.int32)
    types = rng.integers(0, 2, size=offsets[-1]).astype(np.int8) if pairs else None
    return Encoded(ids, offsets, rng.integers(0, 3, size=n), types)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 400),
    batch_size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    grouping=st.booleans(),
)
def test_every_example_once_per_epoch_and_only_the_last_batch_short(n, batch_size, seed, grouping):
    lengths = np.random.default_rng(seed).integers(1, 100, size=n)
    plan = epoch_plan(lengths, batch_size=batch_size, seed=seed, epoch=3, length_grouping=grouping)
    assert np.array_equal(np.sort(np.concatenate(plan)), np.arange(n))
    sizes = sorted((len(b) for b in plan), reverse=True)
    assert len(plan) == -(-n // batch_size)
    assert all(s == batch_size for s in sizes[:-1])


def test_plan_is_a_pure_function_of_seed_and_epoch():
    lengths = random_encoded(500).lengths
    plan = epoch_plan(lengths, batch_size=16, seed=7, epoch=2)
    same = epoch_plan(lengths, batch_size=16, seed=7, epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(plan, same, strict=True))
    for other in (
        epoch_plan(lengths, batch_size=16, seed=7, epoch=3),
        epoch_plan(lengths, batch_size=16, seed=8, epoch=2),
    ):
        assert not all(np.array_equal(a, b) for a, b in zip(plan, other, strict=True))


def test_length_grouping_cuts_padding_and_keeps_batches_near_uniform():
    data = random_encoded(2000, max_len=120)

    def padded(grouping: bool) -> int:
        plan = epoch_plan(data.lengths, batch_size=32, seed=0, epoch=0, length_grouping=grouping)
        return sum(collate(data, b).padded_tokens for b in plan)

    real = int(data.lengths.sum())
    assert padded(True) < 1.25 * real < padded(False)


def test_grouped_batches_come_from_sorted_chunks_in_shuffled_order():
    data = random_encoded(32 * CHUNK_BATCHES * 2)
    plan = epoch_plan(data.lengths, batch_size=32, seed=1, epoch=0)
    maxima = [int(data.lengths[b].max()) for b in plan]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.parametrize("pairs", [True, False])
def test_collate_pads_to_a_multiple_of_8_and_keeps_every_token(pairs):
    data = random_encoded(50, pairs=pairs)
    indices = np.array([3, 17, 4, 40, 0])
    batch = collate(data, indices)
    longest = int(data.lengths[indices].max())
    width = batch.input_ids.shape[1]
    assert width % PAD_MULTIPLE == 0 and longest <= width < longest + PAD_MULTIPLE
    assert batch.input_ids.dtype == torch.int64 and batch.attention_mask.dtype == torch.int64
    assert batch.attention_mask.sum(1).tolist() == data.lengths[indices].tolist()
    assert batch.num_tokens == int(data.lengths[indices].sum())
    for r, i in enumerate(indices):
        n = data.lengths[i]
        assert batch.input_ids[r, :n].tolist() == data.row(i).tolist()
        assert (batch.input_ids[r, n:] == PAD_ID).all()
        if pairs:
            start = data.offsets[i]
            expected = data.token_type_ids[start : start + n].tolist()
            assert batch.token_type_ids[r, :n].tolist() == expected
    assert (batch.token_type_ids is None) == (not pairs)
    assert batch.labels.tolist() == data.labels[indices].tolist()


def test_collate_keeps_regression_labels_float():
    data = random_encoded(10)
    data = Encoded(data.input_ids, data.offsets, np.linspace(0, 5, 10), data.token_type_ids)
    batch = collate(data, np.arange(4))
    assert batch.labels.dtype == torch.float32
    assert torch.allclose(
        batch.labels, torch.tensor(np.linspace(0, 5, 10)[:4], dtype=torch.float32)
    )


def test_epoch_batches_resume_at_a_batch_index_exactly():
    data = random_encoded(300)
    kwargs = {"batch_size": 16, "seed": 5, "epoch": 1}
    full = epoch_batches(data, **kwargs)
    rest = epoch_batches(data, start=7, **kwargs)
    assert len(rest) == len(full) - 7
    for a, b in zip(full[7:], rest, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert epoch_batches(data, start=len(full), **kwargs) == []
    with pytest.raises(ValueError, match="start="):
        epoch_batches(data, start=len(full) + 1, **kwargs)


def tweet_like(n: int = 3_000, *, seed: int = 0) -> Encoded:
    """Mostly short rows and a thin tail of long ones, as tweets are (widths 56-96 rare)."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.02, rng.integers(50, 97, size=n),
                       np.clip(rng.normal(30, 8, size=n), 3, 48)).astype(np.int64)  # fmt: skip
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(1, 1000, size=offsets[-1]).astype(np.int32)
    return Encoded(ids, offsets, rng.integers(0, 3, size=n), None)


def widths_of(data: Encoded, **kwargs) -> tuple[list[np.ndarray], list[int], list[int]]:
    plan = epoch_plan(data.lengths, batch_size=32, seed=0, epoch=0)
    own = [padded_width(int(data.lengths[idx].max())) for idx in plan]
    return plan, own, shared_widths(data.lengths, plan, batch_size=32, **kwargs)


def test_rare_widths_pad_up_to_the_next_width_kept_and_the_widest_stays():
    plan, own, shared = widths_of(tweet_like(), min_batches=8)
    full = [i for i, idx in enumerate(plan) if len(idx) == 32]
    counts = {w: sum(own[i] == w for i in full) for w in {own[i] for i in full}}
    kept = {shared[i] for i in full}
    assert kept < set(counts), "the data must have rare widths for this test to mean anything"
    assert max(counts) in kept and all(counts[w] < 8 for w in set(counts) - kept)
    for i, idx in enumerate(plan):
        if len(idx) == 32:  # never narrower than its longest row; the next width kept, no wider
            assert shared[i] == min(w for w in kept if w >= own[i])
        else:
            assert shared[i] == own[i]  # a short batch runs eager: its own width
    assert widths_of(tweet_like(), min_batches=1)[2] == own


def test_padding_up_stays_within_its_share_of_the_tokens_when_every_width_is_rare():
    rng = np.random.default_rng(1)  # RTE-like: 78 batches of long pairs over many widths
    lengths = np.clip(rng.lognormal(4.3, 0.45, size=2_490), 20, 256).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = Encoded(np.ones(offsets[-1], dtype=np.int32), offsets, np.zeros(len(lengths)), None)
    plan, own, shared = widths_of(data, min_batches=16, max_extra=0.05)
    tokens = [sum(w * len(idx) for w, idx in zip(ws, plan, strict=True)) for ws in (own, shared)]
    assert tokens[0] < tokens[1] <= 1.05 * tokens[0]  # some merged, within the share
    assert 1 < len(set(shared)) < len(set(own))  # not every batch at the widest
    everything = widths_of(data, min_batches=16, max_extra=10.0)[2]
    full = {w for w, idx in zip(everything, plan, strict=True) if len(idx) == 32}
    assert full == {max(own[i] for i, idx in enumerate(plan) if len(idx) == 32)}


def test_epoch_batches_pad_rare_widths_up_and_resume_as_the_whole_epoch():
    data = tweet_like()
    kwargs = {"batch_size": 32, "seed": 3, "epoch": 0, "min_width_batches": 8}
    plain = epoch_batches(data, batch_size=32, seed=3, epoch=0)
    shared = epoch_batches(data, **kwargs)
    widths = {b.input_ids.shape[1] for b in shared if b.size == 32}
    assert len(widths) < len({b.input_ids.shape[1] for b in plain if b.size == 32})
    for a, b in zip(plain, shared, strict=True):  # the same rows and tokens, only more padding
        w = a.input_ids.shape[1]
        assert torch.equal(a.input_ids, b.input_ids[:, :w]) and not b.attention_mask[:, w:].any()
        assert (b.input_ids[:, w:] == PAD_ID).all() and a.num_tokens == b.num_tokens
    rest = epoch_batches(data, start=40, **kwargs)  # widths from the whole epoch, not the rest
    assert [b.input_ids.shape for b in rest] == [b.input_ids.shape for b in shared[40:]]


def test_eval_plan_is_longest_first_and_covers_everything():
    lengths = random_encoded(333).lengths
    plan = eval_plan(lengths, batch_size=50)
    order = np.concatenate(plan)
    assert np.array_equal(np.sort(order), np.arange(333))
    assert np.all(np.diff(lengths[order]) <= 0)
