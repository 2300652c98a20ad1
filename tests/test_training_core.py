"""The training core's shared parts (trainables/training/, issue #22): the best-score rule honours
the metric's mode in the loop's tally and in the trial reports alike, and the batch schedule
continues a resumed epoch where it stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from tests.test_loop import DEV
from trainables.backbones import load_backbone
from trainables.methods import build_model
from trainables.metrics import Metric, get_metric
from trainables.train_config import TrainConfig
from trainables.training import report
from trainables.training.plan import FitPlan, improves
from trainables.training.progress import Progress, scheduled
from trainables.training.report import TrialReporter

CONFIG = TrainConfig(batch_size=4, epochs=2, evals=3)


def plan(mode: str, *, num_train: int = 10) -> FitPlan:
    """A plan over ``num_train`` rows (3 batches an epoch) for a metric of ``mode``."""
    metric = Metric(f"score_{mode}", get_metric("accuracy").fn, mode=mode)
    total = CONFIG.total_steps(num_train)
    return FitPlan(CONFIG, "classification", metric, torch.device("cpu"), total,
                   frozenset(CONFIG.eval_steps(total)), CONFIG.steps_per_epoch(num_train))  # fmt: skip


def test_improves_follows_the_mode_and_refuses_another():
    assert improves(None, 0.3, mode="max") and improves(None, 0.3, mode="min")
    assert improves(0.3, 0.5, mode="max") and not improves(0.3, 0.5, mode="min")
    assert improves(0.5, 0.3, mode="min") and not improves(0.5, 0.5, mode="min")
    with pytest.raises(ConfigError, match="mode"):
        improves(0.3, 0.5, mode="maximise")


@pytest.mark.parametrize("mode, best", [("max", 0.9), ("min", 0.2)])
def test_the_tally_keeps_the_best_in_the_metrics_mode(mode, best):
    progress, at = Progress(), plan(mode)
    for step, score in enumerate([0.5, 0.9, 0.2, 0.7], start=1):
        progress.advance(4, 40, 48)
        progress.record({"score": score}, at, wall_s=float(step))
    assert progress.best_score == best and progress.evaluation == 4
    assert progress.best_step == progress.time_to_best_s == [0.5, 0.9, 0.2, 0.7].index(best) + 1


@pytest.mark.parametrize("mode, best", [("max", 0.9), ("min", 0.2)])
def test_trial_reports_keep_the_best_in_the_metrics_mode(mode, best):
    torch.manual_seed(0)
    model = build_model(
        MethodConfig(method="lora", rank=2, num_labels=2), load_backbone("tiny-bert")
    )
    reporter = TrialReporter(model, CONFIG.replace(evals=4), mode=mode, device="cpu")
    progress, at = Progress(), plan(mode)
    reports = []
    for score in [0.5, 0.9, 0.2, 0.7]:
        progress.advance(4, 40, 48)
        progress.record({"score": score, "accuracy": score}, at, wall_s=1.0)
        ev = progress.report(at, train_loss=0.1, dev_loss=0.2)
        reports.append(reporter.evaluation(ev, graphed_steps=0))
    assert reports[-1]["best_dev_score"] == best and reporter.last(ev)
    assert [r["fidelity"] for r in reports] == [0.25, 0.5, 0.75, 1.0]
    assert reports[-1]["dev_accuracy"] == 0.7 and reports[-1]["status"] == "running"
    assert reports[-1]["trainable_params"] == model.trainable_params()
    with pytest.raises(RuntimeError, match="no loop state"):
        ev.state()


def test_the_schedule_continues_a_resumed_epoch_and_stops_at_the_last_step():
    at = plan("max")  # 3 batches an epoch, 6 steps
    progress = Progress(step=2, epoch=0, batch_index=2)  # resumed before the epoch's last batch
    seen = []
    for epoch, index in scheduled(at, progress, lambda e, start: [(e, i) for i in range(start, 3)]):
        seen.append((epoch, index))
        progress.advance(1, 1, 1)
    assert seen == [(0, 2), (1, 0), (1, 1), (1, 2)] and progress.step == at.total_steps == 6


def test_latency_is_measured_once_per_architecture(monkeypatch):
    # a trial's weights do not change its time: a fused pool's finishing trials (every other
    # trial waiting) measure an architecture's latency once, not 55 passes each (twice for LoRA)
    monkeypatch.setattr(report, "_LATENCIES", {})
    measured = []

    def measure(model, data, *, device):  # type: ignore[no-untyped-def]
        measured.append(model.config.rank)
        return float(len(measured))

    monkeypatch.setattr(report, "measure_latency", measure)

    def lora(rank: int, seed: int):  # type: ignore[no-untyped-def]
        torch.manual_seed(seed)
        config = MethodConfig(method="lora", rank=rank, num_labels=2)
        return build_model(config, load_backbone("tiny-bert"))

    first = report.latencies(lora(2, seed=0), DEV, "cpu")
    assert first == {"latency_ms": 1.0, "latency_merged_ms": 2.0}  # unmerged, then merged
    assert report.latencies(lora(2, seed=1), DEV, "cpu") == first  # other weights: not measured
    assert report.latencies(lora(4, seed=0), DEV, "cpu")["latency_ms"] == 3.0  # another rank
    assert report.latencies(lora(2, seed=0), DEV.select(np.arange(3)), "cpu")["latency_ms"] == 5.0
    assert measured == [2, 2, 4, 4, 2, 2]
