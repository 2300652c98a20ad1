"""AdaLoRA done by its paper: its own scale, a schedule from the trial's step count, budgets at the
final rank, and a trial resumed after pruning ended (the rank pattern travels with the checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from search_spaces.accounting import count_params
from search_spaces.matching import Budget, match_budget
from search_spaces.method_config import ADALORA_SCALE, MethodConfig
from search_spaces.shapes import MINILM_L6
from tests.test_loop import DEV, TRAIN
from trainables.backbones import load_backbone
from trainables.checkpoint_files import METHOD_STATE, WEIGHTS
from trainables.methods import build_model
from trainables.methods.lora import adalora_schedule
from trainables.prepared import PreparedData
from trainables.recipe import run_trial


def test_a_budget_counts_adalora_at_its_final_rank_unless_told_initial() -> None:
    budget = Budget(330_000)
    final = match_budget("adalora", budget, MINILM_L6, placement="all")
    count = count_params(final, MINILM_L6)
    assert budget.contains(count) and count.budget_trainable is not None
    assert (
        count.budget_trainable
        == count_params(final.replace(init_rank=final.rank), MINILM_L6).trainable_params
    )
    assert count.trainable_params > 1.4 * count.budget_trainable  # allocated at 1.5x the rank
    initial = match_budget("adalora", budget, MINILM_L6, placement="all", budget_rank="initial")
    assert budget.contains(count_params(initial, MINILM_L6).trainable_params)
    assert initial.rank < final.rank


def test_peft_scales_the_update_by_the_adalora_scale_and_the_schedule_follows_the_steps() -> None:
    config = MethodConfig(method="adalora", rank=2, init_rank=3)
    model = build_model(config, load_backbone("tiny-bert"), total_steps=200)
    layer = next(m for m in model.modules() if hasattr(m, "ranknum"))
    assert layer.scaling["default"] / layer.ranknum["default"].item() == pytest.approx(
        ADALORA_SCALE
    )
    assert adalora_schedule(200) == {"total_step": 200, "tinit": 30, "tfinal": 90, "deltaT": 2}


class Stop(Exception):
    pass


def test_an_adalora_trial_killed_after_pruning_resumes_to_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    data = PreparedData(task="synthetic", task_kind="classification", metric="accuracy",
                        num_labels=2, train=TRAIN, dev=DEV, test=DEV)  # fmt: skip
    # 384 rows / 32 = 12 steps an epoch, 48 in all: pruning ends at step 48 - 21 = 27, and the
    # fourth of six evaluations (step 32) is in the final phase, where peft masks with the pattern
    config = {"method": "adalora", "rank": 1, "init_rank": 3, "placement": "all",
              "backbone": "tiny-bert", "lr": 3e-3, "batch_size": 32, "epochs": 4.0, "evals": 6,
              "eval_batch_size": 64}  # fmt: skip

    def keep(into: Path, *, stop_at: int | None = None):
        def report(metrics: dict, folder: Path | None) -> None:
            if folder is not None:
                shutil.rmtree(into, ignore_errors=True)
                shutil.copytree(folder, into)
            if metrics["evaluation"] == stop_at:
                raise Stop

        return report

    full = run_trial(config, data, report=keep(tmp_path / "full"), device="cpu")
    with pytest.raises(Stop):
        run_trial(config, data, report=keep(tmp_path / "cut", stop_at=4), device="cpu")
    saved = torch.load(tmp_path / "cut" / METHOD_STATE, weights_only=True)
    assert saved["rank_pattern"]  # fixed when pruning ended: the resumed run needs it
    resumed = run_trial(config, data, report=keep(tmp_path / "cut"), device="cpu",
                        resume_from=tmp_path / "cut")  # fmt: skip
    assert resumed["status"] == full["status"] == "completed"
    assert resumed["dev_score"] == full["dev_score"]
    expected, got = load_file(tmp_path / "full" / WEIGHTS), load_file(tmp_path / "cut" / WEIGHTS)
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_the_rank_step_is_pefts_update_and_allocate_step_by_step() -> None:
    """RankStep (foreach importance averages, final masks made once) against peft's own hook on
    two identical models fed the same gradients through warm-up, pruning and the final phase:
    the same importance averages, rank patterns and lora_E values at every step."""
    from trainables.methods.adalora_step import RankStep

    total = 60  # tinit 9, pruning until step 33 with a reallocation every step, then final
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        config = MethodConfig(method="adalora", rank=2, placement="all", num_labels=2)
        models.append(build_model(config, load_backbone("tiny-bert"), total_steps=total))
    ours, theirs = (m.encoder.base_model for m in models)
    hook = RankStep(ours)
    params = [[p for p in m.parameters() if p.requires_grad] for m in models]
    generator = torch.Generator().manual_seed(1)
    for step in range(total):
        for mine, reference in zip(*params, strict=True):
            grad = torch.randn(mine.shape, generator=generator)
            mine.grad, reference.grad = grad.clone(), grad.clone()
            with torch.no_grad():  # a stand-in optimizer step: the weights move every step
                mine.add_(grad, alpha=-1e-2)
                reference.add_(grad, alpha=-1e-2)
        hook(step)
        theirs.update_and_allocate(step)
        mine_alloc, their_alloc = ours.rankallocator, theirs.rankallocator
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            a, b = getattr(mine_alloc, name), getattr(their_alloc, name)
            assert a.keys() == b.keys(), (step, name)
            for key in a:
                assert torch.equal(a[key], b[key]), (step, name, key)
        assert (
            ours.peft_config["default"].rank_pattern == theirs.peft_config["default"].rank_pattern
        )
        singular = [{n: p for n, p in m.named_parameters() if "lora_E" in n} for m in models]
        for name, value in singular[0].items():
            assert torch.equal(value, singular[1][name]), (step, name)
    pattern = ours.peft_config["default"].rank_pattern
    kept = sum(sum(v) for v in pattern.values())
    assert 0 < kept < sum(len(v) for v in pattern.values())  # pruning happened, not everything
