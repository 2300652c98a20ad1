"""Every registered experiment, in every preset, builds its space and samples inside its budget."""

import pytest

from search_spaces.accounting import count_params
from search_spaces.matching import Budget
from search_spaces.spaces import method_config_from_params
from trainables.backbones import load_backbone
from trainables.data.loading import resolve_task
from tuner.experiment import PRESETS, all_experiments
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
