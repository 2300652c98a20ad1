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

from cluster.mps import sharing_note
from search_spaces.errors import ConfigError
from search_spaces.spaces import outside_budget
from trainables.data.loading import DATA_DIR_ENV
from trainables.train_config import TrainConfig
from tuner.cli import Interrupted
from tuner.experiment import Experiment
from tuner.fusing import plan_fuse, pooling
from tuner.mlflow_views import describe_study, record_outcome, trials_link, ui_address
from tuner.provenance import provenance
from tuner.reconcile import closes_parent, parent_opened, unfinished_trials
from tuner.study import (
    CLIENT_CPUS,
    PARENT_RUN_FILE,
    Resources,
    StudyFiles,
    check_resume,
    record_fuse,
    record_start,
    study_paths,
)
from tuner.tracking import connect, ensure_experiment


@closes_parent  # a study that raises leaves no RUNNING parent run
def launch(exp: Experiment, space: Any, *, preset: str, args: argparse.Namespace) -> dict:
    from trainables.data.tokenize import cache_stats
    from tuner.runner import connect_ray, joins_cluster, print_summary
    from tuner.sources import ensure_source_adapters

    paths = study_paths(exp, preset, args.storage, args.tracking_uri)
    files = StudyFiles(paths.storage, paths.name)
    train = check_inputs(exp, args, files)
    fuse = plan_fuse(exp, space, args)  # --fuse K refused here, before anything starts
    client = connect(paths.tracking_uri)  # before anything is logged: a bad URI is one line

    tokens_before = cache_stats()
    data = prepare_data(exp, space, train, args)
    cluster_gpus = connect_ray(cpus_per_trial=args.cpus_per_trial or 1.0)
    resources = Resources.auto(args.cpus_per_trial, args.gpus_per_trial, cluster_gpus=cluster_gpus)
    fuse, line = pooling(fuse, exp, space, args, files, cluster_gpus=cluster_gpus)
    local = not joins_cluster()  # a cluster's nodes are not this machine's to check
    mps = None if fuse else sharing_note(resources.gpus_per_trial, cluster_gpus=cluster_gpus,
                                         local=local)  # fmt: skip
    for said in (line, mps):
        if said:
            log(said)
    if not args.resume:  # recorded before the source adapters: a study killed there resumes
        if getattr(args, "overwrite", False):
            for name in (paths.name, f"{paths.name}-seeds"):
                StudyFiles(paths.storage, name).remove()
        record_start(files, exp, preset, resources, paths, fuse=fuse)
    elif fuse is not None:  # a resumed pooled study's rows, for its later resumes
        record_fuse(files, fuse.slots)
    data, work = ensure_source_adapters(exp, data, bottlenecks=space.source_bottlenecks,
                                  resources=resources, data_dir=args.data_dir,
                                  tracking_uri=paths.tracking_uri, log=log)  # fmt: skip

    experiment_id = ensure_experiment(client, exp.name)
    parent_id = parent_run(client, experiment_id, exp, preset, files, resume=args.resume)
    describe_study(client, experiment_id, parent_id, exp, preset, data=data)
    trials = study_trials(data, resources, fuse, cluster_gpus=cluster_gpus, name=paths.name)
    try:
        summary = search_and_seeds(exp, space, train, trials, paths, (experiment_id, parent_id),
                                   preset=preset, resume=args.resume)  # fmt: skip
    finally:
        trials.close()
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


def prepare_data(exp: Experiment, space: Any, train: TrainConfig, args: argparse.Namespace) -> Any:
    """The study's data, tokenised once on the driver, with its frozen-backbone baselines."""
    from trainables.backbones import load_backbone
    from trainables.probe import with_probe
    from tuner.prepare import prepare
    from tuner.space import train_sizes

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
    return data


@dataclass(frozen=True)
class StudyTrials:
    """What Tune runs per trial, how many at once, and with ``--fuse`` the pools behind it."""

    trainable: Any
    concurrent: int
    pools: Any = None  # tuner.fusing.Pools

    def callbacks(self) -> list[Any]:
        from tuner.pools_gone import PoolsGone

        return [] if self.pools is None else [PoolsGone(self.pools.name)]

    def check_pools(self) -> None:
        """After a phase: a study whose pools are all gone stops here, with one line."""
        from tuner.pools_gone import gone, pools_gone_line

        why = None if self.pools is None else gone(self.pools.name)
        if why is not None:
            raise SystemExit(pools_gone_line(why, self.pools.plan.slots))

    def close(self) -> None:
        if self.pools is not None:
            from tuner.fusing import stop

            stop([*self.pools.actors, self.pools.router])


def study_trials(data: Any, resources: Resources, fuse: Any, *, cluster_gpus: float,
                 name: str) -> StudyTrials:  # fmt: skip
    """Each trial trained in its own Ray actor with ``resources``; with ``fuse``, in one of the
    fused pools, one per GPU of the cluster, that a router places it on."""
    import ray
    from ray import tune

    if fuse is None:
        from trainables.trainable import tune_trial

        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, data=data),
            {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
        )
        return StudyTrials(trainable, resources.concurrent_trials(ray.cluster_resources()))
    from trainables.relay import tune_placed_trial
    from tuner.fusing import start

    pools = start(fuse, data, cluster_gpus=cluster_gpus, name=f"peft-tune-pools/{name}")
    log(pools.describe())
    trainable = tune.with_resources(tune.with_parameters(tune_placed_trial, router=pools.router),
                                    {"cpu": CLIENT_CPUS, "gpu": 0})  # fmt: skip
    return StudyTrials(trainable, fuse.slots * len(pools.actors), pools)


def search_and_seeds(exp: Experiment, space: Any, train: TrainConfig, trials: StudyTrials,
                     paths: Any, run: tuple[str, str], *, preset: str, resume: bool) -> dict:  # fmt: skip
    """The search (Tune, searcher, scheduler), then the seeds phase where ``exp`` has seeds;
    ``run`` is the MLflow (experiment id, parent run id) the trials log under."""
    from tuner.runner import build_scheduler, build_searcher

    phase = Phase(name=paths.name, space=space, num_samples=exp.num_samples,
                  searcher=build_searcher(exp, space, seed=0),
                  scheduler=build_scheduler(exp, max_t=train.evals))  # fmt: skip
    logger = _mlflow_logger(paths.tracking_uri, *run, exp, preset)
    summary = run_phase(phase, trials, paths, logger, exp, resume=resume)
    if len(exp.seeds) > 1:  # chosen from a finished search only (run_phase raises otherwise)
        seeds = seeds_phase(exp, summary, name=f"{paths.name}-seeds")
        logger = _mlflow_logger(paths.tracking_uri, *run, exp, preset, phase="seeds")
        summary["seeds"] = run_phase(seeds, trials, paths, logger, exp, resume=resume)
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
    if getattr(args, "fuse", None) and args.gpus_per_trial is not None:
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
    if args.resume:
        check_resume(files, getattr(args, "fuse", None))
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


def run_phase(phase: Phase, trials: StudyTrials, paths: Any, logger: Any, exp: Experiment, *,
              resume: bool) -> dict:  # fmt: skip
    from ray import tune

    from tuner.runner import ConsoleProgress, summarise

    if resume and StudyFiles(paths.storage, phase.name).exists("tuner.pkl"):
        tuner = tune.Tuner.restore(f"{paths.storage}/{phase.name}", trials.trainable,
                                   resume_unfinished=True, resume_errored=True)  # fmt: skip
    else:
        tuner = tune.Tuner(
            trials.trainable,
            tune_config=tune.TuneConfig(
                search_alg=phase.searcher, scheduler=phase.scheduler,
                num_samples=phase.num_samples, max_concurrent_trials=trials.concurrent,
                # a finished trial's actor runs the next one: no new process, imports or CUDA
                # context per trial (start-up was ~10 s against 13-24 s of training on an H100)
                reuse_actors=True,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=phase.name, storage_path=paths.storage, verbose=0,
                callbacks=[logger, ConsoleProgress(total=phase.num_samples), *trials.callbacks()],
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )  # fmt: skip
    log(f"{phase.name}: {phase.num_samples} trials, up to {trials.concurrent} at once; "
        f"results in {paths.storage}/{phase.name}, MLflow at {paths.tracking_uri}")  # fmt: skip
    if trials.pools is not None:
        trials.pools.expect(phase.num_samples)
    grid = tuner.fit()
    trials.check_pools()  # pools gone: that error, not an interruption
    unfinished = unfinished_trials(grid, phase.num_samples, f"{paths.storage}/{phase.name}")
    if unfinished:  # SIGINT: Tune saved its state and returned from fit() before the end
        raise Interrupted(f"{phase.name} left {unfinished} of {phase.num_samples} trials "
                          f"unfinished; its state is saved: finish it with `python -m tuner.run "
                          f"{exp.name} --resume` and the first run's --preset, --set and "
                          f"--storage")  # fmt: skip
    return summarise(grid, exp)


def seeds_phase(exp: Experiment, summary: dict, *, name: str) -> Phase:
    """Each arm's best ``exp.seeds_top`` configurations on dev, each run on every seed of
    ``exp.seeds`` it has not completed (to the end: this phase has no scheduler); the tables then
    choose among them on their mean dev over the seeds (``analysis.selection.select_configs``).
    An arm is a method, or in a ``grid`` search one grid arm (its configuration but the learning
    rate): the seeds phase runs each arm's own best rates. Stopped trials rank below completed
    ones, so an arm with no completed trial is represented by its best stopped ones, re-run on
    every seed: no arm drops out for starting slowly."""
    from tuner.runner import build_searcher
    from tuner.space import ExperimentSpace, GridSpace

    key = arm_of if exp.search.kind == "grid" else method_of
    top = top_per_arm(summary["trials"], key=key, k=exp.seeds_top)
    if not top:
        raise RuntimeError(f"{exp.name}: no scored trial to re-run with seeds {exp.seeds}")
    arms = tuple({**row["config"], "seed": seed} for rows in top.values() for row in rows
                 for seed in exp.seeds if seed not in completed_seeds(row))  # fmt: skip
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


def top_per_arm(trials: list[dict], *, key: Any = method_of, k: int = 1) -> dict[str, list[dict]]:
    """Per arm (``key(config)``): its ``k`` best trials of distinct configurations (the seed
    aside), completed ones by dev score first, then stopped ones; failed or unscored trials never
    represent an arm. Ties keep the earlier trial."""
    rank = {"completed": 1, "stopped": 0}
    scored = [row for row in trials if row["status"] in rank and row["dev_score"] is not None]
    scored.sort(key=lambda row: (rank[row["status"]], row["dev_score"]), reverse=True)
    top: dict[str, list[dict]] = {}
    for row in scored:  # a stable sort: among equals, the earlier trial first
        rows = top.setdefault(key(row["config"]), [])
        config = _without_seed(row["config"])
        if len(rows) < k and all(_without_seed(r["config"]) != config for r in rows):
            rows.append(row)
    return top


def _without_seed(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


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


def log(message: str) -> None:
    print(f"[peft-tune] {message}", file=sys.stderr, flush=True)
