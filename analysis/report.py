"""``python -m analysis.report EXPERIMENT``: a study's report (markdown + figures) from MLflow or
from its Ray Tune results folder.

python -m analysis.report e4_budget --tracking-uri sqlite:///results/mlflow.db
python -m analysis.report e2_few_shot --results ~/peft-tune-results/e2_few_shot-smoke --out /tmp/r

With neither source the study's default storage is read (``$PEFT_TUNE_RESULTS``: its
``mlflow.db``, else its ``<experiment>-<preset>`` folder). The report says first what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis import markdown as md
from analysis import sections
from analysis.families import combine
from analysis.publish import attach_report
from analysis.rates import edge_note
from analysis.trials import SEEDS_SUFFIX, Study, load_mlflow, load_tune_folder
from search_spaces.errors import ConfigError, one_of
from tuner.cli import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.report", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "experiment",
        help="a registered experiment, e.g. e4_budget, or a family of "
        "them, e.g. glue_methods (one experiment per task)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tracking-uri", help="MLflow URI: a folder, sqlite:///..., http://...")
    source.add_argument("--results", help="Tune results folder <storage>/<experiment>-<preset>, "
                                          "or the storage folder holding it")  # fmt: skip
    p.add_argument("--parent-run", help="MLflow parent run id (default: the newest study run)")
    p.add_argument("--all-runs", action="store_true",
                   help="MLflow: every study run of the experiment (E1 is run once per task)")  # fmt: skip
    p.add_argument("--out", help="output folder (default ./reports/<experiment>)")
    return p


def results_folder(path: Path, experiment: str) -> Path:
    """``path`` itself when it holds trial folders, else its one ``<experiment>-<preset>`` folder
    (the seeds phase's ``-seeds`` folder beside it is part of that study, not another one)."""
    if not path.is_dir():
        raise ConfigError(f"--results {str(path)!r} is not a folder")
    if any((p / "result.json").exists() or (p / "params.json").exists() for p in path.iterdir()):
        return path
    found = sorted(
        p for p in path.glob(f"{experiment}-*") if p.is_dir() and not p.name.endswith(SEEDS_SUFFIX)
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"--results {str(path)!r} holds no trials and no {experiment}-<preset> folder"
        )
    names = ", ".join(p.name for p in found)
    raise ConfigError(
        f"--results {str(path)!r} holds several studies of {experiment} ({names}): pass one"
    )


def load(args: argparse.Namespace, experiment: str) -> Study:
    if args.tracking_uri:
        return load_mlflow(
            args.tracking_uri, experiment, args.parent_run, all_parents=args.all_runs
        )
    if args.results:
        return load_tune_folder(results_folder(Path(args.results).expanduser(), experiment))
    from tuner.study import DEFAULT_RESULTS

    if (DEFAULT_RESULTS / "mlflow.db").exists():
        uri = f"sqlite:///{DEFAULT_RESULTS / 'mlflow.db'}"
        return load_mlflow(uri, experiment, args.parent_run, all_parents=args.all_runs)
    if DEFAULT_RESULTS.is_dir():
        return load_tune_folder(results_folder(DEFAULT_RESULTS, experiment))
    raise ConfigError(f"no results at {DEFAULT_RESULTS}: pass --tracking-uri or --results")


def _is_family(name: str) -> bool:
    from tuner.experiments import get_family
    from tuner.experiments.families import FAMILIES

    try:
        get_family(name)  # fills the registry first
    except ConfigError:
        return False
    return name in FAMILIES


def known_name(name: str) -> str:
    """``name`` when it is a registered experiment; else a ConfigError that lists the
    experiments and families (both are reports) and suggests the closest."""
    from tuner.experiment import EXPERIMENTS
    from tuner.experiments import get_experiment
    from tuner.experiments.families import FAMILIES

    try:
        return get_experiment(name).name
    except ConfigError:
        raise one_of("experiment", name, sorted([*EXPERIMENTS, *FAMILIES])) from None


def require_a_completed_trial(study: Study) -> None:
    """A study without a completed trial has nothing to report yet: one line that says so."""
    counts = dict(study.completeness.status_counts)
    if counts.get("completed", 0):
        return
    seen = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no trial at all"
    raise ConfigError(
        f"study {study.experiment!r} has no completed trial yet ({seen}) in {study.source}: "
        "nothing to report until a trial completes (tuner.run --resume finishes a stopped study)"
    )


def build(study: Study, out: Path) -> str:
    """Write the figures into ``out`` and return the report's markdown."""
    out.mkdir(parents=True, exist_ok=True)
    score = sections.score_column(study)
    summary = study.plan.get("summary", "")
    found = sections.verdicts(study)
    lines = [f"# {study.experiment}", "", summary, "", sections.setup_line(study), "",
             sections.result_line(study, found), "", f"Source: {study.source}", "",
             md.completeness(study.completeness), ""]  # fmt: skip
    if score != "test_score":
        lines += ["_No completed trial reported test_score: tables use dev_score._", ""]
    lines += [*sections.learned(study), ""]
    if note := edge_note(study.trials):
        lines += [*note, ""]
    lines += [*sections.methods(study), ""]
    if calls := sections.close(study, score):
        lines += [*calls, ""]
    section = sections.SECTIONS.get(study.experiment)
    if section is not None:
        lines += [*section(study, out, score), ""]
    lines += [*sections.pareto(study, out, score), ""]
    lines += [*sections.hypotheses(found), ""]
    lines += sections.trials(study)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from tuner.experiments import get_family

    if _is_family(args.experiment):
        experiment = args.experiment
        study = combine(experiment, get_family(experiment), lambda name: load(args, name))
    else:
        experiment = known_name(args.experiment)
        study = load(args, experiment)
    require_a_completed_trial(study)
    out = Path(args.out or Path("reports") / experiment)
    report = build(study, out)
    (out / "report.md").write_text(report)
    for problem in attach_report(study, out):
        print(f"warning: {problem}", file=sys.stderr)
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
