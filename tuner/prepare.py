"""Data for a study, prepared once on the driver: load, split honestly, subsample, tokenise (cached).

Trials receive the result through Ray's object store, so a study of 100 trials tokenises once.
"""

from __future__ import annotations

from pathlib import Path

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
) -> PreparedData:
    """Tokenised train/dev/test of ``task_name`` (a registered task or a folder).

    ``train_samples`` keeps a stratified, seeded, nested subset of the honest train split (the
    few-shot sets of E2 and the small presets). ``extra_tests`` are scored at the end only.
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
    return PreparedData(
        task=task.name,
        task_kind=task.task_kind,
        metric=task.metric,
        num_labels=task.num_labels,
        train=tok(train),
        dev=tok(splits.dev),
        test=tok(splits.test),
        extra_tests=extras,
        source_adapters=source_adapters or {},
    )
