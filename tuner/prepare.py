"""Data for a study, prepared once on the driver: load, split honestly, subsample, tokenise (cached).

Trials receive the result through Ray's object store, so a study of 100 trials tokenises once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.loading import load_frames, resolve_task
from trainables.data.splits import few_shot, reported_test, task_splits
from trainables.data.tokenize import encode
from trainables.prepared import PreparedData


def prepare(
    task_name: str,
    *,
    tokenizer: object,
    max_length: int,
    train_samples: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    extra_tests: tuple[str, ...] = (),
    source_adapters: dict[int, dict[str, Path]] | None = None,
    test: bool = True,
) -> PreparedData:
    """Tokenised train/dev/test of ``task_name`` (a registered task or a folder).

    ``train_samples`` keeps a stratified, seeded, nested subset of the honest train split (the
    few-shot sets of E2 and the small presets). ``extra_tests`` are scored at the end only.
    ``test=False`` leaves the test split empty, untokenised: a source adapter is scored on dev
    only, and IMDB's 25,000 test reviews cost more to tokenise than its training split.
    """
    task = resolve_task(task_name)
    splits = task_splits(task, load_frames(task, data_dir=data_dir), seed=seed)
    train = splits.train
    if train_samples is not None and train_samples < len(train):
        train = few_shot(train, train_samples, seed=seed)

    def tok(frame: object) -> object:
        return encode(
            frame, tokenizer=tokenizer, text_columns=task.text_columns, max_length=max_length
        )

    extras = {name: tok(reported_test(resolve_task(name), data_dir=data_dir, seed=seed))
              for name in extra_tests}  # fmt: skip
    dev = tok(splits.dev)
    return PreparedData(
        task=task.name,
        task_kind=task.task_kind,
        metric=task.metric,
        num_labels=task.num_labels,
        train=tok(train),
        dev=dev,
        test=tok(splits.test) if test else dev.select(np.zeros(0, dtype=np.int64)),
        extra_tests=extras,
        source_adapters=source_adapters or {},
    )
