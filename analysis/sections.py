"""The report's sections per experiment: each picks its tables and figures from the analysis data
and writes markdown. Nothing is computed here beyond choosing what to show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import markdown as md
from analysis import render
from analysis.budget import best_splits, budget_heatmap
from analysis.close_calls import close_calls
from analysis.efficiency import efficiency_table
from analysis.hypotheses import BY_EXPERIMENT, Verdict, evaluate
from analysis.pareto import optuna_study, pareto_front
from analysis.selection import (
    MAJORITY,
    POINTS,
    SELECT_BY,
    below_probe,
    completed,
    did_not_learn,
)
from analysis.study_sections import study_sections
from analysis.tables import (
    few_shot_table,
    method_summary,
    method_task_table,
    transfer_table,
    trials_overview,
)
from analysis.trials import Study
from search_spaces.errors import ConfigError

Section = Callable[[Study, Path, str], list[str]]


def _figure(path: Path, title: str) -> str:
    return f"![{title}]({path.name})"


def score_column(study: Study) -> str:
    """``test_score`` when some completed trial reported it, else ``dev_score``."""
    done = completed(study.trials)
    if "test_score" in done and done["test_score"].notna().any():
        return "test_score"
    return "dev_score"


def e1(study: Study, out: Path, score: str) -> list[str]:
    table = method_task_table(study.trials, score=score)
    return ["## E1: methods x tasks", "",
            f"Mean ± std of {score} (points) over seeds of the configuration chosen on dev; "
            "best per task in bold.", "", md.e1_matrix(table), "", md.table_notes(table)]  # fmt: skip


def e2(study: Study, out: Path, score: str) -> list[str]:
    table = few_shot_table(study.trials, score=score)
    formats = {c: ".2f" for c in ("mean", "std", "min", "max", "probe")}
    lines = ["## E2: score vs training examples", "",
             f"Per method and training size: {score} (points) over seeds of the rate dev chose, "
             "and the head-only probe trained on as many rows (blank where the study predates "
             "per-size probes).", "",
             md.frame(table.data, formats={**formats, "lr": ".1e"}), "", md.table_notes(table)]  # fmt: skip
    if not table.data.empty:
        lines += [
            "",
            _figure(render.few_shot_png(table, out / "e2_few_shot.png", score=score), "E2 curves"),
        ]
    return lines


def e3(study: Study, out: Path, score: str) -> list[str]:
    table = transfer_table(study.trials)
    return ["## E3: transfer deltas", "",
            "delta = lora_fusion - baseline, mean over seed pairs (points).", "",
            md.frame(table.data), "", md.table_notes(table)]  # fmt: skip


def e4(study: Study, out: Path, score: str) -> list[str]:
    shape = backbone_shape(study)
    splits = best_splits(study.trials, shape=shape, score=score)
    heat = budget_heatmap(study.trials, shape=shape, score=score)
    lines = ["## E4: budget splits", "",
             f"Best completed splits by dev score; `dev` and `score` are their means over `seeds` "
             f"in points, `score` of {score} (reported, not chosen on):", "",
             md.frame(splits.data, formats={"lora_share": ".0%"}), "", md.table_notes(splits)]  # fmt: skip
    if not heat.values.empty:
        png = render.heatmap_png(heat, out / "e4_heatmap.png")
        lines += ["", _figure(png, "E4 heat map")]
    return lines


def e5(study: Study, out: Path, score: str) -> list[str]:
    table = efficiency_table(study.trials, study.history)
    return ["## E5: efficiency", "", md.frame(table.data), "", md.table_notes(table)]


SECTIONS: dict[str, Section] = {
    "e1_single_task": e1, "e2_few_shot": e2, "e3_transfer": e3, "e3_shift": e3, "e4_budget": e4,
    "e5_efficiency": e5, **study_sections(),
}  # fmt: skip


def backbone_shape(study: Study) -> Any:
    """The backbone's shape for parameter accounting, or None when it cannot be resolved here."""
    names = study.trials["backbone"].dropna().unique() if "backbone" in study.trials else []
    if len(names) != 1:
        return None
    try:
        from trainables.backbones import load_backbone

        return load_backbone(str(names[0]), meta=True).shape
    except Exception:  # a backbone this machine cannot resolve: the share is left out, as noted
        return None


def front_axis(study: Study) -> str:
    """The size the front trades dev score against: the study's own size objective where its
    search has one (E4 pins trainable parameters to the budget, so it is ``added_params``: what
    the frozen sources and fusion cost to store and serve), else ``trainable_params``."""
    from tuner.experiments import get_experiment

    try:
        objectives = get_experiment(study.experiment).objectives
    except ConfigError:  # a family or a study of another version: no objectives to read
        return "trainable_params"
    sizes = [m for m, _ in objectives if m.endswith("_params") and m in study.trials]
    return sizes[0] if sizes else "trainable_params"


def pareto(study: Study, out: Path, score: str) -> list[str]:
    x = front_axis(study)
    info = pareto_front(study.trials, x=x, y=SELECT_BY)
    lines = [f"## Dev score vs {x}", "",
             f"The front is chosen on dev; {score} is reported beside each point.", "",
             md.pareto(info)]  # fmt: skip
    if info.front.empty and info.dominated.empty:
        return lines
    title = f"{study.experiment}: dev score vs {x}"
    lines += ["", _figure(render.pareto_png(info, out / "pareto.png", title=title), "Pareto front")]
    # Optuna's interactive plot of the same front: same objectives, same axes
    study_ = optuna_study(study.trials, ((x, "min"), (SELECT_BY, "max")))
    html = render.optuna_pareto_html(study_, out / "pareto_optuna.html", [x, SELECT_BY])
    lines += ["", f"Interactive (Optuna, same front): [{html.name}]({html.name})" if html else
              "_Interactive HTML skipped: plotly is not installed._"]  # fmt: skip
    return lines


def verdicts(study: Study) -> list[Verdict]:
    """The hypotheses this study alone decides (H3 for E4, H1 for E1...), as Verdicts."""
    wanted = BY_EXPERIMENT.get(study.experiment, ())
    if not wanted:
        return []
    return [v for v in evaluate({study.experiment: study.trials}) if v.hypothesis in wanted]


def hypotheses(found: list[Verdict]) -> list[str]:
    if not found:
        return []
    return ["## Hypotheses (this study only)", "", md.verdicts(found), "",
            "_Rule: fewer than 3 pairs is insufficient evidence; supported when the 95% "
            "bootstrap interval is above 0 (docs/ANALYSIS.md)._"]  # fmt: skip


def setup_line(study: Study) -> str:
    """What was run, in one line: task, backbone, budget, trials, scheduler, data size."""
    plan, trials = study.plan, study.trials
    search = plan.get("search") or {}
    parts = [f"task {plan.get('task') or _one(trials, 'task')}",
             f"backbone {plan.get('backbone') or _one(trials, 'backbone')}"]  # fmt: skip
    arm_budgets = sorted({int(a["budget_params"]) for a in search.get("configs") or ()
                          if a.get("budget_params")})  # fmt: skip
    if search.get("match_budget") is False:
        parts.append("no budget match: each arm at the size it names")
    elif search.get("budget_params") or arm_budgets:
        tolerance = float(search.get("tolerance") or 0) * 100
        budget = (f"budgets per arm {', '.join(f'{b:,}' for b in arm_budgets)}" if arm_budgets
                  else f"budget {int(search['budget_params']):,}")  # fmt: skip
        parts.append(f"{budget} {search.get('accounting', 'trainable')} parameters "
                     f"±{tolerance:g}%")  # fmt: skip
    if plan.get("num_samples"):
        seeds = plan.get("seeds") or (0,)
        top = int(plan.get("seeds_top") or 1)
        best = "its best configuration" if top == 1 else f"its {top} best configurations"
        phase = (f" + a seeds phase ({best} per arm on seeds {', '.join(map(str, seeds))}, "
                 "chosen on their mean dev)" if len(seeds) > 1 else "")  # fmt: skip
        parts.append(f"{plan['num_samples']} trials{phase}")
    if plan.get("scheduler"):
        parts.append(f"scheduler {plan['scheduler']} (grace {plan.get('grace_period')})")
    arm_rows = sorted({int(a["train_samples"]) for a in search.get("configs") or ()
                       if a.get("train_samples")})  # fmt: skip
    if arm_rows:
        parts.append(f"train rows per arm {', '.join(f'{k:,}' for k in arm_rows)}")
    else:
        parts.append(f"train rows {plan['train_samples']:,}" if plan.get("train_samples") else
                     "the whole train split")  # fmt: skip
    if search.get("kind") == "grid" and int(search.get("lr_points") or 1) > 1:
        parts.append(f"{search['lr_points']} learning rates per arm over its method's range")
    train = plan.get("train") or {}
    if train.get("epochs"):
        epochs = float(train["epochs"])
        parts.append(f"{epochs:g} epoch{'' if epochs == 1 else 's'}, "
                     f"{train.get('evals', '?')} evaluations")  # fmt: skip
    return "**Setup:** " + "; ".join(str(p) for p in parts) + "."


def _one(trials: Any, column: str) -> str:
    values = trials[column].dropna().unique() if column in trials else []
    return ", ".join(map(str, values)) or "?"


def result_line(study: Study, found: list[Verdict]) -> str:
    """What came out, in one line: the best completed trial on dev with its test, and verdicts."""
    done = completed(study.trials)
    if done.empty or SELECT_BY not in done or done[SELECT_BY].isna().all():
        return "**Result:** no completed trial with a dev score."
    best = done.loc[done[SELECT_BY].idxmax()]
    test = best.get("test_score")
    shown = f", test {test * POINTS:.2f}" if pd.notna(test) else ""
    text = (f"**Result:** best on dev: {best.get('method')} (trial {best.get('trial_id')}), dev "
            f"{best[SELECT_BY] * POINTS:.2f}{shown} points")  # fmt: skip
    for v in found:
        text += (f"; {v.hypothesis}: {v.verdict}, {v.effect_size:+.2f} points "
                 f"[{v.ci_low:+.2f}, {v.ci_high:+.2f}], {v.n_pairs} pairs")  # fmt: skip
    return text + "."


def methods(study: Study) -> list[str]:
    table = method_summary(study.trials)
    if table.data.empty:
        return []
    return ["## Per method", "", "Scores in points over completed trials; the test score is the "
            "one of the method's best trial on dev.", "",
            md.frame(table.data, formats={"best dev": ".2f", "median dev": ".2f",
                                          "test of best on dev": ".2f"})]  # fmt: skip


def close(study: Study, score: str) -> list[str]:
    """The arms whose chosen configuration a runner-up matched on dev on some seed."""
    grid = (study.plan.get("search") or {}).get("kind") == "grid"
    table = close_calls(study.trials, grid=grid, score=score)
    if table.empty:
        return []
    formats = dict.fromkeys(("dev_chosen", "dev_runner_up", "test_chosen", "test_runner_up"), ".2f")
    return ["## Close calls on dev", "",
            f"{len(table)} arm(s) whose runner-up configuration scored at least as well on dev as "
            "the chosen one on some seed: dev did not separate them, and a lead that rests on the "
            f"choice is a tie. Mean dev and {score} over the shared seeds, points ({score} "
            "reported, not chosen):", "", md.frame(table, formats=formats)]  # fmt: skip


BASELINES = (
    ("majority dev", MAJORITY),
    ("test", "test_majority_score"),
    ("probe dev", "dev_probe_score"),
    ("test", "test_probe_score"),
    ("zero-shot cosine dev", "dev_zero_shot_score"),  # sentence-pair regression only (STS-B)
    ("test", "test_zero_shot_score"),
)


def learned(study: Study) -> list[str]:
    """The majority-class baseline and the trials that did not beat it, as a visible note."""
    done = completed(study.trials)
    if MAJORITY not in done or done[MAJORITY].isna().all():
        return []
    tasks = done["task"].fillna("?") if "task" in done else None
    per_task = done.groupby(tasks if tasks is not None else [""] * len(done), sort=True)
    cells = []
    for task, g in per_task:
        cells.append((f"{task}: " if task else "") + ", ".join(
            f"{label} {g[col].median() * POINTS:.2f}" for label, col in BASELINES
            if col in g and g[col].notna().any()))  # fmt: skip
    lines = ["Baselines in points: the majority class (always the train split's most frequent "
             "class), the head-only probe (a linear head on the frozen backbone) and, for "
             "sentence-pair regression, the zero-shot cosine of the frozen sentence embeddings: "
             + "; ".join(cells) + "."]  # fmt: skip
    failed = done[did_not_learn(study.trials)]
    if not failed.empty:
        methods = ", ".join(f"{m} ({n})" for m, n in failed["method"].value_counts().items())
        lines += ["", f"**Did not learn: {len(failed)} of {len(done)} completed trials score at or "
                  f"below it on dev** ({methods}); they are marked in the trials table. A score at "
                  "the majority class is a bug until shown otherwise."]  # fmt: skip
    under = done[below_probe(study.trials)]
    if not under.empty:
        methods = ", ".join(f"{m} ({n})" for m, n in under["method"].value_counts().items())
        lines += ["", f"**Below the head-only probe: {len(under)} of {len(done)} completed trials** "
                  f"({methods}) score under a linear head on the frozen backbone on dev: the method "
                  "added nothing the head could not learn alone; marked in the trials table. "
                  "Verdicts keep them (only an arm at the majority class is kept out)."]  # fmt: skip
    return lines


def trials(study: Study) -> list[str]:
    table = trials_overview(study.trials)
    return ["## All trials", "", md.frame(md.in_points(table.data))]
