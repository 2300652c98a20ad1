"""The packing benchmark: aggregate throughput of 1, 2, 4, ... trials sharing one GPU.

``via="processes"``: each trial is its own process, as a Ray Tune trial with a fractional
``gpus_per_trial`` is: the data are tokenised once by the parent and handed to every worker as
one file (Ray would use its object store), each worker builds its model, waits at a barrier,
then trains. Aggregate
throughput = all samples trained / (last trial's training end - first trial's start), so process
start-up and model loading, which Ray overlaps with running trials, are not counted.

``via="fused"``: the n trials are fused into one model in one worker process, or ``fuse`` at a
time in ``n / fuse`` processes, under MPS where asked (:mod:`trainables.fused`: one frozen
backbone, per-trial LoRA and head); their learning rates spread over 0.5x-2x the trial's. Their seed is the trial's, as in a search where every trial
has the study's seed (one data order: the K batches of a step are equally long); with
``fused_seeds="distinct"`` trial k has seed k, its own data order, and a step pads all K
batches to the longest of them. ``fused_mix`` gives trial k its own LoRA shape: ranks cycling
4, 8, 16, 32 and/or placements cycling query/value, FFN, every linear (rows of a template with LoRA
on every linear at the largest rank, as a study's pool holds them). The speed-up of every level is
over one trial run alone as a process (the ``processes`` level 1: r=8 on query/value).

``python -m tuner.bench.packing worker ...`` is the worker's entry point; use ``tuner.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from trainables.flops import train_flops

READY_TIMEOUT_S = 600.0
POLL_S = 0.005
FUSED_SEEDS = ("same", "distinct")  # fused bench trials: one data order, or one each
FUSED_MIXES = ("same", "ranks", "placements", "both")  # fused bench trials' LoRA shapes
MIX_RANKS = (4, 8, 16, 32)
MIX_PLACEMENTS = ("attn_qv", "ffn", "all")
NEAR_BEST = 0.9  # the default packing: fewest GPUs per trial reaching 90% of the best aggregate


@dataclass(frozen=True)
class PackingSetup:
    """What every packed trial of a run shares: the backbone (its layer ``shape`` and the
    device's ``peak_flops`` give the MFU), the device, the trial's batch size and learning rate,
    and the folder for the run's files (workers' handshakes and results, Tune's storage, MPS)."""

    backbone: str
    device: str
    batch_size: int
    shape: Any
    peak_flops: float | None
    workdir: Path
    lr: float = 1e-3  # the speed does not depend on it


@dataclass(frozen=True)
class PackingRow:
    concurrent: int
    gpus_per_trial: float
    aggregate_samples_per_s: float
    trial_samples_per_s: float  # mean over the trials
    speedup: float | None  # aggregate over the one-trial aggregate
    mfu: float | None  # of the GPU: all trials' model FLOPs in the window
    peak_mem_mib: float | None  # the largest trial's
    dev_score: float  # mean final dev score (packing must not change results)
    failed: int
    mps: bool
    via: str = "processes"  # how the trials ran: processes the bench starts, "fused" or "tune"
    wall_s: float | None = None  # via tune: the whole Tune run (Ray scheduling, actor start, ...)
    wall_samples_per_s: float | None = None  # all samples / wall_s
    overlap: int | None = None  # the most trials training at one moment (should be `concurrent`)
    running_at_once: int | None = None  # via tune: the most trials Tune had running at once
    trials: list[dict[str, Any]] | None = None  # each trial's start, train_s, samples, ...
    processes: int | None = None  # worker processes the trials ran in (fused: n / trials each)
    profile: dict[str, Any] | None = None  # where a fused step's time goes (tuner.bench.profile)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(trials: list[dict[str, Any]]) -> tuple[float, float]:
    """(aggregate samples/s over the common window, mean per-trial samples/s) of worker results."""
    if not trials:
        return 0.0, 0.0
    start = min(t["start"] for t in trials)
    end = max(t["start"] + t["train_s"] for t in trials)
    total = sum(t["samples"] for t in trials)
    per_trial = sum(t["samples"] / t["train_s"] for t in trials) / len(trials)
    return (total / (end - start) if end > start else 0.0), per_trial


def best_gpus_per_trial(rows: list[PackingRow], *, near: float = NEAR_BEST) -> float | None:
    """``1 / n`` of the smallest packing ``n`` whose aggregate is within ``near`` of the best:
    more trials per GPU past that point only add memory and contention."""
    ok = [r for r in rows if r.failed == 0 and r.aggregate_samples_per_s > 0]
    if not ok:
        return None
    best = max(r.aggregate_samples_per_s for r in ok)
    return min(
        (r for r in ok if r.aggregate_samples_per_s >= near * best), key=lambda r: r.concurrent
    ).gpus_per_trial


def trial_config(
    *, batch_size: int, lr: float, seed: int = 0, k: int = 0, mix: str = "same"
) -> dict[str, Any]:
    """The packed trial: LoRA r=8 (alpha 16 on query/value, the defaults), one epoch, one dev
    evaluation at its end; under ``mix`` trial ``k``'s rank and/or placement cycle."""
    config = {"method": "lora", "rank": 8, "epochs": 1.0, "batch_size": batch_size, "lr": lr,
              "seed": seed, "evals": 1}  # fmt: skip
    if mix in ("ranks", "both"):
        config["rank"] = MIX_RANKS[k % len(MIX_RANKS)]
    if mix in ("placements", "both"):
        config["placement"] = MIX_PLACEMENTS[k % len(MIX_PLACEMENTS)]
    return config


def most_overlapping(trials: list[dict[str, Any]]) -> int:
    """The most trials whose training windows ``[start, start + train_s)`` share a moment."""
    events = sorted([(t["start"], 1) for t in trials] + [(t["start"] + t["train_s"], -1)
                                                           for t in trials])  # fmt: skip
    most = running = 0
    for _, step in events:  # an end sorts before a start at the same time
        running += step
        most = max(most, running)
    return most


def run_level(
    n: int,
    setup: PackingSetup,
    *,
    data_file: Path,
    mps: bool = False,
    fuse: int = 0,
    fused_seeds: str = "same",
    fused_mix: str = "same",
    profile_steps: int = 0,
) -> PackingRow:
    """Start the workers of ``n`` trials on the data pickled in ``data_file``, release them
    together, collect their results: ``n`` workers of one trial each, or (``fuse`` > 0)
    ``n / fuse`` workers of ``fuse`` fused trials (``profile_steps``: each then profiles that
    many steps of its model after the timed run, :mod:`tuner.bench.profile`)."""
    if fuse and n % fuse:
        raise ValueError(f"{n} trials do not split into workers of {fuse} fused trials")
    workers = n // fuse if fuse else n
    level = setup.workdir / f"level-{n}{f'-fused{fuse}' if fuse else ''}{'-mps' if mps else ''}"
    level.mkdir(parents=True, exist_ok=True)
    go = level / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for i in range(workers):
        seed = i * fuse if fuse and fused_seeds == "distinct" else 0
        cmd = [sys.executable, "-m", "tuner.bench.packing", "worker", "--data", str(data_file),
               "--backbone", setup.backbone, "--device", setup.device,
               "--batch-size", str(setup.batch_size), "--lr", str(setup.lr), "--seed", str(seed),
               "--ready", str(level / f"ready-{i}"), "--go", str(go),
               "--out", str(level / f"result-{i}.json"),
               "--fuse", str(fuse), "--fused-seeds", fused_seeds, "--fused-mix", fused_mix,
               "--profile-steps", str(profile_steps)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while sum((level / f"ready-{i}").exists() for i in range(workers)) + _exited(procs) < workers:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    go.touch()
    for p in procs:
        p.wait()
    results = [t for f in sorted(level.glob("result-*.json")) for t in json.loads(f.read_text())]
    return replace(
        level_row(n, results, shape=setup.shape, peak_flops=setup.peak_flops, mps=mps,
                  via="fused" if fuse else "processes"),
        processes=workers,
    )  # fmt: skip


def fused_lrs(lr: float, n: int) -> list[float]:
    """The learning rates of ``n`` fused bench trials: ``lr`` for one, else 0.5x..2x ``lr``,
    evenly spread in log scale (a search's trials differ; the speed does not depend on it)."""
    if n == 1:
        return [lr]
    return [lr * 2 ** (2 * k / (n - 1) - 1) for k in range(n)]


def level_row(
    n: int,
    results: list[dict[str, Any]],
    *,
    shape: Any,
    peak_flops: float | None,
    mps: bool,
    via: str = "processes",
    wall_s: float | None = None,
    running_at_once: int | None = None,
) -> PackingRow:
    """The row of ``n`` packed trials from the results of those that finished (start, train_s,
    samples, tokens, peak_mem_mib, dev_score each); the missing ones count as failed."""
    agg, per_trial = aggregate(results)
    window = _window(results)
    flops = sum(
        train_flops(shape, tokens=r["tokens"], samples=r["samples"]) for r in results
    )  # fmt: skip
    peaks = [r["peak_mem_mib"] for r in results if r.get("peak_mem_mib") is not None]
    samples = sum(r["samples"] for r in results)
    return PackingRow(
        concurrent=n, gpus_per_trial=1 / n, aggregate_samples_per_s=agg,
        trial_samples_per_s=per_trial, speedup=None,
        mfu=flops / window / peak_flops if peak_flops and window > 0 else None,
        peak_mem_mib=max(peaks) if peaks else None,
        dev_score=sum(r["dev_score"] for r in results) / max(1, len(results)),
        failed=n - len(results), mps=mps, via=via, wall_s=wall_s,
        wall_samples_per_s=samples / wall_s if wall_s else None,
        overlap=most_overlapping(results), running_at_once=running_at_once,
        trials=[{k: v for k, v in r.items() if k != "profile"} for r in results],
        profile=next((r["profile"] for r in results if r.get("profile")), None),
    )  # fmt: skip


def with_speedups(rows: list[PackingRow]) -> list[PackingRow]:
    """Each row's aggregate over the aggregate of one trial with the same MPS setting, run the same
    way (fused rows: over one trial run alone as a process; pool rows: over one trial through
    Tune as a study runs it)."""
    baseline = {"fused": "processes", "pool": "tune"}
    out = []
    for r in rows:
        via = baseline.get(r.via, r.via)
        one = next((o for o in rows if o.concurrent == 1 and o.mps == r.mps and o.via == via), None)
        base = one.aggregate_samples_per_s if one else 0.0
        out.append(replace(r, speedup=r.aggregate_samples_per_s / base if base > 0 else None))
    return out


def _window(results: list[dict[str, Any]]) -> float:
    if not results:
        return 0.0
    return max(r["start"] + r["train_s"] for r in results) - min(r["start"] for r in results)


def _exited(procs: list[subprocess.Popen]) -> int:
    return sum(p.poll() is not None for p in procs)


def save_data(data: Any, path: Path) -> Path:
    """The prepared data, once, for every worker (what Ray's object store does for a study)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


# --- the worker ------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """One worker: one trial trained by ``fit``, or ``args.fuse`` trials fused into one model;
    writes a JSON list, one entry per trial."""
    # torch and the model stack load in the worker only: the bench's parent process imports this
    # module for its options and never touches CUDA, so every worker gets the GPU to itself
    import torch

    from search_spaces.row_groups import group_template
    from trainables.backbones import load_backbone
    from trainables.fused import fit_fused, fuse_lora
    from trainables.methods import build_model
    from trainables.recipe import split_config
    from trainables.training.loop import fit

    with open(args.data, "rb") as handle:
        data = pickle.load(handle)
    members, methods, configs = [], [], []
    for k, lr in enumerate(fused_lrs(args.lr, args.fuse) if args.fuse else [args.lr]):
        seed = args.seed + k if args.fused_seeds == "distinct" else args.seed
        config = trial_config(batch_size=args.batch_size, lr=lr, seed=seed, k=k,
                              mix=args.fused_mix)  # fmt: skip
        method_config, train_config = split_config(config, num_labels=data.num_labels)
        torch.manual_seed(seed)
        members.append(build_model(
            method_config, load_backbone(args.backbone),
            total_steps=train_config.total_steps(len(data.train)),
        ))  # fmt: skip
        methods.append(method_config)
        configs.append(train_config)

    def template() -> Any:  # LoRA on the union of the trials' linears, at their largest rank
        return build_model(group_template(methods), load_backbone(args.backbone))

    model = (fuse_lora(members, template) if args.fuse else members[0]).to(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(POLL_S)
    start = time.time()
    common = {"task_kind": data.task_kind, "metric": data.metric, "device": args.device}
    if args.fuse:
        results = fit_fused(model, data.train, data.dev, configs, **common)
    else:
        results = [fit(model, data.train, data.dev, configs[0], **common)]
    trials = [_entry(r, c, m, start) for r, c, m in zip(results, configs, methods, strict=True)]
    if args.fuse and args.profile_steps:  # after the timed run, which it must not slow
        from tuner.bench.profile import profile_fused, with_step_time

        steps = -(-trials[0]["samples"] // args.batch_size)
        profile = profile_fused(model, data.train, configs, steps=args.profile_steps, **common)
        trials[0]["profile"] = with_step_time(profile, 1000 * trials[0]["train_s"] / steps)
    Path(args.out).write_text(json.dumps(trials))
    return 0


def _entry(result: Any, config: Any, method: Any, start: float) -> dict[str, Any]:
    """What a worker reports of one trial: its window, counts, memory, score and shape."""
    r = result
    return {"start": start, "train_s": r.samples_seen / r.train_samples_per_s,
            "samples": r.samples_seen, "tokens": r.tokens_seen,
            "padded_tokens": r.padded_tokens_seen, "peak_mem_mib": r.peak_mem_mib,
            "dev_score": r.best_dev_score, "status": r.status, "lr": config.lr,
            "seed": config.seed, "rank": method.rank, "placement": method.placement,
            "cuda_graphs": r.cuda_graphs, "graphs_off": r.graphs_off}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.bench.packing")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="one packed trial (started by tuner.bench)")
    for name in ("--data", "--backbone", "--device", "--ready", "--go", "--out"):
        w.add_argument(name, required=True)
    w.add_argument("--batch-size", type=int, default=32)
    w.add_argument("--lr", type=float, default=1e-3)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--fuse", type=int, default=0, help="train this many trials fused (0: one, plain)"
    )
    w.add_argument("--fused-seeds", choices=FUSED_SEEDS, default="same")
    w.add_argument("--fused-mix", choices=FUSED_MIXES, default="same")
    w.add_argument("--profile-steps", type=int, default=0, help="fused: profile this many steps")
    return p


if __name__ == "__main__":
    sys.exit(worker(_parser().parse_args()))
