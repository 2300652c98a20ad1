"""The hybrid's novelty knobs against the plain hybrid: arm table, seed-paired deltas and the
layers fusion-aware placement chose (from the entropy record saved with the weights)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.arms import arm_label, arm_table, missing, paired_deltas
from analysis.artifacts import TrialArtifacts, with_config_keys
from analysis.selection import completed
from analysis.tables import Table

KEYS = ("fusion_init", "lora_placement_rule")
PLAIN = {"fusion_init": "uniform", "lora_placement_rule": "fixed"}
ENTROPY_RECORD = "encoder.lora_slots.record"  # entropy per fused layer, then each slot's layer


def novelty_frame(trials: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts]) -> pd.DataFrame:
    """``trials`` with the knobs (from the recorded configs if the params lack them) and ``arm``."""
    frame = with_config_keys(trials, artifacts, KEYS)
    for key, default in PLAIN.items():  # a config recorded before the knob existed is plain
        frame[key] = frame[key].where(frame[key].notna(), default)
    return frame.assign(arm=[arm_label(r, KEYS) for _, r in frame.iterrows()])


def novelty_table(frame: pd.DataFrame, *, score: str) -> Table:
    return arm_table(frame, keys=KEYS, score=score)


def novelty_deltas(frame: pd.DataFrame, *, score: str) -> pd.DataFrame:
    """Each knob arm minus the plain hybrid, paired on seeds (points, 95% bootstrap interval)."""
    plain = arm_label(pd.Series(PLAIN), KEYS)
    return paired_deltas(completed(frame), arm="arm", control=plain, score=score)


def placement_records(frame: pd.DataFrame, artifacts: Mapping[str, TrialArtifacts]) -> pd.DataFrame:
    """Per completed fusion-entropy trial: the chosen LoRA layers and the entropy of each fused
    layer (``H_L<i>``, nats) measured during the warm-up."""
    done = completed(frame)
    if done.empty:
        return pd.DataFrame(columns=["trial_id", "seed", "chosen_layers"])
    rows = []
    for _, r in done[done["lora_placement_rule"] == "fusion_entropy"].iterrows():
        found = _from_metrics(r) or _from_weights(r, artifacts.get(r["trial_id"]))
        if found is None:
            continue
        entropies, slots = found
        rows.append({"trial_id": r["trial_id"], "seed": r.get("seed"),
                     "chosen_layers": ",".join(str(int(s)) for s in slots),
                     **{f"H_L{i}": h for i, h in entropies.items()}})  # fmt: skip
    return pd.DataFrame(rows)


def _from_metrics(row: pd.Series) -> tuple[dict[int, float], list[float]] | None:
    """The trial's final metrics ``fusion_entropy_L<i>`` and ``lora_slot<j>_layer``."""
    entropies = _numbered(row, r"fusion_entropy_L(\d+)")
    slots = _numbered(row, r"lora_slot(\d+)_layer")
    return (entropies, [slots[j] for j in sorted(slots)]) if entropies and slots else None


def _numbered(row: pd.Series, pattern: str) -> dict[int, float]:
    """``{i: value}`` of the row's logged values whose key matches ``pattern`` (group 1: i)."""
    found = {}
    for key, value in row.items():
        match = re.fullmatch(pattern, str(key))
        if match and not missing(value):
            found[int(match[1])] = float(value)
    return found


def _from_weights(
    row: pd.Series, found: TrialArtifacts | None
) -> tuple[dict[int, float], list[float]] | None:
    """The entropy record saved with the weights (runs whose metrics lack the figures)."""
    if found is None or found.weights is None or ENTROPY_RECORD not in found.weights:
        return None
    record = np.asarray(found.weights[ENTROPY_RECORD], dtype=float)
    k = len(str(row.get("layers") or "").split(",")) if row.get("layers") is not None else 0
    entropies, slots = record[: len(record) - k], record[len(record) - k :]
    fused = _fused_layers(row.get("fusion_layers"), len(entropies))
    return dict(zip(fused, map(float, entropies), strict=True)), list(slots)


def _fused_layers(param: object, n: int) -> list[int]:
    if missing(param):
        return list(range(n))
    return [int(x) for x in str(param).split(",")]


__all__ = ["KEYS", "novelty_deltas", "novelty_frame", "novelty_table", "placement_records"]
