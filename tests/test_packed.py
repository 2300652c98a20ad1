"""Sequence packing for fused steps (trainables/training/packed.py): every sentence lands whole in its
trial's rows, attention and pooling stay within it, and a packed step equals a padded one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_fused import BASE, TRAIN_ODD, member, no_dropout
from tests.test_loop import synthetic
from trainables.data.encoded import Encoded
from trainables.fused import IGNORE_INDEX, FusedLoRA, fused_batches, fused_losses
from trainables.training import packed


def test_rows_bucket_is_a_power_of_two_or_three_quarters_of_one():
    assert [packed.rows_bucket(n) for n in range(1, 14)] == [
        1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16,
    ]  # fmt: skip
    for n in range(1, 200):
        assert n <= packed.rows_bucket(n) <= max(4, n * 3 // 2 + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=48))
def test_first_fit_places_every_sequence_whole_without_overlap(lengths):
    lengths = np.array(lengths)
    row, offset = packed.first_fit(lengths, 64)
    assert (offset >= 0).all() and (offset + lengths <= 64).all()
    fill = np.zeros(row.max() + 1, dtype=int)
    for r in range(row.max() + 1):
        mine = np.flatnonzero(row == r)
        spans = sorted(zip(offset[mine], offset[mine] + lengths[mine], strict=True))
        assert spans[0][0] == 0 and all(
            a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True)
        )
        fill[r] = lengths[mine].sum()
    # first fit: no two rows could have been one
    assert all(fill[a] + fill[b] > 64 for a in range(len(fill)) for b in range(a + 1, len(fill)))


def unpack(batch, trials: int, slots: int) -> list[list[np.ndarray]]:
    """Each trial's sentences in reading order, read back from the packed rows."""
    ids = batch.input_ids.numpy().reshape(trials, -1, batch.input_ids.shape[1])
    segs = batch.attention_mask.numpy().reshape(ids.shape)
    out = []
    for k in range(trials):
        sentences = []
        for r in range(ids.shape[1]):
            for s in range(1, segs[k, r].max() + 1):
                sentences.append(ids[k, r][segs[k, r] == s])
        out.append(sentences)
    return out


@pytest.mark.parametrize("regression", [False, True])
def test_pack_keeps_each_trials_sentences_and_labels_in_reading_order(regression):
    data = synthetic(70, seed=4, regression=regression)
    parts = [np.arange(0, 32), np.arange(32, 70)[:20], np.arange(0, 32)]  # one trial short
    batch, counts = packed.pack(data, parts, slots=32, ignore=IGNORE_INDEX)
    rows = batch.input_ids.shape[0] // 3
    assert batch.input_ids.shape[1] == packed.WIDTH and rows == packed.rows_bucket(rows)
    labels = batch.labels.view(3, 32)
    for k, (part, sentences) in enumerate(zip(parts, unpack(batch, 3, 32), strict=True)):
        assert len(sentences) == len(part)
        # each sentence once, whole: match them to the data rows by content
        rows_of = {data.row(i).tobytes(): i for i in part}
        order = [rows_of[s.astype(data.input_ids.dtype).tobytes()] for s in sentences]
        assert sorted(order) == sorted(part.tolist())
        np.testing.assert_array_equal(labels[k, : len(part)].numpy(), data.labels[order])
        unused = labels[k, len(part) :]
        assert (unused.isnan() if regression else unused == IGNORE_INDEX).all()
        assert counts[k] == (len(part), int(data.lengths[part].sum()), rows * packed.WIDTH)
    assert parts[0].tolist() == parts[2].tolist()  # trials of one seed pack alike
    assert torch.equal(batch.input_ids.view(3, rows, -1)[0], batch.input_ids.view(3, rows, -1)[2])


def test_a_sentence_longer_than_a_row_widens_the_rows():
    lengths = np.array([66, 4, 2])
    ids = np.arange(1, lengths.sum() + 1, dtype=np.int32)
    data = Encoded(ids, np.r_[0, np.cumsum(lengths)], np.array([0, 1, 0]))
    batch, _ = packed.pack(data, [np.arange(3)], slots=4, ignore=IGNORE_INDEX)
    assert batch.input_ids.shape == (1, 72)  # 66 rounded up to the padding multiple; all in one


def test_positions_restart_and_attention_stays_within_a_sentence():
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert packed.positions(segments)[:, :6].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    mask = packed.block_mask(segments)
    assert mask[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert mask[0, 4].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert mask[0, 7].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]  # padding sees padding only
    hidden = torch.arange(16 * 2, dtype=torch.float32).view(2, 8, 2)
    means = packed.segment_mean(hidden, segments, trials=2, slots=4)
    expected = [hidden[0, :3].mean(0), hidden[0, 3:5].mean(0), hidden[0, 5], torch.zeros(2),
                hidden[1].mean(0), torch.zeros(2), torch.zeros(2), torch.zeros(2)]  # fmt: skip
    torch.testing.assert_close(means, torch.stack(expected))


def test_a_packed_step_gives_each_trial_the_padded_steps_loss_and_gradient():
    configs = [BASE, BASE.replace(seed=5)]  # two data orders; the last step's batches are short
    model = no_dropout(FusedLoRA([member(4, 8, seed=1), member(8, 16, seed=2)]))
    with torch.no_grad():
        model.theta.normal_(std=0.1)  # non-zero LoRA factors, so that every path counts
    steps = zip(fused_batches(TRAIN_ODD, configs, epoch=0, pack=True),
                fused_batches(TRAIN_ODD, configs, epoch=0), strict=True)  # fmt: skip
    for (pb, pcounts), (ub, ucounts) in steps:
        assert [c[:2] for c in pcounts] == [c[:2] for c in ucounts]
        results = []
        for batch, slots in ((pb, BASE.batch_size), (ub, None)):
            model.theta.grad = None
            logits = model(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                           slots=slots)  # fmt: skip
            losses = fused_losses(logits, batch.labels, "classification")
            losses.sum().backward()
            results.append((losses.detach(), model.theta.grad.clone()))
        (lp, gp), (lu, gu) = results
        torch.testing.assert_close(lp, lu, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gp, gu, atol=1e-5, rtol=1e-4)
