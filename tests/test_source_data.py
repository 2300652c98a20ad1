"""The source adapters' data: train and dev only, tokenised in threads (each with its own copy of
the real tokenizer) exactly as the driver's one tokenizer does, one tokenisation per source however
many bottlenecks train on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainables.backbones import load_backbone
from trainables.data.tokenize import cache_stats, reset_cache_stats
from trainables.source_store import SourceSpec
from tuner.prepare import prepare
from tuner.sources import source_data_of

TRAIN = (("epochs", 1.0), ("max_length", 48))
SAMPLES = 300  # a stratified subset: the threading, not the data's size, is under test


def _spec(source: str, bottleneck: int) -> SourceSpec:
    return SourceSpec(source=source, backbone="minilm-l6", bottleneck=bottleneck, train=TRAIN,
                      train_samples=SAMPLES)  # fmt: skip


def _same(a, b) -> None:
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.labels, b.labels)


def test_each_source_tokenised_once_in_threads_as_the_driver_would(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEFT_TUNE_CACHE_DIR", str(tmp_path / "tokens"))
    specs = [_spec("glue/sst2", 24), _spec("glue/cola", 24), _spec("glue/sst2", 48)]
    reset_cache_stats()
    got = list(source_data_of(specs, backbone="minilm-l6", data_dir=str(data_dir)))

    assert sorted((s.source, s.bottleneck) for s, _ in got) == sorted(
        (s.source, s.bottleneck) for s in specs)  # fmt: skip
    stats = cache_stats()
    assert (stats.misses, stats.hits) == (4, 0)  # train and dev of two sources, no test split
    by_spec = dict(got)
    assert by_spec[specs[0]] is by_spec[specs[2]]  # two bottlenecks, one tokenisation

    tokenizer = load_backbone("minilm-l6", meta=True).tokenizer
    for spec in specs[:2]:
        data = by_spec[spec]
        assert data.task == spec.source and len(data.test) == 0 and len(data.dev) > 0
        # the driver's own tokenizer, in this thread, with the test split: the same rows, ids
        # and labels (a second tokenisation, not a cache hit: another cache folder)
        monkeypatch.setenv("PEFT_TUNE_CACHE_DIR", str(tmp_path / "driver"))
        whole = prepare(spec.source, tokenizer=tokenizer, max_length=48, train_samples=SAMPLES,
                        data_dir=data_dir)  # fmt: skip
        _same(data.train, whole.train)
        _same(data.dev, whole.dev)
        assert len(whole.test) > 0 and data.test.labels.dtype == whole.test.labels.dtype
