"""The study plan's hypotheses H1-H4 as verdicts with numbers (docs/ANALYSIS.md gives the tests).

Every verdict carries a mean paired difference in points (lora_fusion minus its comparison; for
H4 the comparison's seed spread minus lora_fusion's), a 95% bootstrap interval and the number of
pairs. The rule is the same everywhere: fewer than :data:`MIN_PAIRS` pairs is *insufficient
evidence*; an interval wholly above 0 is *supported*; anything else is *not supported*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analysis.selection import (
    MAJORITY,
    POINTS,
    SELECT_BY,
    at_or_below_majority,
    paired,
    select_configs,
    with_seed,
)
from analysis.stats import Estimate, paired_bootstrap, paired_spread_bootstrap
from analysis.tables import TREATMENT, evaluation_sets

MIN_PAIRS = 3
MIN_SEEDS_FOR_SPREAD = 3  # a std over two seeds says little: H4 counts sizes with >= 3 seeds
FEW_SHOT_MAX = 5_000
# H1's "single PEFT methods": every one-method baseline (full fine-tuning is the upper bound,
# UniPELT already a hybrid).
SINGLE_PEFT = ("bitfit", "lora", "adalora", "houlsby", "pfeiffer", "prefix", "fusion")
DEFAULT_TOLERANCE = 0.05
CLAIMS = {
    "H1": "LoRA+Fusion >= the best single PEFT method on single tasks at a fixed budget (E1)",
    "H2-few-shot": "LoRA+Fusion beats LoRA alone with few training examples (E2)",
    "H2-transfer": "Fused source adapters + LoRA beat LoRA alone on the transfer target (E3)",
    "H2-shift": "LoRA+Fusion beats LoRA alone on domain-shift sets (E3 shift)",
    "H3": "LoRA+Fusion beats LoRA at matched trainable parameters (E4, E1)",
    "H4": "Fusion stabilises low-data LoRA: smaller seed spread at <= 5k examples (E2)",
}
NEEDS = {"H1": ("e1_single_task",), "H2-few-shot": ("e2_few_shot",),
         "H2-transfer": ("e3_transfer",), "H2-shift": ("e3_shift",),
         "H3": ("e4_budget", "e1_single_task"), "H4": ("e2_few_shot",)}  # fmt: skip
BY_EXPERIMENT = {e: tuple(h for h, needs in NEEDS.items() if e in needs)
                 for e in ("e1_single_task", "e2_few_shot", "e3_transfer", "e3_shift", "e4_budget")}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    hypothesis: str
    claim: str
    verdict: str  # "supported" | "not supported" | "insufficient evidence"
    effect_size: float  # points; NaN only when there is not a single pair
    ci_low: float
    ci_high: float
    n_pairs: int
    evidence: str


def decide(estimate: Estimate) -> str:
    if min(estimate.n, estimate.units) < MIN_PAIRS or np.isnan(estimate.ci_low):
        return "insufficient evidence"
    return "supported" if estimate.ci_low > 0 else "not supported"


def verdict(hypothesis: str, estimate: Estimate, evidence: str) -> Verdict:
    return Verdict(hypothesis, CLAIMS[hypothesis], decide(estimate), estimate.value,
                   estimate.ci_low, estimate.ci_high, estimate.n, evidence)  # fmt: skip


def _from_pairs(hypothesis: str, pairs: pd.DataFrame, group: str, evidence: str) -> Verdict:
    groups = pairs[group].astype(str).tolist() if len(pairs) else None
    est = paired_bootstrap(pairs["diff"].to_numpy(float), groups)
    resampled = "" if est.unit == "pairs" else f", CI over {est.units} {group} means"
    return verdict(hypothesis, est, f"{evidence}; {len(pairs)} seed pairs{resampled}")


def h1_performance(e1: pd.DataFrame, *, score: str = "test_score") -> Verdict:
    """lora_fusion minus the task's best single PEFT method (chosen on mean dev), seed-paired per
    task; the effect is the mean over tasks of the per-task mean differences."""
    chosen = select_configs(e1, ["task", "method"])
    parts, picks = [], []
    for task, g in chosen.groupby("task", sort=True):
        base = g[g["method"].isin(SINGLE_PEFT)]
        if base.empty or SELECT_BY not in base:
            continue
        best = base.groupby("method")[SELECT_BY].mean().sort_values(ascending=False).index[0]
        picks.append(f"{task}: {best}")
        parts.append(paired(g, score, treatment=TREATMENT, control=best, by=["task"]))
    pairs = pd.concat(parts) if parts else pd.DataFrame(columns=["task", "diff"])
    return _from_pairs(
        "H1", pairs, "task", f"E1 {score}, best baseline per task ({'; '.join(picks) or 'none'})"
    )


def h2_few_shot(e2: pd.DataFrame, *, score: str = "test_score") -> Verdict:
    """lora_fusion minus lora, seed-paired within each training size, averaged over sizes."""
    pairs = paired(e2, score, treatment=TREATMENT, control="lora", by=["train_samples"])
    sizes = ", ".join(str(int(k)) for k in sorted(pairs["train_samples"].unique()))
    return _from_pairs("H2-few-shot", pairs, "train_samples", f"E2 {score} at sizes [{sizes}]")


def h2_transfer(e3: pd.DataFrame, *, score: str = "test_score") -> Verdict:
    """lora_fusion minus lora on the transfer target's test split, seed-paired per task."""
    pairs = paired(e3, score, treatment=TREATMENT, control="lora", by=["task"])
    return _from_pairs("H2-transfer", pairs, "task", f"E3 transfer {score}")


def h2_shift(e3_shift: pd.DataFrame) -> Verdict:
    """lora_fusion minus lora on every domain-shift set, seed-paired, averaged over the sets."""
    parts = []
    for label, col in evaluation_sets(e3_shift):
        if label.startswith("shift:"):
            pairs = paired(e3_shift, col, treatment=TREATMENT, control="lora", by=["task"])
            parts.append(pairs.assign(set=label))
    pairs = pd.concat(parts) if parts else pd.DataFrame(columns=["set", "diff"])
    names = ", ".join(sorted(pairs["set"].unique())) or "none"
    return _from_pairs("H2-shift", pairs, "set", f"E3 shift sets [{names}]")


def matched(trials: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Trials within their budget's tolerance (``|budget_deviation| <= tolerance``)."""
    if trials.empty or "budget_params" not in trials:
        return trials.iloc[0:0]
    tol = trials["tolerance"].fillna(tolerance) if "tolerance" in trials else tolerance
    if "budget_deviation" in trials:
        deviation = trials["budget_deviation"]
    else:
        deviation = trials["trainable_params"] / trials["budget_params"] - 1.0
    return trials[deviation.abs() <= tol + 1e-12]


def h3_budget(*frames: pd.DataFrame, score: str = "test_score") -> Verdict:
    """lora_fusion minus lora among trials matched to the same budget (task, budget_params),
    each arm's configuration chosen on dev, seed-paired; the effect averages the groups."""
    frames = tuple(f for f in frames if not f.empty)
    within = matched(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    pairs = paired(within, score, treatment=TREATMENT, control="lora", by=["task", "budget_params"])
    budget = pairs["budget_params"].map(lambda b: f"{float(b):,.0f}")
    pairs = pairs.assign(group=pairs["task"].astype(str) + " @ " + budget)
    budgets = "; ".join(sorted(pairs["group"].unique())) or "none"
    return _from_pairs("H3", pairs, "group", f"E4/E1 {score} within tolerance at [{budgets}]")


def h4_stability(e2: pd.DataFrame, *, score: str = "test_score") -> Verdict:
    """Seed spread (sample std, points) of lora minus that of lora_fusion per training size
    <= 5k with >= 3 common seeds; averaged over sizes, CI by resampling seeds within sizes."""
    chosen = with_seed(select_configs(e2, ["method", "train_samples"]))
    blocks, sizes = [], []
    if not chosen.empty and score in chosen:
        small = chosen[chosen["train_samples"] <= FEW_SHOT_MAX]
        table = small.pivot_table(index=["train_samples", "seed"], columns="method", values=score)
        for k, g in table.groupby(level="train_samples"):
            if not {"lora", TREATMENT} <= set(g.columns):
                continue
            g = g[["lora", TREATMENT]].dropna() * POINTS
            if len(g) >= MIN_SEEDS_FOR_SPREAD:
                blocks.append((g["lora"].to_numpy(), g[TREATMENT].to_numpy()))
                sizes.append(str(int(k)))
    est = paired_spread_bootstrap(blocks)
    return verdict(
        "H4", est, f"E2 {score} std over seeds, sizes [{', '.join(sizes)}] (pairs = sizes)"
    )


# The methods each verdict compares by name (H1's baselines are chosen inside it, on dev).
COMPARED = {"H1": (TREATMENT,), "H2-few-shot": (TREATMENT, "lora"),
            "H2-transfer": (TREATMENT, "lora"), "H2-shift": (TREATMENT, "lora"),
            "H3": (TREATMENT, "lora"), "H4": (TREATMENT, "lora")}  # fmt: skip
NOT_LEARNED = "arm did not learn"


def unlearned(trials: pd.DataFrame, methods: tuple[str, ...]) -> list[str]:
    """Those of ``methods`` whose configuration chosen on dev scores, on mean dev, at or below
    the majority class (recorded by each trial); a study without the baseline has none."""
    chosen = select_configs(trials, ["method"])
    if chosen.empty or MAJORITY not in chosen:
        return []
    means = chosen.groupby("method")[[SELECT_BY, MAJORITY]].mean()
    flat = means[at_or_below_majority(means)].index
    return [m for m in methods if m in flat]


def keep_out_unlearned(v: Verdict, trials: pd.DataFrame) -> Verdict:
    """A verdict is not decided from an arm that did not learn: it says so instead, numbers kept."""
    flat = unlearned(trials, COMPARED[v.hypothesis])
    if not flat or v.verdict == "insufficient evidence":
        return v
    note = f"{', '.join(flat)} at or below the majority class on dev: not decided"
    return replace(v, verdict=NOT_LEARNED, evidence=f"{v.evidence}; {note}")


def evaluate(studies: Mapping[str, pd.DataFrame]) -> list[Verdict]:
    """Every hypothesis whose experiments are in ``studies`` (experiment name -> trials); a verdict
    that compares an arm which did not learn is marked so, not decided (:func:`keep_out_unlearned`)."""
    checks = {
        "H1": lambda: h1_performance(studies["e1_single_task"]),
        "H2-few-shot": lambda: h2_few_shot(studies["e2_few_shot"]),
        "H2-transfer": lambda: h2_transfer(studies["e3_transfer"]),
        "H2-shift": lambda: h2_shift(studies["e3_shift"]),
        "H3": lambda: h3_budget(*(studies[e] for e in NEEDS["H3"] if e in studies)),
        "H4": lambda: h4_stability(studies["e2_few_shot"]),
    }
    found = []
    for h, check in checks.items():
        present = [studies[e] for e in NEEDS[h] if e in studies]
        if present:
            found.append(keep_out_unlearned(check(), pd.concat(present, ignore_index=True)))
    return found
