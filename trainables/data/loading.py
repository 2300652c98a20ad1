"""The rows of a task's official splits, as DataFrames.

Where rows come from, in order: an explicit ``data_dir`` (a local mirror laid out as
``<data_dir>/<dataset>/<config>/<split>.parquet``), else the folder named by
``$PEFT_TUNE_DATA_DIR``, else the Hugging Face Hub. A split the mirror lacks (ag_news train) is
asked of the hub. A user's own data set is a folder of ``train.*`` (+ optional ``validation.*``,
``test.*``) parquet or CSV files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from search_spaces.errors import ConfigError, did_you_mean
from trainables.data.tasks import (
    PAIR_SCHEMA,
    REGRESSION_METRIC,
    SCHEMAS,
    SINGLE_SCHEMA,
    SPLITS,
    TASKS,
    Task,
    get_task,
)  # fmt: skip

DATA_DIR_ENV = "PEFT_TUNE_DATA_DIR"
LABEL = "label"
TABLE_SUFFIXES = (".parquet", ".csv")
LABELS_FILE = "labels.json"
HUB_LABEL_TEXT = "label_text"  # SetFit hub copies name each label; we map names, not ids
_PATH_PREFIXES = ("/", "./", "../", "~")


def resolve_task(name_or_path: str | Path | Task) -> Task:
    """A registered task by name, or a task built from a folder of the user's files."""
    if isinstance(name_or_path, Task):
        return name_or_path
    text = str(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in TASKS:
        return get_task(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return task_for_folder(path)
    if path.exists():
        raise ConfigError(f"task={text!r} is a file; expected a folder holding train.parquet/csv")
    if isinstance(name_or_path, Path) or text.startswith(_PATH_PREFIXES):
        raise ConfigError(f"folder {text!r} does not exist")
    raise ConfigError(
        f"task={text!r} is neither a registered task nor an existing folder; "
        f"registered tasks: {', '.join(TASKS.names())}{did_you_mean(text, TASKS.names())}"
    )


def load_frames(
    task_or_path: str | Path | Task,
    *,
    data_dir: str | Path | None = None,
    splits: tuple[str, ...] | None = None,
) -> dict[str, pd.DataFrame]:
    """``{split: frame}`` for the task's official splits (or ``splits``, a subset of them).

    Frames have the task's text columns (``text`` or ``sentence1``, ``sentence2``) and
    ``label`` (int64 class ids in ``[0, num_labels)``, float64 for regression), a fresh
    0..n-1 index, and the task's documented row drops (``Task.drop_empty``) applied.
    """
    task = resolve_task(task_or_path)
    wanted = task.splits if splits is None else splits
    unknown = [s for s in wanted if s not in task.splits]
    if unknown:
        raise ConfigError(f"task {task.name}: splits {unknown} are not among {list(task.splits)}")
    if task.folder is not None:
        raw = read_folder(task.folder)
        return {s: _normalise(task, raw[s], origin=f"{task.folder}/{s}") for s in wanted}
    root = _mirror_root(data_dir)
    return {split: _load_split(task, split, root) for split in wanted}


def read_folder(path: str | Path) -> dict[str, pd.DataFrame]:
    """The raw tables of a user's folder: ``train`` always, ``validation``/``test`` if present."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"folder {str(path)!r} does not exist")
    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        found = [
            folder / f"{split}{s}" for s in TABLE_SUFFIXES if (folder / f"{split}{s}").is_file()
        ]
        if len(found) > 1:
            raise ConfigError(
                f"folder {str(folder)!r} has both {found[0].name} and {found[1].name}"
            )
        if found:
            frames[split] = _read_table(found[0])
    if "train" not in frames:
        present = sorted(p.name for p in folder.iterdir())
        raise ConfigError(
            f"folder {str(folder)!r} has no train.parquet or train.csv (found: {present})"
        )
    return frames


def task_for_folder(path: str | Path) -> Task:
    """A :class:`Task` for a user's folder: float labels mean regression (pearson_spearman),
    integer or string labels classification (accuracy). An optional ``labels.json`` (a list of
    names, as in the mirror) names integer labels; string labels are named by themselves."""
    folder = Path(path).expanduser().resolve()
    frames = read_folder(folder)
    text_columns = _schema(frames, origin=str(folder))
    labels = pd.concat([f[LABEL] for f in frames.values()], ignore_index=True)
    if labels.isna().any():
        raise ConfigError(f"folder {str(folder)!r}: {int(labels.isna().sum())} rows have no label")
    names = _label_names(folder, labels)
    regression = pd.api.types.is_float_dtype(labels)
    return Task(
        name=str(folder), folder=str(folder), text_columns=text_columns,
        num_labels=1 if regression else len(names), label_names=() if regression else names,
        metric=REGRESSION_METRIC if regression else "accuracy",
        splits=tuple(s for s in SPLITS if s in frames),
        note="A user's folder." + (" No official test: test is carved." if "test" not in frames else ""),
    )  # fmt: skip


def _label_names(folder: Path, labels: pd.Series) -> tuple[str, ...]:
    if pd.api.types.is_float_dtype(labels):
        return ()
    if not pd.api.types.is_integer_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        return tuple(sorted(str(v) for v in labels.unique()))
    ids = labels.astype("int64")
    if ids.min() < 0:
        raise ConfigError(f"folder {str(folder)!r}: label={int(ids.min())} must be >= 0")
    names_file = folder / LABELS_FILE
    named = json.loads(names_file.read_text()) if names_file.is_file() else []
    count = max(int(ids.max()) + 1, len(named) if isinstance(named, list) else 0)
    if isinstance(named, list) and len(named) == count:
        return tuple(str(n) for n in named)
    return tuple(str(i) for i in range(count))


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    # empty text cells are text (""), empty label cells are missing labels
    return pd.read_csv(path, keep_default_na=False, na_values={LABEL: [""]})


def _schema(frames: dict[str, pd.DataFrame], *, origin: str) -> tuple[str, ...]:
    """The text columns shared by every split, or a ConfigError naming what was found."""
    for split, frame in frames.items():
        columns = set(frame.columns)
        matches = [s for s in SCHEMAS if {*s, LABEL} <= columns]
        if not matches:
            expected = " or ".join(str([*s, LABEL]) for s in SCHEMAS)
            raise ConfigError(
                f"{origin}/{split}: columns {list(frame.columns)} lack the expected {expected}"
            )
    first = next(iter(frames.values()))
    return PAIR_SCHEMA if set(PAIR_SCHEMA) <= set(first.columns) else SINGLE_SCHEMA


def _mirror_root(data_dir: str | Path | None) -> Path | None:
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data_dir={str(chosen)!r} is not an existing folder")
    return root


def _load_split(task: Task, split: str, root: Path | None) -> pd.DataFrame:
    if root is not None and task.mirror_path is not None:
        path = root / task.mirror_path / f"{split}.parquet"
        if path.is_file():
            return _normalise(task, pd.read_parquet(path), origin=str(path))
    return _normalise(task, _from_hub(task, split, root), origin=f"hub {task.hub_id}/{split}")


def _from_hub(task: Task, split: str, root: Path | None) -> pd.DataFrame:
    """The hub's copy of ``split`` (the concatenation of ``task.hub_splits_for(split)``)."""
    where = (
        f"task {task.name}: split {split!r} is not in the local mirror {root}"
        if root is not None
        else f"task {task.name}: no local mirror (set {DATA_DIR_ENV} or --data-dir)"
    )
    if task.hub_id is None:
        raise ConfigError(f"{where} and the task has no Hugging Face Hub source")
    try:
        import datasets  # heavy, and only needed when the hub is asked

        parts = [
            datasets.load_dataset(task.hub_id, task.hub_config, split=hub_split).to_pandas()
            for hub_split in task.hub_splits_for(split)
        ]
    except Exception as exc:  # offline mode, DNS, HTTP, missing repo: all mean "unreachable"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{where} and the Hugging Face Hub is unreachable: {reason}") from exc
    frame = pd.concat(parts, ignore_index=True).rename(columns=dict(task.hub_columns))
    if HUB_LABEL_TEXT in frame.columns and not task.is_regression:
        frame[LABEL] = frame[HUB_LABEL_TEXT].astype(str)  # _normalise maps names to our ids
    return frame


def _normalise(task: Task, frame: pd.DataFrame, *, origin: str) -> pd.DataFrame:
    """Our columns only, labels checked and typed, documented drops applied, index 0..n-1."""
    columns = [*task.text_columns, LABEL]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{origin}: columns {list(frame.columns)} lack the expected {columns}")
    out = frame[columns].copy()
    for column in task.text_columns:
        out[column] = out[column].astype(str)
    if task.drop_empty:
        empty = (out[list(task.text_columns)] == "").any(axis=1)
        out = out[~empty]
    out[LABEL] = _label_ids(task, out[LABEL], origin=origin)
    return out.reset_index(drop=True)


def _label_ids(task: Task, labels: pd.Series, *, origin: str) -> pd.Series:
    if task.is_regression:
        return labels.astype("float64")
    if not pd.api.types.is_numeric_dtype(labels):
        index = {name: i for i, name in enumerate(task.label_names)}
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise ConfigError(f"{origin}: labels {unknown[:5]} are not among {task.label_names}")
        return labels.astype(str).map(index).astype("int64")
    ids = labels.astype("int64")
    bad = ids[(ids < 0) | (ids >= task.num_labels)]
    if len(bad):
        raise ConfigError(
            f"{origin}: label={int(bad.iloc[0])} is outside 0..{task.num_labels - 1} "
            f"({len(bad)} rows)"
        )
    return ids
