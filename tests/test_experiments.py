"""Every registered experiment, in every preset, builds its space and samples inside its budget."""

import pytest

from search_spaces.accounting import count_params
from search_spaces.matching import Budget
from search_spaces.spaces import method_config_from_params
from trainables.backbones import load_backbone
from trainables.data.loading import resolve_task
from tuner.experiment import PRESETS
from tuner.experiments import all_experiments
from tuner.space import build_space, first_configs

CASES = [(e.name, p) for e in all_experiments() for p in PRESETS]


def test_the_study_plan_experiments_are_registered():
    names = {e.name for e in all_experiments()}
    assert {"e1_single_task", "e2_few_shot", "e3_transfer", "e4_budget", "e5_efficiency"} <= names


@pytest.mark.parametrize(("name", "preset"), CASES)
def test_every_preset_samples_inside_the_budget(name, preset, data_dir):
    exp = next(e for e in all_experiments() if e.name == name).with_preset(preset)
    space = build_space(exp)
    shape = load_backbone(exp.backbone, meta=True).shape
    num_labels = resolve_task(exp.task).num_labels
    for params in first_configs(exp, space, n=min(exp.num_samples, 8)):
        assert params["task"] == exp.task and params["backbone"] == exp.backbone
        config = method_config_from_params(params, num_labels=num_labels, head=exp.head)
        count = count_params(config, shape)
        assert count.trainable_params == params["trainable_params"]
        if params.get("tolerance") is not None:  # full and bitfit have no knob to match
            budget = params.get("budget_params") or exp.search.budget_params  # an arm's own
            # the figure a budget counts: trainable parameters (AdaLoRA's at its final rank)
            deviation = Budget(budget, tolerance=exp.search.tolerance).deviation(count)
            assert abs(deviation) <= exp.search.tolerance


COMPARISONS = ("grid", "choices", "methods", "budget_split", "autopeft")


@pytest.mark.parametrize(("name", "preset"), CASES)
def test_a_grid_study_runs_each_arm_at_its_own_rates_and_every_trial_of_it(name, preset):
    """Fair arms (docs/STUDIES.md): a grid arm without an lr runs at its own method's rates, and
    the search phase holds every (arm, rate) once: num_samples is the grid's size."""
    from search_spaces.spaces import LR_RANGES
    from tuner.space import arm_rates, grid_size

    exp = next(e for e in all_experiments() if e.name == name).with_preset(preset)
    assert exp.search.kind in COMPARISONS
    if exp.search.kind != "grid":
        return
    assert exp.num_samples == grid_size(exp)
    for arm in exp.search.configs:
        assert "seed" not in arm  # seeds are the seeds phase's, after the rate is chosen on dev
        lo, hi = LR_RANGES[arm["method"]]
        assert all(lo <= lr <= hi for lr in arm_rates(arm, exp.search.lr_points))


def test_comparison_studies_choose_a_rate_per_arm_and_rerun_it_on_three_seeds():
    """Every study that compares arms tunes each arm's own learning rate (grid: lr_points >= 3,
    the others sample it per method) and re-runs each arm's best on >= 3 seeds."""
    from tuner.experiments import get_experiment

    efficiency = {"e5_efficiency"}  # a timing study: one rate per method, at its range's middle
    for exp in all_experiments():
        if exp.name in efficiency:
            continue
        if exp.search.kind == "grid":
            assert exp.search.lr_points >= 4, exp.name
        if exp.search.kind != "autopeft":  # a Pareto front of NSGA-II, not arms on seeds
            assert len(exp.seeds) >= 3, exp.name
    assert get_experiment("e5_efficiency").search.lr_points == 1


def test_learning_rates_spread_over_the_method_range_log_evenly():
    from search_spaces.spaces import default_lr, learning_rates

    assert learning_rates("lora", 4) == (1.8e-4, 5.6e-4, 1.8e-3, 5.6e-3)
    assert learning_rates("lora", 1) == (default_lr("lora"),) == (1e-3,)
    assert learning_rates("full", 2) == (2.3e-5, 1.3e-4)
