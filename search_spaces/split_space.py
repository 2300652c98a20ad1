"""The budget-split space: a define-by-run Optuna space in which every sample fits the budget.

:func:`budget_split_space` precomputes every feasible split of the budget (:mod:`allocator`); a
trial then samples the coarse lumps one after another, each among the choices that still have a
feasible completion, and takes the solved fine lever (the LoRA rank, the target adapter) as
constants. TPE learns over the lumps and the learning rate; the rank is a function of them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.accounting import lora_share, share_bin
from search_spaces.allocator import (
    LUMP_ORDER,
    LUMPS_OF,
    Budget,
    Lumps,
    candidate_splits,
    enumerate_splits,
)
from search_spaces.params import LR_RANGES, constraints, finish_params, optuna_trial, trial_params
from search_spaces.shapes import BackboneShape

MAX_NAME = 120  # longer Optuna parameter names are shortened to a digest


def _choice_name(lump: str, choices: tuple[Any, ...], every: tuple[Any, ...]) -> str:
    """The Optuna name of a lump with these choices: Optuna refuses one name with two sets."""
    if choices == every:
        return lump
    name = f"{lump}[{'|'.join(map(str, choices))}]"
    return (
        name if len(name) <= MAX_NAME else f"{lump}[{hashlib.sha1(name.encode()).hexdigest()[:12]}]"
    )


@dataclass(frozen=True)
class BudgetSplitSpace:
    """A define-by-run space over the feasible splits of one budget (see the module docstring).

    ``tree`` maps the lumps chosen so far to the next lump and its feasible choices; ``leaves``
    maps a full choice of lumps to its trial params (without ``lr``).
    """

    budget: Budget
    tree: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]]
    leaves: dict[tuple[Any, ...], dict[str, Any]]
    every: dict[str, tuple[Any, ...]]  # lump -> all its choices, in candidate order
    lr_ranges: dict[str, tuple[float, float]]
    candidates: int  # splits tried, feasible or not
    strata: dict[tuple[Any, ...], tuple[str, str]]  # leaf -> (method, LoRA-share bin)

    def __call__(self, trial: Any) -> dict[str, Any]:
        ot_trial = optuna_trial(trial)
        path: tuple[Any, ...] = ()
        while path not in self.leaves:
            lump, choices = self.tree[path]
            name = _choice_name(lump, choices, self.every[lump])
            value = choices[0] if len(choices) == 1 else ot_trial.suggest_categorical(name, choices)
            path = (*path, value)
        params = dict(self.leaves[path])
        method = params["method"]
        return finish_params(ot_trial, params, self.lr_ranges[method], f"lr[{method}]")

    def startup_points(self, n: int, *, seed: int) -> list[dict[str, Any]]:
        """``n`` splits for the search's start-up, as Optuna parameters to enqueue (``lr`` left
        to the sampler), stratified over methods first and LoRA-share bins second.

        Sampling each lump in turn is uniform over the tree's branches, not over the splits or
        the shares: the e4 space started 904 of 1,000 trials as fusion alone. E4 asks how to
        split the budget, so its start-up must see every method and every share: each next point
        comes from the (method, bin) stratum whose method, then bin, then stratum has been used
        least (ties at random), and within a stratum from its splits without replacement.
        """
        rng = random.Random(seed)
        members: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for leaf, stratum in self.strata.items():
            members.setdefault(stratum, []).append(leaf)
        pools: dict[tuple[str, str], list[tuple[Any, ...]]] = {s: [] for s in members}
        used: dict[Any, int] = {}
        points = []
        for _ in range(n):
            key = {s: (used.get(s[0], 0), used.get(s[1], 0), used.get(s, 0), rng.random())
                   for s in members}  # fmt: skip
            stratum = min(members, key=key.__getitem__)
            for k in (stratum[0], stratum[1], stratum):
                used[k] = used.get(k, 0) + 1
            if not pools[stratum]:  # every split of the stratum drawn once: draw them again
                pools[stratum] = rng.sample(members[stratum], len(members[stratum]))
            points.append(self.optuna_params(pools[stratum].pop()))
        return points

    def optuna_params(self, leaf: tuple[Any, ...]) -> dict[str, Any]:
        """The Optuna parameters that make :meth:`__call__` walk to ``leaf``."""
        params = {}
        for depth in range(len(leaf)):
            lump, choices = self.tree[leaf[:depth]]
            if len(choices) > 1:
                params[_choice_name(lump, choices, self.every[lump])] = leaf[depth]
        return params

    def constraints_func(self, trial: Any) -> list[float]:
        """:func:`constraints`, for ``TPESampler``/``NSGAIISampler(constraints_func=...)``."""
        return constraints(trial)

    def describe(self) -> str:
        """The budget, the feasible share of the splits, each lump's choices and the deviations."""
        deviations = sorted(p["budget_deviation"] for p in self.leaves.values())
        per_method: dict[str, int] = {}
        for path in self.leaves:
            per_method[path[0]] = per_method.get(path[0], 0) + 1
        lines = [
            f"budget: {self.budget.describe()}",
            f"feasible splits: {len(self.leaves)} of {self.candidates} "
            f"({', '.join(f'{m} {n}' for m, n in per_method.items())})",
            f"deviation of the feasible splits: {deviations[0]:+.2%} .. {deviations[-1]:+.2%}",
        ]
        lines += [f"  {lump}: {' | '.join(map(str, self.every[lump]))}" for lump in self.every]
        lines += [f"  lr[{m}]: {lo:g} .. {hi:g} (log)" for m, (lo, hi) in self.lr_ranges.items()]
        return "\n".join(lines)


def budget_split_space(
    *,
    shape: BackboneShape,
    budget: Budget,
    sources_pool: tuple[str, ...],
    lumps: Lumps | None = None,
    num_labels: int = 2,
    head: str = "mean",
    lr_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> BudgetSplitSpace:
    """The space of every split of ``lumps`` that fits ``budget`` on ``shape``.

    Counts include the head for ``num_labels`` and ``head``. Raises ``Infeasible`` when no split
    fits, with the reachable range.
    """
    lumps = lumps or Lumps()
    allocations = enumerate_splits(
        budget, shape, sources_pool=sources_pool, lumps=lumps, num_labels=num_labels, head=head
    )
    ranges = {m: (lr_ranges or LR_RANGES)[m] for m in lumps.methods}
    tree, every = _tree([a.split.lumps() for a in allocations])
    leaves = {a.split.lumps(): trial_params(a.config, a.count, budget) for a in allocations}
    strata = {a.split.lumps(): (a.config.method, share_bin(
        lora_share(a.config, shape, budget.params(a.count)) or 0)) for a in allocations}  # fmt: skip
    tried = len(candidate_splits(lumps, shape, sources_pool=sources_pool))
    return BudgetSplitSpace(budget, tree, leaves, every, ranges, tried, strata)


def _tree(paths: list[tuple[Any, ...]]) -> tuple[dict, dict[str, tuple[Any, ...]]]:
    """Prefix -> (next lump, its choices), and every lump's choices, from the feasible paths.

    Choices keep one canonical order per lump, so equal choice sets get one Optuna name.
    """
    every: dict[str, list[Any]] = {}
    seen: dict[tuple[Any, ...], tuple[str, set[Any]]] = {}
    for path in paths:
        names = [n for n in LUMP_ORDER if n == "method" or n in LUMPS_OF[path[0]]]
        for depth, (name, value) in enumerate(zip(names, path, strict=True)):
            if value not in every.setdefault(name, []):
                every[name].append(value)
            seen.setdefault(path[:depth], (name, set()))[1].add(value)
    tree = {k: (n, tuple(c for c in every[n] if c in cs)) for k, (n, cs) in seen.items()}
    return tree, {n: tuple(every[n]) for n in LUMP_ORDER if n in every}


def startup_trials(num_samples: int) -> int:
    """The search's start-up: TPE's random trials, NSGA-II's first generation."""
    return max(4, num_samples // 4)


__all__ = ["MAX_NAME", "BudgetSplitSpace", "budget_split_space", "startup_trials"]
