"""Launch (or resume) a study: check inputs, prepare data, start Ray, fit, summarise.

Every check that can fail on user input runs before Ray starts or an MLflow run is created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError
from search_spaces.spaces import outside_budget
from trainables.data.loading import DATA_DIR_ENV
from trainables.train_config import TrainConfig
from tuner.experiment import Experiment
from tuner.mlflow_views import describe_study, record_outcome, trials_link, ui_address
from tuner.provenance import provenance
from tuner.reconcile import closes_parent, parent_opened
from tuner.study import PARENT_RUN_FILE, Resources, StudyFiles, study_paths
from tuner.tracking import connect, ensure_experiment


@closes_parent  # a study that raises leaves no RUNNING parent run
def launch(exp: Experiment, space: Any, *, preset: str, args: argparse.Namespace) -> dict:
    import ray
    from ray import tune

    from trainables.backbones import load_backbone
    from trainables.data.tokenize import cache_stats
    from trainables.probe import with_probe
    from trainables.trainable import tune_trial
    from tuner.prepare import prepare
    from tuner.runner import build_scheduler, build_searcher, connect_ray, print_summary
    from tuner.sources import ensure_source_adapters
    from tuner.space import train_sizes

    paths = study_paths(exp, preset, args.storage, args.tracking_uri)
    files = StudyFiles(paths.storage, paths.name)
    train = check_inputs(exp, args, files)
    fuse = None
    if getattr(args, "fuse", None) is not None:
        from trainables.data.loading import resolve_task
        from tuner.fusing import fuse_plan

        fuse = fuse_plan(exp, space, args.fuse, num_labels=resolve_task(exp.task).num_labels)
    client = connect(paths.tracking_uri)  # before anything is logged: a bad URI is one line

    tokens_before = cache_stats()
    log(f"preparing data for {exp.task} ({exp.backbone}, max_length={train.max_length})")
    backbone = load_backbone(exp.backbone, meta=True)
    data = prepare(
        exp.task, tokenizer=backbone.tokenizer, max_length=train.max_length,
        train_samples=exp.train_samples, data_dir=args.data_dir, extra_tests=exp.extra_tests,
    )  # fmt: skip
    log(f"train={len(data.train):,} dev={len(data.dev):,} test={len(data.test):,} examples")
    # did it learn? the frozen baselines, once (cached), also per training subset an arm draws
    data = with_probe(data, exp.backbone, sizes=train_sizes(space))
    log("frozen-backbone baselines (head-only probe; zero-shot cosine for sentence pairs): "
        + ", ".join(f"{k}={v:.4f}" for k, v in data.reference.items()))  # fmt: skip
    train.eval_steps(train.total_steps(len(data.train)))  # more evals than steps: not per trial

    cluster_gpus = connect_ray(cpus_per_trial=args.cpus_per_trial or 1.0)
    resources = Resources.auto(args.cpus_per_trial, args.gpus_per_trial, cluster_gpus=cluster_gpus)
    if not args.resume:  # recorded before the source adapters: a study killed there resumes
        if getattr(args, "overwrite", False):
            for name in (paths.name, f"{paths.name}-seeds"):
                StudyFiles(paths.storage, name).remove()
        record_start(files, exp, preset, resources, paths)
    data, work = ensure_source_adapters(exp, data, bottlenecks=space.source_bottlenecks,
                                  resources=resources, data_dir=args.data_dir,
                                  tracking_uri=paths.tracking_uri, log=log)  # fmt: skip

    experiment_id = ensure_experiment(client, exp.name)
    parent_id = parent_run(client, experiment_id, exp, preset, files, resume=args.resume)
    describe_study(client, experiment_id, parent_id, exp, preset, data=data)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, data=data),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )
    concurrent = resources.concurrent_trials(ray.cluster_resources())
    if fuse is not None:
        from trainables.trainable import tune_pooled_trial
        from tuner.fusing import CLIENT_CPUS, start

        pool = start(fuse, data, cluster_gpus=cluster_gpus)
        trainable = tune.with_resources(tune.with_parameters(tune_pooled_trial, pool=pool),
                                        {"cpu": CLIENT_CPUS, "gpu": 0})  # fmt: skip
        concurrent = fuse.slots
        log(f"fused pool: {fuse.slots} rows of LoRA rank {fuse.rank} on "
            f"{'one GPU' if cluster_gpus >= 1 else 'a CPU'}"
            f"{', every linear' if fuse.placement else ''}")  # fmt: skip
    phase = Phase(name=paths.name, space=space, num_samples=exp.num_samples,
                  searcher=build_searcher(exp, space, seed=0),
                  scheduler=build_scheduler(exp, max_t=train.evals))  # fmt: skip
    logger = _mlflow_logger(paths.tracking_uri, experiment_id, parent_id, exp, preset)
    summary = run_phase(phase, trainable, paths, logger, exp, resume=args.resume,
                        concurrent=concurrent)  # fmt: skip
    if len(exp.seeds) > 1:
        seeds = seeds_phase(exp, summary, name=f"{paths.name}-seeds")
        logger = _mlflow_logger(paths.tracking_uri, experiment_id, parent_id, exp, preset,
                                phase="seeds")  # fmt: skip
        summary["seeds"] = run_phase(seeds, trainable, paths, logger, exp, resume=args.resume,
                                     concurrent=concurrent)  # fmt: skip
    summary["work"] = work_done(summary, work, tokens_before, cache_stats())
    log("work: " + ", ".join(f"{k}={v}" for k, v in summary["work"].items()))
    record_outcome(client, experiment_id, parent_id, exp, preset, summary,
                   train_size=len(data.train))  # fmt: skip
    client.set_terminated(parent_id, "FINISHED")
    log(f"MLflow: the trials, best first, at {ui_address(paths.tracking_uri)}/"
        f"{trials_link(experiment_id, parent_id)}"
        + ("" if paths.tracking_uri.startswith("http") else
           f" once `mlflow ui --backend-store-uri {paths.tracking_uri}` runs"))  # fmt: skip
    files.write_json("summary.json", summary)
    print_summary(summary)
    return summary


def work_done(summary: dict, work: dict[str, int], before: Any, after: Any) -> dict[str, int]:
    """What the study did once and what it never launched: tokenisations on the driver (trials
    get the tokenised data through Ray's object store, so this is the study's total), source
    adapters trained vs needed, and trials launched outside the parameter budget (must be 0)."""
    trials = [*summary["trials"], *summary.get("seeds", {}).get("trials", [])]
    return {
        "tokenisations": after.misses - before.misses,
        "tokenisation_cache_hits": after.hits - before.hits,
        **work,
        "trials_launched": len(trials),
        "trials_outside_budget": sum(outside_budget(t["config"]) for t in trials),
    }


def check_inputs(exp: Experiment, args: argparse.Namespace, files: StudyFiles) -> TrainConfig:
    """The checks that need no data: they run before anything is created, logged or started."""
    Resources(  # checked as given: `--cpus-per-trial 0` must not read as "the default"
        cpus_per_trial=1.0 if args.cpus_per_trial is None else args.cpus_per_trial,
        gpus_per_trial=0.0 if args.gpus_per_trial is None else args.gpus_per_trial,
    )
    train = TrainConfig.from_dict(dict(exp.train))
    if exp.train_samples is not None:  # the split may be smaller, never larger
        train.eval_steps(train.total_steps(exp.train_samples))
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(
            f"data folder {data_dir!r} (--data-dir or ${DATA_DIR_ENV}) does not exist"
        )
    if getattr(args, "fuse", None) is not None and args.gpus_per_trial is not None:
        raise ConfigError("--fuse and --gpus-per-trial exclude each other: the fused pool holds "
                          "the GPU, its trials none")  # fmt: skip
    overwrite = getattr(args, "overwrite", False)
    if args.resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue or start again")
    # a study killed before Tune's first save (training source adapters) has only its record:
    # resumed, it reuses the adapters stored whole and starts its search
    if args.resume and not (files.exists("tuner.pkl") or files.exists("experiment.json")):
        raise ConfigError(
            f"--resume: nothing to resume at {files.storage}/{files.name} (no study started there)"
        )
    if not args.resume and not overwrite and files.exists("tuner.pkl"):
        # a second Tune run in the same folder mixes its trials with the first one's
        raise ConfigError(
            f"{files.storage}/{files.name} already holds this study: --resume continues it, "
            "--overwrite starts it again, or pick another --storage"
        )
    return train


@dataclass(frozen=True)
class Phase:
    """One Tune run of a study: the search, or the re-run of the best configs with more seeds."""

    name: str
    space: Any
    num_samples: int
    searcher: Any
    scheduler: Any = None  # None: every trial runs to the end


def run_phase(phase: Phase, trainable: Any, paths: Any, logger: Any, exp: Experiment, *,
              resume: bool, concurrent: int | None = None) -> dict:  # fmt: skip
    from ray import tune

    from tuner.runner import ConsoleProgress, summarise

    if resume and StudyFiles(paths.storage, phase.name).exists("tuner.pkl"):
        tuner = tune.Tuner.restore(f"{paths.storage}/{phase.name}", trainable,
                                   resume_unfinished=True, resume_errored=True)  # fmt: skip
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=phase.searcher, scheduler=phase.scheduler,
                num_samples=phase.num_samples, max_concurrent_trials=concurrent,
                # a finished trial's actor runs the next one: no new process, imports or CUDA
                # context per trial (start-up was ~10 s against 13-24 s of training on an H100)
                reuse_actors=True,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=phase.name, storage_path=paths.storage, verbose=0,
                callbacks=[logger, ConsoleProgress(total=phase.num_samples)],
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )  # fmt: skip
    log(f"{phase.name}: {phase.num_samples} trials, up to {concurrent or 'Tune decides'} at once; "
        f"results in {paths.storage}/{phase.name}, MLflow at {paths.tracking_uri}")  # fmt: skip
    return summarise(tuner.fit(), exp)


def seeds_phase(exp: Experiment, summary: dict, *, name: str) -> Phase:
    """Each arm's best configuration on dev, run on every seed of ``exp.seeds`` it has not
    completed (to the end: this phase has no scheduler). An arm is a method, or in a ``grid``
    search one grid arm (its configuration but the learning rate): the seeds phase runs each
    arm's own best rate. An arm with no completed trial is represented by its best trial the
    scheduler stopped, re-run on every seed, so no arm drops out for starting slowly."""
    from tuner.runner import build_searcher
    from tuner.space import ExperimentSpace, GridSpace

    best = best_per_arm(summary["trials"], key=arm_of if exp.search.kind == "grid" else method_of)
    if not best:
        raise RuntimeError(f"{exp.name}: no scored trial to re-run with seeds {exp.seeds}")
    arms = tuple({**row["config"], "seed": seed} for row in best.values() for seed in exp.seeds
                 if seed not in completed_seeds(row))  # fmt: skip
    space = ExperimentSpace(GridSpace(arms), constants={}, source_bottlenecks=())
    return Phase(name=name, space=space, num_samples=len(arms),
                 searcher=build_searcher(exp, space, seed=0))  # fmt: skip


def method_of(config: dict) -> str:
    return str(config["method"])


def arm_of(config: dict) -> str:
    """A grid arm: the configuration but its learning rate and seed."""
    return json.dumps({k: v for k, v in config.items() if k not in ("lr", "seed")},
                      sort_keys=True, default=str)  # fmt: skip


def completed_seeds(row: dict) -> tuple[int, ...]:
    """The seed a search trial already ran to the end: the seeds phase does not run it again
    (a re-run would differ by GPU noise and could lose its own selection on that seed)."""
    return (int(row["config"].get("seed", 0)),) if row["status"] == "completed" else ()


def best_per_arm(trials: list[dict], *, key: Any = method_of) -> dict[str, dict]:
    """Per arm (``key(config)``): the completed trial with the best dev score, else the best
    stopped one."""
    best: dict[str, dict] = {}
    rank = {"completed": 1, "stopped": 0}
    for row in trials:
        if row["status"] not in rank or row["dev_score"] is None:
            continue
        score = (rank[row["status"]], row["dev_score"])
        arm = key(row["config"])
        held = best.get(arm)
        if held is None or score > (rank[held["status"]], held["dev_score"]):
            best[arm] = row
    return best


def _mlflow_logger(uri: str, experiment_id: str, parent_id: str, exp: Experiment, preset: str,
                   *, phase: str = "search"):  # fmt: skip
    from tuner.provenance import git_commit
    from tuner.tracking import MlflowLogger

    tags = {"experiment": exp.name, "preset": preset, "git_commit": git_commit(), "task": exp.task,
            "phase": phase}  # fmt: skip
    return MlflowLogger(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id,
                        tags=tags)  # fmt: skip


def parent_run(client: Any, experiment_id: str, exp: Experiment, preset: str,
               files: StudyFiles | None, *, resume: bool) -> str:  # fmt: skip
    """The study's parent run: created once, found again on --resume (no duplicate children).

    Its id is kept in the study folder (``files``); without one it cannot be found again."""
    known = files.read_text(PARENT_RUN_FILE) if resume and files is not None else None
    if known:
        client.update_run(known.strip(), status="RUNNING")
        parent_opened(client, known.strip())
        return known.strip()
    from tuner.provenance import git_commit

    run = client.create_run(
        experiment_id, run_name=f"{exp.name} ({preset}) {time.strftime('%Y-%m-%d %H:%M')}",
        tags={"experiment": exp.name, "preset": preset, "git_commit": git_commit(), "role": "study"},
    )  # fmt: skip
    client.log_dict(
        run.info.run_id, {**exp.to_dict(), "provenance": provenance()}, "experiment.json"
    )
    if files is not None:
        files.write_text(PARENT_RUN_FILE, run.info.run_id)
    parent_opened(client, run.info.run_id)
    return run.info.run_id


def record_start(files: StudyFiles, exp: Experiment, preset: str, resources: Resources,
                 paths: Any) -> None:  # fmt: skip
    """The resolved experiment, commit, versions and device, beside the results."""
    files.write_json("experiment.json", {
        "experiment": exp.to_dict(), "preset": preset, "resources": vars(resources),
        "storage": paths.storage, "tracking_uri": paths.tracking_uri, **provenance(),
    })  # fmt: skip


def log(message: str) -> None:
    print(f"[peft-tune] {message}", file=sys.stderr, flush=True)
