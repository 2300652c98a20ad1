"""The usual way as a baseline for a study's throughput: the trial configurations of a finished
peft-tune study, run again through ``transformers.Trainer.hyperparameter_search(backend="ray")``,
one trial per GPU at a time (``{"gpu": 1}`` per trial; on CPU, ``gpus`` trials at a time), or
``per_gpu`` trials sharing each GPU (``{"gpu": 1 / per_gpu}``; ``--mps yes`` under NVIDIA MPS).

Measured: each trial's final dev score (the task's metric on the study's dev split after the
trial's last evaluation, the one at its last step), its wall seconds, and the search's trials
completed per GPU-hour, ``completed / (wall_h * gpus)`` with ``wall`` from the first trial's start
to the last trial's last report, as :func:`tuner.bench.search.search_row` measures a study, and
on both sides the time to a configuration within 0.5 points of the best dev score either side
found (the first trial's start to the end of the first completed trial that near). Each
baseline trial is then paired with the study's trial of the same configuration.

The same on both sides: the training rows (prepared as ``tuner.launch`` prepares them, then the
trial's own subsample), the model (``build_model`` of the trial's MethodConfig with the same seed
and the same source adapters from the store), its loss (with the method's regularisation term),
batch size, learning rate, weight decay, warm-up and total steps, gradient clipping, the steps at
which the dev split is scored, bf16 autocast on CUDA, and the method's step and plateau hooks.
The usual way: Trainer's AdamW and linear schedule, random batches padded by
``DataCollatorWithPadding``, Trainer's own precision (a config's ``precision``, ``compile`` and
``length_grouping`` are ours only), one trial per GPU. Our trials also score the test split and
measure latency after training; the baseline does not (its trials do less work than ours).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError
from search_spaces.method_config import FUSION_METHODS
from trainables.backbones import load_backbone
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig
from tuner.bench.hpsearch_baseline import (
    BOOKKEEPING_KEYS,
    CONFIG_KNOBS,
    BaselineRun,
    BaselineTrial,
    Log,
    connect,
    run_baseline,
)
from tuner.bench.search import TrialHistory, best_of, load_study, search_row
from tuner.experiment import Experiment
from tuner.prepare import prepare
from tuner.reconcile import open_trials
from tuner.sources import ensure_source_adapters
from tuner.study import Resources
from tuner.tracking import trial_status


def study_trials(folder: str | Path) -> list[TrialHistory]:
    """A finished study's trials in the order they started (bad folders: ConfigError)."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"study folder {str(folder)!r} does not exist")
    open_ = open_trials(path)
    if open_:  # a study cut short: its trials per GPU-hour would count a window, not a study
        raise ConfigError(f"study folder {str(folder)!r} holds {len(open_)} unfinished trial(s) "
                          "(a study cut before its end): finish it with `python -m tuner.run "
                          "... --resume` first")  # fmt: skip
    trials = sorted(load_study(path), key=lambda t: t.start)
    if not trials:
        raise ConfigError(f"study folder {str(folder)!r} holds no trial results (*/result.json)")
    return trials


def check_same_data(exp: Experiment, folder: str | Path) -> dict[str, Any]:
    """The study's ``experiment.json`` (as ``tuner.launch`` recorded it), refused unless its
    task, backbone, train_samples and max_length are ``exp``'s: the rows both sides train on."""
    path = Path(folder) / "experiment.json"
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is missing: not a study folder of python -m tuner.run")
    recorded = json.loads(path.read_text())
    ran = recorded["experiment"]
    pairs = {"task": (ran["task"], exp.task), "backbone": (ran["backbone"], exp.backbone),
             "train_samples": (ran["train_samples"], exp.train_samples),
             "max_length": (TrainConfig.from_dict(dict(ran["train"])).max_length,
                            TrainConfig.from_dict(dict(exp.train)).max_length)}  # fmt: skip
    for key, (study, ours) in pairs.items():
        if study != ours:
            raise ConfigError(f"the study ran {key}={study!r} but {exp.name} with this preset and "
                              f"--set has {key}={ours!r}: pass the study's preset and --set")  # fmt: skip
    return recorded


def prepare_study_data(exp: Experiment, *, data_dir: str | None) -> PreparedData:
    """The study's data as ``tuner.launch`` prepares it (its extra test sets aside: the baseline
    scores the dev split only)."""
    train = TrainConfig.from_dict(dict(exp.train))
    return prepare(exp.task, tokenizer=load_backbone(exp.backbone, meta=True).tokenizer,
                   max_length=train.max_length, train_samples=exp.train_samples,
                   data_dir=data_dir)  # fmt: skip


def with_source_adapters(
    exp: Experiment, data: PreparedData, configs: list[dict[str, Any]], *,
    resources: Any, data_dir: str | None, tracking_uri: str, log: Log,
) -> PreparedData:  # fmt: skip
    """``data`` with the source adapters the fusion configs use, from the store the study used
    (``tuner.sources.ensure_source_adapters``; a missing one is trained as the study would)."""
    bottlenecks = tuple(sorted({int(c["bottleneck"]) for c in configs
                                if c.get("method") in FUSION_METHODS}))  # fmt: skip
    data, _ = ensure_source_adapters(exp, data, bottlenecks=bottlenecks, resources=resources,
                                     data_dir=data_dir, tracking_uri=tracking_uri, log=log)  # fmt: skip
    return data


def comparable(config: dict[str, Any]) -> str:
    """A config as a key: Tune's ``__`` keys and BOOKKEEPING_KEYS left out."""
    kept = {k: v for k, v in config.items() if not k.startswith("__") and k not in BOOKKEEPING_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def describe(config: dict[str, Any]) -> str:
    """A short label of the knobs that tell configs apart."""
    parts = []
    for key in CONFIG_KNOBS:
        value = config.get(key)
        if value not in (None, ""):
            parts.append(f"{key}={value:.2g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


@dataclass(frozen=True)
class PairRow:
    """A baseline trial beside the study's trial of the same config (none: ``study_trial`` None).
    ``dev_diff`` (baseline - ours) only where both completed: a trial ASHA stopped early has no
    final score."""

    trial_index: int
    config: str
    status: str
    dev_score: float | None
    wall_s: float | None
    study_trial: str | None
    study_status: str | None
    study_dev_score: float | None
    dev_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_trials(baseline: list[BaselineTrial], study: list[TrialHistory]) -> list[PairRow]:
    """Each baseline trial with the first unpaired study trial of the same config."""
    unpaired: dict[str, list[TrialHistory]] = {}
    for history in study:
        unpaired.setdefault(comparable(history.config), []).append(history)
    rows = []
    for trial in baseline:
        same = unpaired.get(comparable(trial.config), [])
        ours = same.pop(0) if same else None
        status = trial_status(ours.reports[-1], error=False) if ours else None
        score = ours.reports[-1].get("dev_score") if ours and status == "completed" else None
        dev = trial.dev_score
        rows.append(PairRow(
            trial.index, describe(trial.config), trial.status, dev, trial.wall_s,
            ours.trial_id if ours else None, status, score,
            dev - score if dev is not None and score is not None else None,
        ))  # fmt: skip
    return rows


def compare(rows: list[PairRow]) -> dict[str, Any]:
    """Equal accuracy per trial? Mean and max |dev diff| over trials completed on both sides;
    trials the study stopped early are counted, not compared."""
    diffs = [abs(r.dev_diff) for r in rows if r.dev_diff is not None]
    return {
        "paired": sum(r.study_trial is not None for r in rows),
        "compared": len(diffs),
        "stopped_in_study": sum(r.study_status == "stopped" for r in rows),
        "mean_abs_dev_diff": statistics.fmean(diffs) if diffs else None,
        "max_abs_dev_diff": max(diffs, default=None),
    }


def summary(run: BaselineRun, rows: list[PairRow], study: list[TrialHistory], *,
            study_name: str, cpus_per_trial: float, mps: bool = False) -> dict[str, Any]:  # fmt: skip
    """Totals of the baseline and of the study on as many GPUs, and how they compare; the time
    to near the best is against the best dev score of either side."""
    target = best_of([t.dev_score for t in run.trials if t.status == "completed"]
                     + [t.final_dev_score for t in study])  # fmt: skip
    ours = search_row(study_name, study, target=target, gpus=run.gpus)
    ratio = (ours.trials_per_gpu_hour / run.trials_per_gpu_hour
             if ours.trials_per_gpu_hour and run.trials_per_gpu_hour else None)  # fmt: skip
    return {
        "device": run.device, "gpus": run.gpus, "trials_per_gpu": run.per_gpu, "mps": mps,
        "cpus_per_trial": cpus_per_trial,
        "trials": len(run.trials), "completed": run.completed, "wall_s": run.wall_s,
        "driver_wall_s": run.driver_wall_s, "trials_per_gpu_hour": run.trials_per_gpu_hour,
        "near_best_target": target,
        "time_to_near_best_s": run.time_to(target),
        f"{study_name}_trials": ours.trials, f"{study_name}_completed": ours.completed,
        f"{study_name}_wall_s": ours.wall_s,
        f"{study_name}_trials_per_gpu_hour": ours.trials_per_gpu_hour,
        f"{study_name}_time_to_near_best_s": ours.time_to_near_best_s,
        f"{study_name}_vs_baseline": ratio, **compare(rows),
    }  # fmt: skip


@dataclass(frozen=True)
class BaselineSetup:
    """How the baseline runs a study's configs: the first ``max_trials`` (None: all) on ``gpus``
    whole GPUs of ``device``, ``per_gpu`` trials sharing each (1 / per_gpu of it each; ``mps``:
    under an NVIDIA MPS daemon the caller started), ``cpus_per_trial`` CPUs each; the data from
    ``data_dir`` (None: ``$PEFT_TUNE_DATA_DIR``), Tune's results under ``storage``."""

    device: str
    gpus: float
    cpus_per_trial: float
    storage: Path
    max_trials: int | None = None
    data_dir: str | None = None
    per_gpu: int = 1
    mps: bool = False

    def __post_init__(self) -> None:
        gpus, max_trials = self.gpus, self.max_trials
        if gpus != int(gpus) or gpus < 1:
            raise ConfigError(f"--gpus {gpus:g} must be a whole number >= 1 (GPUs the baseline "
                              "uses; --trials-per-gpu shares each)")  # fmt: skip
        if self.per_gpu < 1:
            raise ConfigError(f"--trials-per-gpu {self.per_gpu} must be >= 1")
        if max_trials is not None and max_trials < 1:
            raise ConfigError(f"--max-trials {max_trials} must be >= 1 (default: all the trials)")


def baseline_of_study(
    folder: str | Path, exp: Experiment, setup: BaselineSetup, *, study_name: str, log: Log
) -> tuple[list[PairRow], dict[str, Any]]:
    """The baseline of a finished study: its first ``setup.max_trials`` configs (in the order the
    study started them) run the usual way, paired with the study's trials. Bad input raises
    ConfigError before Ray starts or data is prepared."""
    cuda = setup.device.startswith("cuda")
    resources = Resources(setup.cpus_per_trial, 1.0 if cuda else 0.0)
    study = study_trials(folder)
    recorded = check_same_data(exp, folder)
    configs = [t.config for t in study[: setup.max_trials]]
    log(f"hpsearch: {len(configs)} of the study's {len(study)} configs; preparing {exp.task}")
    data = prepare_study_data(exp, data_dir=setup.data_dir)
    cluster_gpus = connect(cpus_per_trial=setup.cpus_per_trial)
    if cuda and setup.gpus > cluster_gpus:
        raise ConfigError(f"--gpus {setup.gpus:g} but the Ray cluster has {cluster_gpus:g} GPU(s)")
    data = with_source_adapters(exp, data, configs, resources=resources, data_dir=setup.data_dir,
                                tracking_uri=recorded["tracking_uri"], log=log)  # fmt: skip
    run = run_baseline(configs, data, device=setup.device, gpus=int(setup.gpus),
                       cpus_per_trial=setup.cpus_per_trial, storage=setup.storage,
                       log=log, per_gpu=setup.per_gpu)  # fmt: skip
    rows = pair_trials(run.trials, study)
    return rows, summary(run, rows, study, study_name=study_name,
                         cpus_per_trial=setup.cpus_per_trial, mps=setup.mps)  # fmt: skip
