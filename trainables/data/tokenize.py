"""Tokenise a split once, cache it on disk by content, and hand back a flat :class:`Encoded`.

The cache key is a sha256 over everything that decides the output: the texts, the labels, the
tokenizer (name, vocabulary size and its full backend JSON), ``max_length``, the text column
names and this module's format version. Equal inputs therefore share a file whichever trial,
process or machine wrote it; any change misses. Files are written to a temporary name and moved
into place with ``os.replace`` (atomic on POSIX), so a concurrent reader sees the whole file or
none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search_spaces.errors import ConfigError
from trainables.data.encoded import Encoded

CACHE_DIR_ENV = "PEFT_TUNE_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/peft-tune/tokens")
CACHE_FORMAT = 1  # bump when the stored arrays change meaning; old files then simply miss
BATCH_SIZE = 1024  # rows per tokenizer call: large enough to use the fast tokenizer's threads
_STATS = {"hits": 0, "misses": 0}
_STATS_LOCK = threading.Lock()  # source tasks' splits are tokenised in threads (tuner/sources.py)
_TRANSIENT_BACKEND_KEYS = ("truncation", "padding")


@dataclass(frozen=True)
class CacheStats:
    """Cache lookups since the process started (or :func:`reset_cache_stats`)."""

    hits: int
    misses: int


def cache_stats() -> CacheStats:
    return CacheStats(**_STATS)


def reset_cache_stats() -> None:
    _STATS.update(hits=0, misses=0)


def default_cache_dir() -> Path:
    """``$PEFT_TUNE_CACHE_DIR`` if set, else ``~/.cache/peft-tune/tokens``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def encode(
    frame: pd.DataFrame,
    *,
    tokenizer: Any,
    text_columns: tuple[str, ...],
    max_length: int,
    cache_dir: str | Path | None = None,
) -> Encoded:
    """Token ids of ``frame``'s rows, truncated to ``max_length`` tokens (special tokens
    included), unpadded. Pairs get int8 ``token_type_ids``. Labels are int64, or float32 when
    the ``label`` column is float (regression). ``tokenizer`` is a fast Hugging Face tokenizer.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ConfigError(f"max_length={max_length!r} must be a positive integer")
    if not 1 <= len(text_columns) <= 2:
        raise ConfigError(f"text_columns={text_columns!r} must name one or two columns")
    missing = [c for c in (*text_columns, "label") if c not in frame.columns]
    if missing:
        raise ConfigError(f"columns {missing} are missing; the frame has {list(frame.columns)}")
    texts = [frame[c].astype(str).tolist() for c in text_columns]
    labels = _labels(frame["label"])
    key = _cache_key(texts, labels, tokenizer=tokenizer, max_length=max_length, text_columns=text_columns)  # fmt: skip
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.npz"
    cached = _read(path, labels)
    with _STATS_LOCK:
        _STATS["hits" if cached is not None else "misses"] += 1
    if cached is not None:
        return cached
    encoded = _tokenize(texts, labels, tokenizer=tokenizer, max_length=max_length)
    _write(path, encoded)
    return encoded


def _labels(labels: pd.Series) -> np.ndarray:
    if pd.api.types.is_float_dtype(labels):
        return labels.to_numpy(dtype=np.float32)
    return labels.to_numpy(dtype=np.int64)


def _tokenizer_identity(tokenizer: Any) -> bytes:
    """Name, vocabulary size and the backend JSON (vocabulary, normaliser, special tokens):
    two tokenizers that agree on all three tokenise alike."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    # each call sets the backend's truncation/padding state; max_length is keyed separately
    for transient in _TRANSIENT_BACKEND_KEYS:
        backend.pop(transient, None)
    canonical = json.dumps(backend, sort_keys=True, ensure_ascii=False)
    backend_sha = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{tokenizer.name_or_path}\n{len(tokenizer)}\n{backend_sha}".encode()


def _cache_key(
    texts: list[list[str]],
    labels: np.ndarray,
    *,
    tokenizer: Any,
    max_length: int,
    text_columns: tuple[str, ...],
) -> str:
    digest = hashlib.sha256()
    header = f"format={CACHE_FORMAT}\nmax_length={max_length}\ncolumns={','.join(text_columns)}\n"
    digest.update(header.encode())
    digest.update(_tokenizer_identity(tokenizer))
    for column in texts:
        for text in column:
            data = text.encode("utf-8", "surrogatepass")
            # a length prefix keeps ["ab", "c"] and ["a", "bc"] apart
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    digest.update(labels.dtype.str.encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def _tokenize(
    texts: list[list[str]], labels: np.ndarray, *, tokenizer: Any, max_length: int
) -> Encoded:
    pair = len(texts) == 2
    ids: list[list[int]] = []
    types: list[list[int]] = []
    for start in range(0, len(labels), BATCH_SIZE):
        batch = [column[start : start + BATCH_SIZE] for column in texts]
        out = tokenizer(
            *batch,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=pair,
        )
        ids.extend(out["input_ids"])
        if pair:
            types.extend(out["token_type_ids"])
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in ids], out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    token_types = (
        np.fromiter((t for row in types for t in row), dtype=np.int8, count=int(offsets[-1]))
        if pair
        else None
    )
    return Encoded(input_ids=flat, offsets=offsets, labels=labels, token_type_ids=token_types)


def _read(path: Path, labels: np.ndarray) -> Encoded | None:
    """The cached arrays at ``path``, or None when absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            types = stored.get("token_type_ids")
            return Encoded(stored["input_ids"], stored["offsets"], labels, types)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write(path: Path, encoded: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"input_ids": encoded.input_ids, "offsets": encoded.offsets}
    if encoded.token_type_ids is not None:
        arrays["token_type_ids"] = encoded.token_type_ids
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
