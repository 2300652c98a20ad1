"""``python -m search_spaces.spaces``: describe the e4_budget split space on MiniLM-L6, match
every method to its budget (``--match``), or run a TPE study on it and recount every sample
(``--demo``). Computed as data (:func:`demo`), rendered as markdown (:func:`render_demo`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Mapping
from typing import Any

from search_spaces.accounting import LORA_SHARE_BINS, count_params, lora_share, share_bin
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget, MatchResult, match_all
from search_spaces.params import KNOBS_USED, method_config_from_params, trial_params
from search_spaces.shapes import MINILM_L6, BackboneShape
from search_spaces.split_space import budget_split_space, startup_trials

# The e4_budget defaults: see docs/ALLOCATOR.md for why 600,000 on MiniLM.
DEMO_BUDGET = 600_000
DEMO_SOURCES = ("glue/sst2", "newsgroups/bydate", "imdb")
HISTOGRAM_BINS = 10  # equal-width bins over [-tolerance, +tolerance]


def demo(*, budget: Budget, shape: BackboneShape, trials: int, seed: int) -> dict[str, Any]:
    """Run a TPE study of ``trials`` on the split space with a synthetic objective, its start-up
    stratified as a study's is; recount every sampled config with ``count_params`` and return the
    feasibility, the deviations and the (method, LoRA-share bin) of each trial (data)."""
    # optuna costs a second to import and only the demo needs it here: the trial workers that
    # import the spaces (trainables.recipe) never load it for this
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
    "DEMO_BUDGET", "DEMO_SOURCES", "demo", "main", "render_demo", "render_matches",
    "render_strata", "synthetic_score",
]  # fmt: skip
