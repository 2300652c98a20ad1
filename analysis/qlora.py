"""The QLoRA study as data (issue #24, study 004's last table): each arm's score beside its
full-precision twin, and the memory table.

An arm is (task, budget_params, method, quantize); its configuration chosen on dev stands for it
(:func:`analysis.arms.arm_table`). A twin is the same (task, budget, method) with
``quantize=none``. Trials logged before ``quantize`` existed count as ``none``.

Memory, per arm (medians over its completed trials of that configuration): ``base_mib`` and
``adapter_mib`` measured on the trial's model (``PeftClassifier.memory_bytes``: the frozen base as
held, 4-bit weights with their quantisation state; the method's weights in fp32),
``peak_mem_mib`` (``torch.cuda.max_memory_allocated`` over training and the final evaluations;
CUDA only) and the throughput, from which the slowdown against the twin follows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.arms import arm_table
from analysis.selection import select_configs
from analysis.tables import Table

KEYS = ("task", "budget_params", "method", "quantize")
TWIN_KEYS = ("task", "budget_params", "method")
MEMORY = ("base_mib", "adapter_mib", "peak_mem_mib")
TARGET_POINTS = 0.5  # the target: QLoRA within half a point of its full-precision twin


def with_quantize(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with a ``quantize`` column; a trial that logged none ran unquantised."""
    if "quantize" in trials.columns:
        return trials.assign(quantize=trials["quantize"].fillna("none").astype(str))
    return trials.assign(quantize="none")


def accuracy_table(trials: pd.DataFrame, *, score: str) -> Table:
    """Per arm: mean ± std of ``score`` over seeds (points) of its configuration chosen on dev,
    with ``delta``, its mean minus its full-precision twin's (points; NaN for the twins), and
    ``within_target`` (|delta| <= 0.5 points)."""
    table = arm_table(with_quantize(trials), keys=KEYS, score=score)
    data = table.data
    if data.empty:
        return table
    twins = data[data["quantize"] == "none"].set_index(list(TWIN_KEYS))["mean"]
    index = pd.MultiIndex.from_frame(data[list(TWIN_KEYS)])
    twin_mean = twins.reindex(index).to_numpy()
    delta = np.where(data["quantize"] == "none", np.nan, data["mean"].to_numpy() - twin_mean)
    data = data.assign(delta=delta, within_target=np.where(
        np.isnan(delta), None, np.abs(delta) <= TARGET_POINTS))  # fmt: skip
    return Table(table.name, data, table.left_out, table.missing, table.note)


def memory_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per arm: trainable parameters, base and adapter MiB, peak GPU MiB, throughput and the
    slowdown against its twin (twin's samples/s over the arm's; 1.0 for the twins)."""
    cols = [*KEYS, "trainable_params", *MEMORY, "train_samples_per_s", "slowdown"]
    chosen = select_configs(with_quantize(trials), KEYS)
    if chosen.empty:
        return pd.DataFrame(columns=cols)
    wanted = ["trainable_params", *MEMORY, "train_samples_per_s"]
    chosen = chosen.assign(**{c: np.nan for c in wanted if c not in chosen})
    rows = chosen.groupby(list(KEYS), dropna=False, sort=True)[wanted].median().reset_index()
    twins = rows[rows["quantize"] == "none"].set_index(list(TWIN_KEYS))["train_samples_per_s"]
    twin_speed = twins.reindex(pd.MultiIndex.from_frame(rows[list(TWIN_KEYS)])).to_numpy()
    rows["slowdown"] = twin_speed / rows["train_samples_per_s"].to_numpy()
    return rows[cols]


__all__ = ["TARGET_POINTS", "accuracy_table", "memory_table", "with_quantize"]
