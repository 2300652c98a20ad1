"""How a study reads in the MLflow UI: the experiment's kind and description, the parent run's
setup (params, dataset inputs) and outcome (metrics, note), and a saved view of its trials.

MLflow 3.17's UI opens an experiment on its GenAI pages (traces) unless the sidebar switch says
"Model training"; the switch is per browser, and ``?workflowType=machine_learning`` in the URL
sets it. The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (the kind
MLflow defines for model training), and every description links to :func:`trials_link`: the
runs page in model-training mode with a shared view (``mlflow.sharedViewState.<key>``, an
experiment tag the UI reads for ``?viewStateShareKey=<key>``) that lists the study's trials
flat, best first, with their method, size, scores and status as columns.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

from tuner.experiment import Experiment

KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # MLflow's value for classic model training
NOTE_TAG = "mlflow.note.content"  # the description MLflow shows for an experiment or a run
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
TRIAL_PARAM_COLUMNS = ("method", "trainable_params", "rank", "bottleneck", "fusion", "lr")
STATUSES = ("completed", "stopped", "failed")
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column ids are its sort keys  # always counted on the parent, 0 included


def trials_view_key(parent_run_id: str) -> str:
    return f"trials-{parent_run_id}"


def trials_link(experiment_id: str, parent_run_id: str) -> str:
    """The UI route (after the server's address) of the study's trials table."""
    return (f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={trials_view_key(parent_run_id)}")  # fmt: skip


def trials_view(exp: Experiment, parent_run_id: str) -> dict[str, Any]:
    """The runs-table state of the shared view: this study's trials only (flat, not folded
    under the parent), sorted by the primary objective, with the columns that compare them."""
    test_metric = exp.metric.replace("dev_", "test_", 1)
    metrics = dict.fromkeys((exp.metric, test_metric, *(m for m, _ in exp.objectives[1:])))
    columns = [
        *(f"metrics.`{m}`" for m in metrics),
        *(f"params.`{p}`" for p in TRIAL_PARAM_COLUMNS),
        "metrics.`fidelity`",
        "tags.`status`",
    ]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{exp.metric}`",
        "orderByAsc": exp.mode == "min",
        "selectedColumns": columns,
        # the method and the scores first, beside the run's name; the name wide enough to read
        "columnOrder": [RUN_NAME_COLUMN, "params.`method`", *columns],
        "columnWidths": {RUN_NAME_COLUMN: 280},
    }


def setup_params(exp: Experiment, preset: str, *, train_size: int) -> dict[str, str]:
    """The study's setup as the parent run's params (a value of None is not logged)."""
    search = exp.search
    values: dict[str, Any] = {
        "experiment": exp.name, "preset": preset, "task": exp.task, "backbone": exp.backbone,
        "search": search.kind, "budget_params": search.budget_params,
        "tolerance": search.tolerance, "accounting": search.accounting,
        "num_samples": exp.num_samples, "train_size": train_size,
        "train_samples": exp.train_samples, "scheduler": exp.scheduler,
        "objectives": ",".join(f"{m}:{mode}" for m, mode in exp.objectives),
        "seeds": ",".join(str(s) for s in exp.seeds),
    }  # fmt: skip
    if exp.scheduler == "asha":
        values.update(grace_period=exp.grace_period, reduction_factor=exp.reduction_factor)
    return {k: str(v) for k, v in values.items() if v is not None}


def setup_text(exp: Experiment, preset: str, *, train_size: int) -> str:
    """One line: task, backbone, budget, trials, scheduler, training examples."""
    s = exp.search
    stop = (f"ASHA (grace {exp.grace_period}, factor {exp.reduction_factor})"
            if exp.scheduler == "asha" else "no early stopping")  # fmt: skip
    return (f"Task `{exp.task}` on `{exp.backbone}`, {s.kind} search at {s.budget_params:,} "
            f"{s.accounting} parameters ±{s.tolerance:.0%}, {exp.num_samples} trials, {stop}, "
            f"{train_size:,} training examples (preset `{preset}`).")  # fmt: skip


def describe_study(client: Any, experiment_id: str, parent_run_id: str, exp: Experiment,
                   preset: str, *, data: Any) -> None:  # fmt: skip
    """Before the trials start: the experiment's kind, description and trials view, the parent's
    setup. Safe to call again on ``--resume``."""
    describe_experiment(client, experiment_id, exp, preset, parent_run_id=parent_run_id,
                        train_size=len(data.train))  # fmt: skip
    record_setup(client, experiment_id, parent_run_id, exp, preset, data=data)


def describe_experiment(client: Any, experiment_id: str, exp: Experiment, preset: str, *,
                        parent_run_id: str, train_size: int) -> None:  # fmt: skip
    """Tag the experiment as model training and describe it, linking the latest study's trials."""
    link = trials_link(experiment_id, parent_run_id)
    note = (f"{exp.summary}\n\n{setup_text(exp, preset, train_size=train_size)}\n\n"
            "Each study is a parent run (tag `role=study`), each trial a child run under it.\n\n"
            f"**[Trials of the latest study, best first]({link})** "
            f"({preset}, started {time.strftime('%Y-%m-%d %H:%M')})")  # fmt: skip
    client.set_experiment_tag(experiment_id, KIND_TAG, MODEL_TRAINING)
    client.set_experiment_tag(experiment_id, NOTE_TAG, note)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + trials_view_key(parent_run_id),
                              json.dumps(trials_view(exp, parent_run_id)))  # fmt: skip


def record_setup(client: Any, experiment_id: str, run_id: str, exp: Experiment, preset: str, *,
                 data: Any) -> None:  # fmt: skip
    """The parent's params, dataset inputs and first note; once (a resumed study has them)."""
    if client.get_run(run_id).data.params:
        return
    params = setup_params(exp, preset, train_size=len(data.train))
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    client.log_inputs(run_id, datasets=split_inputs(data))
    link = trials_link(experiment_id, run_id)
    client.set_tag(run_id, NOTE_TAG, f"{setup_text(exp, preset, train_size=len(data.train))}\n\n"
                                     f"Running. [Its trials]({link})")  # fmt: skip


def split_inputs(data: Any) -> list[DatasetInput]:
    """Each split (train, dev, test, extra tests) as a dataset input: a digest of its tokens and
    labels, and its size; the data themselves stay in the mirror."""
    splits = {"train": data.train, "dev": data.dev, "test": data.test, **data.extra_tests}
    return [DatasetInput(_dataset(f"{data.task} {name}", split, task=data.task),
                         tags=[InputTag("mlflow.data.context", name)])
            for name, split in splits.items()]  # fmt: skip


def _dataset(name: str, split: Any, *, task: str) -> Dataset:
    digest = hashlib.sha256()
    for array in (split.input_ids, split.offsets, split.labels):
        digest.update(array.tobytes())
    profile = {"num_rows": len(split), "num_tokens": int(len(split.input_ids))}
    return Dataset(name=name, digest=digest.hexdigest()[:8], source_type="local",
                   source=json.dumps({"uri": task}), profile=json.dumps(profile))  # fmt: skip


def outcome(summary: Mapping[str, Any], exp: Experiment) -> tuple[dict[str, float], dict | None]:
    """The parent's outcome metrics (the best completed trial on the primary objective with its
    test score; trials per status) and that best trial's row (None if none completed)."""
    counts = {**dict.fromkeys(STATUSES, 0), **summary["status_counts"]}
    metrics: dict[str, float] = {f"trials_{k}": float(v) for k, v in counts.items()}
    metrics["trials_total"] = float(sum(counts.values()))
    best = summary["best"][0] if summary["best"] else None
    if best is not None:
        for key in ("dev_score", "test_score"):
            if isinstance(best.get(key), int | float):
                metrics[f"best_{key}"] = float(best[key])
    return metrics, best


def record_outcome(client: Any, experiment_id: str, run_id: str, exp: Experiment, preset: str,
                   summary: Mapping[str, Any], *, train_size: int) -> None:  # fmt: skip
    """The parent's outcome as metrics and its note: the best on dev with its test, the counts."""
    metrics, best = outcome(summary, exp)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    counts = ", ".join(f"{int(metrics[f'trials_{k}'])} {k}" for k in STATUSES)
    lines = [setup_text(exp, preset, train_size=train_size), "",
             f"**Trials**: {counts} (of {int(metrics['trials_total'])}); "
             f"[all trials, best first]({trials_link(experiment_id, run_id)})."]  # fmt: skip
    if best is None:
        lines.append("\nNo trial completed: no best configuration.")
    else:
        test = best.get("test_score")
        test_text = f"{test:.4f}" if isinstance(test, int | float) else "n/a"
        knobs = ", ".join(f"{k}={best['config'][k]}" for k in TRIAL_PARAM_COLUMNS
                          if best["config"].get(k) not in (None, ""))  # fmt: skip
        lines.append(f"\n**Best on dev**: {best['dev_score']:.4f} (its test: {test_text}), "
                     f"{knobs}{_trial_link(client, experiment_id, run_id, best)}.")  # fmt: skip
    client.set_tag(run_id, NOTE_TAG, "\n".join(lines))


def _trial_link(client: Any, experiment_id: str, parent_run_id: str, row: Mapping) -> str:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.trial_id = '{row['trial_id']}'",
    )
    if not runs:
        return ""
    run = runs[0]
    return f" ([{run.info.run_name}](#/experiments/{experiment_id}/runs/{run.info.run_id}))"


def ui_address(tracking_uri: str) -> str:
    """Where the UI of ``tracking_uri`` is: the server itself, or ``mlflow ui``'s default."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"
