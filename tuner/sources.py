"""The source-adapter stage: train each adapter a fusion study needs, once, as Ray tasks.

Runs before the trials. Adapters already in the store (same source task, backbone, adapter
config and seed) are reused; the missing ones train in parallel, are stored with their metrics
and checksums, and are logged to MLflow (experiment ``source-adapters``).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from trainables.prepared import PreparedData
from trainables.source_store import AdapterStore, SourceSpec
from tuner.experiment import Experiment

SOURCE_EPOCHS = 1.0  # a source adapter only has to carry its task's signal into the fusion
# One epoch wants the top of the adapters' range (Houlsby et al. 2019 searched up to 3e-3);
# AdapterFusion trained its adapters at 1e-4 but for up to 30 epochs (Pfeiffer et al. 2021).
SOURCE_LR = 1e-3


def needed_specs(
    exp: Experiment, bottlenecks: tuple[int, ...], max_length: int
) -> list[SourceSpec]:
    train = (("epochs", SOURCE_EPOCHS), ("evals", 1), ("lr", SOURCE_LR), ("max_length", max_length))
    return [
        SourceSpec(
            source=s,
            backbone=exp.backbone,
            bottleneck=b,
            train=train,
            train_samples=exp.train_samples,
        )  # fmt: skip
        for s in exp.search.sources
        for b in bottlenecks
    ]


def train_source_adapter(spec: SourceSpec, data: PreparedData, store_root: str) -> dict[str, Any]:
    """Train one source adapter and put it in the store (runs inside a Ray task)."""
    from trainables.backbones import load_backbone
    from trainables.methods import build_model, save_source_adapter
    from trainables.recipe import split_config
    from trainables.training.loop import fit

    config = {
        "method": spec.method,
        "bottleneck": spec.bottleneck,
        "seed": spec.seed,
        **dict(spec.train),
    }
    method_config, train_config = split_config(config, num_labels=data.num_labels)
    model = build_model(method_config, load_backbone(spec.backbone))
    # Scored on its dev split only: its test split (25,000 reviews for IMDB) says nothing about
    # the fusion and would cost more than the training.
    result = fit(
        model, data.train, data.dev, train_config, task_kind=data.task_kind, metric=data.metric
    )
    metrics = {"dev_score": result.best_dev_score,
               "train_samples_per_s": result.train_samples_per_s, "wall_s": result.wall_s}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save_source_adapter(model, spec.source, Path(tmp))
        AdapterStore(store_root).put(spec, Path(tmp), metrics)
    return metrics


def ensure_source_adapters(
    exp: Experiment,
    data: PreparedData,
    *,
    bottlenecks: tuple[int, ...],
    resources: Any,
    data_dir: str | None,
    tracking_uri: str,
    log: Callable[[str], None],
    store: AdapterStore | None = None,
) -> tuple[PreparedData, dict[str, int]]:
    """``data`` with ``source_adapters`` filled in for every (source, bottleneck) the study uses,
    and the work done: ``{"source_adapters_needed": n, "source_adapters_trained": k}``."""
    if not exp.search.sources or not bottlenecks:
        return data, {"source_adapters_needed": 0, "source_adapters_trained": 0}
    import ray

    store = store or AdapterStore()
    specs = needed_specs(exp, bottlenecks, max_length=dict(exp.train).get("max_length", 128))
    for half in store.sweep():
        log(f"source adapter store: deleted a half-written entry of a killed run: {half}")
    missing = [s for s in specs if store.get(s) is None]
    for aside in store.quarantined:
        log(f"source adapter entry failed its checksums, moved aside and retrained: {aside}")
    log(f"source adapters: {len(specs) - len(missing)} reused, {len(missing)} to train "
        f"({', '.join(sorted({s.source for s in missing})) or 'none'}) in {store.root}")  # fmt: skip
    if missing:
        task = ray.remote(train_source_adapter).options(
            num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)  # fmt: skip
        futures = {spec: task.remote(spec, source_data, str(store.root))
                   for spec, source_data in source_data_of(missing, backbone=exp.backbone,
                                                           data_dir=data_dir)}  # fmt: skip
        for spec, future in futures.items():
            metrics = ray.get(future)
            log(
                f"  trained {spec.source} (bottleneck {spec.bottleneck}): dev={metrics['dev_score']:.4f}"
            )
            _log_to_mlflow(tracking_uri, spec, metrics, store)
    adapters: dict[int, dict[str, Path]] = {}
    for spec in specs:
        folder = store.get(spec)
        if folder is None:
            raise RuntimeError(f"source adapter {spec.source} vanished from {store.root}")
        adapters.setdefault(spec.bottleneck, {})[spec.source] = folder
    work = {"source_adapters_needed": len(specs), "source_adapters_trained": len(missing)}
    return dataclasses.replace(data, source_adapters=adapters), work


def source_data_of(
    specs: list[SourceSpec], *, backbone: str, data_dir: str | None
) -> Iterator[tuple[SourceSpec, PreparedData]]:
    """Each spec with its source's train and dev split (``prepare(test=False)``), as each is
    tokenised: every source in a thread of its own, with its own copy of the tokenizer (a fast
    tokenizer's Rust core releases the GIL while it works, and its truncation state is not safe
    to share between threads). Specs that differ only in bottleneck share one tokenisation."""
    from trainables.backbones import load_backbone
    from tuner.prepare import prepare

    if not specs:
        return
    tokenizer = load_backbone(backbone, meta=True).tokenizer
    by_data: dict[tuple[Any, ...], list[SourceSpec]] = {}
    for spec in specs:
        key = (spec.source, dict(spec.train)["max_length"], spec.train_samples)
        by_data.setdefault(key, []).append(spec)

    def tokenised(key: tuple[Any, ...]) -> PreparedData:
        source, max_length, train_samples = key
        return prepare(source, tokenizer=copy.deepcopy(tokenizer), max_length=max_length,
                       train_samples=train_samples, data_dir=data_dir, test=False)  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, len(by_data))) as pool:
        pending = {pool.submit(tokenised, key): key for key in by_data}
        for done in as_completed(pending):
            for spec in by_data[pending[done]]:
                yield spec, done.result()


def _log_to_mlflow(
    uri: str, spec: SourceSpec, metrics: dict[str, Any], store: AdapterStore
) -> None:
    from tuner.tracking import connect, ensure_experiment

    client = connect(uri)
    run = client.create_run(ensure_experiment(client, "source-adapters"),
                            run_name=f"{spec.source} b{spec.bottleneck}",
                            tags={"store_key": spec.key, "source": spec.source})  # fmt: skip
    for key, value in dataclasses.asdict(spec).items():
        client.log_param(run.info.run_id, key, str(value))
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, float(value))
    client.log_artifacts(run.info.run_id, str(store.entry(spec)), "adapter")
    client.set_terminated(run.info.run_id)
