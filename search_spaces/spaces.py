"""Optuna define-by-run search spaces in which every sample is inside the parameter budget.

``budget_split_space`` precomputes every feasible split of the budget (:mod:`allocator`); a trial
then samples the coarse lumps one after another, each among the choices that still have a
feasible completion, and takes the solved fine lever (the LoRA rank, the target adapter) as
constants. TPE learns over the lumps and the learning rate; the rank is a function of them.
``method_space`` samples the learning rate of one method matched to the budget (:mod:`matching`).

Both are picklable callables for ``OptunaSearch(space=...)`` or ``study.optimize``. They return a
flat, JSON-able dict of the project's public keys (:func:`trial_params`), nothing else: the lumps
are suggested on the underlying Optuna trial, not through Ray's capturing wrapper, so the trial's
config holds no internal names (the trainable refuses unknown keys).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from search_spaces.accounting import (
    LORA_SHARE_BINS,
    ParamCount,
    count_params,
    lora_share,
    share_bin,
)
from search_spaces.allocator import (
    LUMP_ORDER,
    LUMPS_OF,
    Budget,
    Lumps,
    candidate_splits,
    enumerate_splits,
)
from search_spaces.errors import ConfigError
from search_spaces.matching import KNOBS, MatchResult, match_all, match_budget
from search_spaces.method_config import MethodConfig
from search_spaces.shapes import BackboneShape

# method -> (low, high) learning rate, sampled log-uniformly
LR_RANGES: dict[str, tuple[float, float]] = {
    "full": (1e-5, 1e-4),  # BERT fine-tuning: 2e-5 .. 5e-5 (Devlin et al., 2019)
    "bitfit": (1e-4, 3e-3),  # BitFit searched 1e-4 .. 1e-3 (Ben Zaken et al., 2022)
    "lora": (1e-4, 3e-3),  # LoRA on RoBERTa-base: 4e-4 .. 5e-4 (Hu et al., 2022)
    "adalora": (3e-4, 3e-3),  # the authors' GLUE scripts: 5e-4 .. 2.2e-3 (Zhang et al., 2023)
    "houlsby": (3e-5, 3e-3),  # Houlsby et al. (2019) searched 3e-5, 3e-4, 3e-3
    "pfeiffer": (3e-5, 3e-3),  # as Houlsby
    "prefix": (1e-4, 1e-2),  # prefixes want large rates (P-tuning v2: up to 1e-2)
    "unipelt": (1e-4, 3e-3),  # its LoRA and adapter parts
    "fusion": (2e-5, 1e-3),  # AdapterFusion trained fusion at 5e-5 (Pfeiffer et al., 2021)
    "lora_fusion": (5e-5, 2e-3),  # between fusion's and LoRA's
    "lora_grow": (1e-4, 3e-3),  # as LoRA
    "autopeft": (1e-4, 3e-3),  # its modules are adapters, prefixes and LoRA
}


def learning_rates(method: str, n: int = 1) -> tuple[float, ...]:
    """``n`` rates over the method's own search range (``LR_RANGES``), log-evenly: the middle of
    each n-th of the range in log space, two significant digits. ``n=1`` is its geometric middle;
    ``n=3`` on LoRA's 1e-4..3e-3 is 1.8e-4, 5.5e-4, 1.7e-3. The rates of a grid arm that sets none."""
    lo, hi = LR_RANGES[method]
    span = math.log(hi / lo)
    return tuple(float(f"{lo * math.exp(span * (i + 0.5) / n):.2g}") for i in range(n))


def default_lr(method: str) -> float:
    """The geometric middle of the method's range: the rate of a trial config that sets none."""
    return learning_rates(method)[0]


_LORA = ("rank", "alpha", "placement", "layers", "layer_ranks")
_FUSION = ("fusion", "sources", "fusion_layers", "bottleneck", "target_bottleneck")
_AUTOPEFT_SIZES = ("bottleneck", "parallel_bottleneck", "prefix_length", "prefix_reparam")
# The knobs each method reads; the others are None in a trial's params, so MLflow shows no
# knob that had no effect.
KNOBS_USED: dict[str, tuple[str, ...]] = {
    "full": ("layers",),  # the top-k layers fine-tuned; None = every weight
    "bitfit": (),
    "lora": (*_LORA, "quantize"),  # quantize: QUANTIZABLE_METHODS (method_config.py)
    "adalora": (
        "rank",
        "adalora_scale",
        "placement",
        "layers",
        "init_rank",
        "budget_rank",
        "quantize",
    ),
    "houlsby": ("bottleneck", "layers"),
    "pfeiffer": ("bottleneck", "layers"),
    "prefix": ("prefix_length", "prefix_reparam", "layers"),
    "unipelt": (*_LORA, "bottleneck", "prefix_length", "prefix_reparam"),
    "fusion": (*_FUSION, "fusion_init", "source_similarity"),
    "lora_fusion": (*_LORA, *_FUSION, "fusion_init", "source_similarity", "lora_placement_rule"),
    "lora_grow": (*_LORA[:4], "start_rank", "grow_step", "grow_patience"),
    "autopeft": ("layer_modules", *_AUTOPEFT_SIZES, "rank", "alpha", "placement"),
}
# MethodConfig fields a trial's params carry (num_labels and head come from the task).
METHOD_KEYS = tuple(f.name for f in fields(MethodConfig) if f.name not in ("num_labels", "head"))
BUDGET_KEYS = ("budget_params", "tolerance", "accounting")
COUNT_KEYS = ("trainable_params", "added_params", "budget_deviation")
CONSTRAINT = "budget_deviation_excess"  # |deviation| - tolerance, <= 0 inside the budget
MAX_NAME = 120  # longer Optuna parameter names are shortened to a digest


def trial_params(config: MethodConfig, count: ParamCount, budget: Budget | None) -> dict[str, Any]:
    """The flat, JSON-able params of one trial: knobs (unused ones None), budget and counts.

    Tuples become comma-separated strings; ``lr`` is added by the space.
    """
    used = KNOBS_USED[config.method]
    params: dict[str, Any] = {}
    for key in METHOD_KEYS:
        value = getattr(config, key) if key == "method" or key in used else None
        params[key] = ",".join(map(str, value)) if isinstance(value, tuple) else value
    params.update(dict.fromkeys(BUDGET_KEYS))
    params.update(trainable_params=count.trainable_params, added_params=count.added_params)
    params["budget_deviation"] = None
    if budget is not None:
        params.update(budget_params=budget.budget_params, tolerance=budget.tolerance)
        params.update(accounting=budget.accounting, budget_deviation=budget.deviation(count))
    return params


def method_config_from_params(
    params: Mapping[str, Any], *, num_labels: int, head: str
) -> MethodConfig:
    """The MethodConfig of a trial's params; non-method keys and None values are ignored."""
    known = {k: v for k, v in params.items() if k in METHOD_KEYS and v is not None}
    # layer_ranks is parsed here: coerce() reads tuple[int] fields as sorted sets of layer indices
    ranks = known.pop("layer_ranks", None)
    config = MethodConfig.from_dict({**known, "num_labels": num_labels, "head": head})
    if ranks is None:
        return config
    items = ranks.split(",") if isinstance(ranks, str) else ranks
    try:
        return config.replace(layer_ranks=tuple(int(r) for r in items))
    except ValueError:
        raise ConfigError(f"layer_ranks={ranks!r} must be comma-separated integers") from None


def constraints(params: Any) -> list[float]:
    """``[|budget_deviation| - tolerance]``: <= 0 inside the budget; ``[0.0]`` without a budget.

    Takes a trial's params or an Optuna ``FrozenTrial`` (the spaces store both figures in its
    user attributes), so it serves as ``TPESampler(constraints_func=constraints)``. On Optuna >= 5
    the spaces also set it on the trial (``Trial.set_constraint``), where samplers read it.
    """
    source = getattr(params, "user_attrs", params)
    if "budget_deviation" not in source or "tolerance" not in source:
        raise ConfigError("constraints() needs budget_deviation and tolerance (params of a space)")
    deviation, tolerance = source["budget_deviation"], source["tolerance"]
    if deviation is None or tolerance is None:
        return [0.0]
    return [abs(deviation) - tolerance]


def outside_budget(config: dict[str, Any]) -> bool:
    """A trial config whose counted parameters miss its budget by more than the tolerance
    (a config without a budget is never outside it)."""
    if config.get("budget_deviation") is None or config.get("tolerance") is None:
        return False
    return constraints(config)[0] > 1e-12


def optuna_trial(trial: Any) -> Any:
    """The Optuna trial under Ray's ``_OptunaTrialSuggestCaptor``, which would copy every
    suggested name into the trial's config; a plain Optuna trial is returned as it is."""
    return getattr(trial, "ot_trial", trial)


def finish_params(
    trial: Any, params: dict[str, Any], lr_range: tuple[float, float], name: str
) -> dict:
    """Sample ``lr`` and record the budget figures on the Optuna trial for constraint handling."""
    params["lr"] = trial.suggest_float(name, *lr_range, log=True)
    for key in ("budget_deviation", "tolerance"):
        trial.set_user_attr(key, params[key])
    if hasattr(trial, "set_constraint"):  # Optuna >= 5 reads constraints from the trial itself
        trial.set_constraint(CONSTRAINT, constraints(params)[0])
    return params


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


@dataclass(frozen=True)
class MethodSpace:
    """One method at its matched configuration; trials sample the learning rate only."""

    params: dict[str, Any]  # trial params without lr
    lr_range: tuple[float, float]
    lr_name: str = "lr"  # the Optuna name; per method inside a MethodsSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        return finish_params(optuna_trial(trial), dict(self.params), self.lr_range, self.lr_name)

    def constraints_func(self, trial: Any) -> list[float]:
        return constraints(trial)

    def describe(self) -> str:
        knobs = {k: v for k, v in self.params.items() if v is not None}
        lo, hi = self.lr_range
        return f"{knobs}; lr {lo:g} .. {hi:g} (log)"


def method_space(
    method: str,
    *,
    shape: BackboneShape,
    budget: Budget | None,
    lr_range: tuple[float, float] | None = None,
    num_labels: int = 2,
    head: str = "mean",
    **fixed: Any,
) -> MethodSpace:
    """``method`` matched to ``budget`` (``None``: at ``fixed`` as given), tuning ``lr``.

    ``full`` and ``bitfit`` have no knob: they keep their fixed size, their params show its true
    deviation and ``tolerance=None`` (the budget does not constrain them). Raises ``Infeasible``
    when a method with a knob cannot be matched.
    """
    lo, hi = lr_range or LR_RANGES[method]
    if not 0 < lo < hi:
        raise ConfigError(f"lr_range=({lo!r}, {hi!r}) must satisfy 0 < low < high")
    options = {"num_labels": num_labels, "head": head, **fixed}
    if budget is None or KNOBS.get(method, "") is None:
        config = MethodConfig(method=method, **options)
    else:
        config = match_budget(method, budget, shape, **options)
    params = trial_params(config, count_params(config, shape), budget)
    if budget is not None and not budget.contains(count_params(config, shape)):
        params["tolerance"] = None  # a baseline without a knob, reported at its true size
    return MethodSpace(params, (lo, hi), f"lr[{method}]")


@dataclass(frozen=True)
class MethodsSpace:
    """Several methods, each at its matched configuration: trials sample the method, then its
    learning rate (experiment E1)."""

    spaces: dict[str, MethodSpace]

    def __call__(self, trial: Any) -> dict[str, Any]:
        methods = tuple(self.spaces)
        method = optuna_trial(trial).suggest_categorical("method", methods)
        return self.spaces[method](trial)

    def constraints_func(self, trial: Any) -> list[float]:
        return constraints(trial)

    def describe(self) -> str:
        return "\n".join(f"{m}: {space.describe()}" for m, space in self.spaces.items())


def methods_space(
    methods: tuple[str, ...], *, shape: BackboneShape, budget: Budget | None, **options: Any
) -> MethodsSpace:
    """:func:`method_space` of each of ``methods`` (``options`` go to each: sources, head...)."""
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"methods={methods!r} must name each method once")
    return MethodsSpace(
        {m: method_space(m, shape=shape, budget=budget, **options) for m in methods}
    )


# The e4_budget defaults: see docs/ALLOCATOR.md for why 600,000 on MiniLM.
DEMO_BUDGET = 600_000
DEMO_SOURCES = ("glue/sst2", "newsgroups/bydate", "imdb")
HISTOGRAM_BINS = 10  # equal-width bins over [-tolerance, +tolerance]


def startup_trials(num_samples: int) -> int:
    """The search's start-up: TPE's random trials, NSGA-II's first generation."""
    return max(4, num_samples // 4)


def demo(*, budget: Budget, shape: BackboneShape, trials: int, seed: int) -> dict[str, Any]:
    """Run a TPE study of ``trials`` on the split space with a synthetic objective, its start-up
    stratified as a study's is; recount every sampled config with ``count_params`` and return the
    feasibility, the deviations and the (method, LoRA-share bin) of each trial (data)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = budget_split_space(shape=shape, budget=budget, sources_pool=DEMO_SOURCES)
    startup = startup_trials(trials)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup))  # fmt: skip
    for point in space.startup_points(min(startup, trials), seed=seed):
        study.enqueue_trial(point)
    sampled: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = space(trial)
        sampled.append(params)
        return synthetic_score(params)

    study.optimize(objective, n_trials=trials)
    configs = [method_config_from_params(p, num_labels=2, head="mean") for p in sampled]
    counts = [budget.params(count_params(c, shape)) for c in configs]
    methods: dict[str, int] = {}
    for params in sampled:
        methods[params["method"]] = methods.get(params["method"], 0) + 1
    strata = [(c.method, share_bin(lora_share(c, shape, n) or 0))
              for c, n in zip(configs, counts, strict=True)]  # fmt: skip
    return {"space": space.describe(), "inside": sum(map(budget.contains, counts)),
            "deviations": sorted(map(budget.deviation, counts)), "methods": methods,
            "strata": strata, "startup": min(startup, trials)}  # fmt: skip


def synthetic_score(params: Mapping[str, Any]) -> float:
    """A cheap stand-in for a dev score: peaks at lr 1e-3 and rewards more fusion sources."""
    sources = len((params.get("sources") or "").split(",")) if params.get("sources") else 0
    return -abs(math.log10(params["lr"]) + 3) + 0.1 * sources


def render_demo(report: Mapping[str, Any], *, tolerance: float) -> str:
    """The demo's report as text: the space, the feasibility, the deviations and a histogram."""
    deviations = report["deviations"]
    n = len(deviations)
    lines = [report["space"], "", f"trials: {n}; inside the tolerance: {report['inside']} "
             f"({report['inside'] / n:.1%}); by method: {report['methods']}",
             f"deviation: min {deviations[0]:+.2%}, median {deviations[n // 2]:+.2%}, "
             f"max {deviations[-1]:+.2%}", "", "| deviation | trials |", "|---|---|"]  # fmt: skip
    width = 2 * tolerance / HISTOGRAM_BINS
    for i in range(HISTOGRAM_BINS):
        lo = -tolerance + i * width
        count = sum(lo <= d < lo + width or (i == HISTOGRAM_BINS - 1 and d == lo + width)
                    for d in deviations)  # fmt: skip
        lines.append(f"| {lo + 0.0:+.1%} .. {round(lo + width, 12) + 0.0:+.1%} | {count} |")
    return "\n".join([*lines, "", render_strata(report["strata"], report["startup"])])


def render_strata(strata: list[tuple[str, str]], startup: int) -> str:
    """Trials per LoRA-share bin and method: the stratified start-up, then every trial."""
    methods = sorted({m for m, _ in strata})
    lines = [f"LoRA share of the budget x method (start-up: the first {startup} trials, stratified)",
             "", f"| LoRA share | start-up: {' | '.join(methods)} | all: {' | '.join(methods)} |",
             "|---|" + "---|" * 2 * len(methods)]  # fmt: skip
    for _, label in LORA_SHARE_BINS:
        first = [strata[:startup].count((m, label)) for m in methods]
        every = [strata.count((m, label)) for m in methods]
        lines.append(f"| {label} | {' | '.join(map(str, first))} | {' | '.join(map(str, every))} |")
    return "\n".join(lines)


def render_matches(results: Mapping[str, MatchResult]) -> str:
    """``match_all``'s results as a markdown table: knob setting, count, deviation, verdict."""
    lines = [
        "| method | knob | setting | trainable | deviation | fits |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        used = [k for k in KNOBS_USED[method] if k not in ("alpha", "sources", "placement")]
        knobs = trial_params(r.config, r.count, None)
        setting = ", ".join(f"{k}={knobs[k]}" for k in used if knobs[k] not in (None, 0))
        verdict = "yes" if r.fits else "no: " + r.reason
        lines.append(f"| {method} | {r.knob or '-'} | {setting or '-'} | "
                     f"{r.count.trainable_params:,} | {r.deviation:+.1%} | {verdict} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Describe the e4_budget split space on MiniLM-L6; ``--demo`` runs a TPE study on it and
    recounts every sample. A bad value exits with code 2 and a one-line message."""
    import argparse
    import datetime
    import sys

    from search_spaces.shapes import MINILM_L6

    parser = argparse.ArgumentParser(
        prog="python -m search_spaces.spaces", description=main.__doc__
    )
    parser.add_argument("--demo", action="store_true", help="run the feasibility demonstration")
    parser.add_argument("--match", action="store_true", help="match every method to the budget")
    parser.add_argument("--budget-params", type=int, default=DEMO_BUDGET)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        budget = Budget(args.budget_params, tolerance=args.tolerance)
        if args.match:
            print(render_matches(match_all(budget, MINILM_L6, sources=DEMO_SOURCES)))
            return 0
        if not args.demo:
            print(budget_split_space(shape=MINILM_L6, budget=budget, sources_pool=DEMO_SOURCES)
                  .describe())  # fmt: skip
            return 0
        report = demo(budget=budget, shape=MINILM_L6, trials=args.trials, seed=args.seed)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"# {datetime.date.today()}: TPESampler(seed={args.seed}), {args.trials} trials, MiniLM-L6"
    )
    print(render_demo(report, tolerance=args.tolerance))
    return 0


__all__ = [
    "LR_RANGES", "BudgetSplitSpace", "MethodSpace", "MethodsSpace", "budget_split_space",
    "constraints", "default_lr", "learning_rates", "method_config_from_params", "method_space",
    "methods_space", "trial_params",
]  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main())
