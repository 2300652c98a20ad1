"""The Optuna search spaces: every sample inside the budget, through Optuna and Ray Tune alike."""

from __future__ import annotations

import json
import pickle

import optuna
import pytest

from search_spaces.accounting import count_params
from search_spaces.allocator import Budget, Infeasible
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from search_spaces.shapes import BERT_BASE, MINILM_L6, BackboneShape
from search_spaces.spaces import (
    BUDGET_KEYS,
    CONSTRAINT,
    COUNT_KEYS,
    METHOD_KEYS,
    BudgetSplitSpace,
    MethodSpace,
    budget_split_space,
    constraints,
    method_config_from_params,
    method_space,
    methods_space,
    synthetic_score,
    trial_params,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
SOURCES = ("glue/sst2", "newsgroups/bydate", "imdb")
BUDGET = Budget(600_000)
PUBLIC_KEYS = {*METHOD_KEYS, *BUDGET_KEYS, *COUNT_KEYS, "lr"}


@pytest.fixture(scope="module")
def space() -> BudgetSplitSpace:
    return budget_split_space(shape=MINILM_L6, budget=BUDGET, sources_pool=SOURCES)


def run_study(
    space: BudgetSplitSpace | MethodSpace, sampler: optuna.samplers.BaseSampler, trials: int
) -> tuple[optuna.Study, list[dict]]:
    """A real study of ``trials`` with the synthetic objective; the params each trial got."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    sampled: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        sampled.append(space(trial))
        return synthetic_score(sampled[-1])

    study.optimize(objective, n_trials=trials)
    return study, sampled


def recount(params: dict, budget: Budget = BUDGET, shape: BackboneShape = MINILM_L6) -> int:
    """The budget's figure of a trial's params, recounted from the rebuilt MethodConfig."""
    config = method_config_from_params(params, num_labels=2, head="mean")
    count = count_params(config, shape)
    assert (count.trainable_params, count.added_params) == (
        params["trainable_params"],
        params["added_params"],
    )
    return budget.params(count)


def test_a_thousand_tpe_trials_are_all_inside_the_budget(space: BudgetSplitSpace) -> None:
    study, sampled = run_study(space, optuna.samplers.TPESampler(seed=0), 1000)
    assert len(sampled) == 1000
    assert all(BUDGET.contains(recount(p)) for p in sampled)
    assert {p["method"] for p in sampled} == {"lora", "fusion", "lora_fusion"}
    assert all(set(p) == PUBLIC_KEYS for p in sampled)
    json.dumps(sampled)  # flat and JSON-able
    # TPE learned over the lumps: the synthetic score rewards more sources
    late = [len(p["sources"].split(",")) for p in sampled[-200:] if p["sources"]]
    early = [len(p["sources"].split(",")) for p in sampled[:200] if p["sources"]]
    assert sum(late) / len(late) > sum(early) / len(early)
    assert all(t.system_attrs[f"constraints:{CONSTRAINT}"] <= 0 for t in study.trials)


def test_ray_optuna_search_drives_the_space(space: BudgetSplitSpace) -> None:
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=space,
        metric="dev_score",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=8),
    )
    # Tune calls this with the param_space; a searcher built with a space keeps its own
    assert searcher.set_search_properties("dev_score", "max", {}) is False
    searcher = pickle.loads(pickle.dumps(searcher))  # Tune ships the searcher to its loop
    for i in range(36):
        config = searcher.suggest(f"trial_{i}")
        assert set(config) == PUBLIC_KEYS, "internal lump names must not reach the trainable"
        assert BUDGET.contains(recount(config))
        result = {"dev_score": synthetic_score(config), "training_iteration": 1}
        searcher.on_trial_complete(f"trial_{i}", result)
    assert len(searcher._ot_study.trials) == 36


@pytest.mark.filterwarnings("ignore:.*constraints_func.*:FutureWarning")  # tuner.runner passes it
def test_nsga2_with_the_space_constraints_func(space: BudgetSplitSpace) -> None:
    sampler = optuna.samplers.NSGAIISampler(
        seed=0, population_size=8, constraints_func=space.constraints_func
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    sampled: list[dict] = []

    def objective(trial: optuna.Trial) -> tuple[float, int]:
        sampled.append(space(trial))
        return synthetic_score(sampled[-1]), sampled[-1]["trainable_params"]

    study.optimize(objective, n_trials=24)
    assert all(BUDGET.contains(recount(p)) for p in sampled)
    assert all(space.constraints_func(t)[0] <= 0 for t in study.trials)


def test_the_space_pickles_and_samples_the_same(space: BudgetSplitSpace) -> None:
    twin = pickle.loads(pickle.dumps(space))
    runs = [run_study(s, optuna.samplers.TPESampler(seed=3), 12)[1] for s in (space, twin)]
    assert runs[0] == runs[1]


def test_describe_lists_lumps_and_feasible_share(space: BudgetSplitSpace) -> None:
    text = space.describe()
    assert "600,000 trainable parameters ± 5%" in text
    assert "feasible splits: 109 of 592" in text
    assert "fusion_depth: 1 | 2" in text


def test_other_budgets_and_shapes_stay_inside() -> None:
    for shape, budget in (
        (MINILM_L6, Budget(300_000, tolerance=0.02)),
        (BERT_BASE, Budget(3_000_000)),
    ):
        space = budget_split_space(shape=shape, budget=budget, sources_pool=SOURCES[:2])
        _, sampled = run_study(space, optuna.samplers.RandomSampler(seed=0), 60)
        assert all(budget.contains(recount(p, budget, shape)) for p in sampled)


def test_an_infeasible_budget_refuses_to_build_a_space() -> None:
    with pytest.raises(Infeasible, match="no split of lora, fusion, lora_fusion fits"):
        budget_split_space(shape=MINILM_L6, budget=Budget(1_000), sources_pool=SOURCES)


def test_method_space_tunes_lr_at_the_matched_config() -> None:
    space = method_space("pfeiffer", shape=MINILM_L6, budget=BUDGET)
    _, sampled = run_study(space, optuna.samplers.TPESampler(seed=0), 10)
    assert {p["bottleneck"] for p in sampled} == {129}
    assert len({p["lr"] for p in sampled}) == 10
    assert all(3e-5 <= p["lr"] <= 3e-3 and p["rank"] is None for p in sampled)
    assert BUDGET.contains(recount(sampled[0]))


def test_method_space_without_budget_and_knobless_baselines() -> None:
    full = method_space("full", shape=MINILM_L6, budget=None)
    params = full(optuna.trial.FixedTrial({"lr[full]": 2e-5}))
    assert params["budget_params"] is None and constraints(params) == [0.0]
    assert params["trainable_params"] == MINILM_L6.backbone_params + 770
    bitfit = method_space("bitfit", shape=MINILM_L6, budget=BUDGET)
    assert bitfit.params["budget_deviation"] == pytest.approx(26_498 / 600_000 - 1)
    assert bitfit.params["tolerance"] is None
    with pytest.raises(Infeasible, match="prefix_reparam=false"):
        method_space("prefix", shape=MINILM_L6, budget=Budget(300_000))
    with pytest.raises(ConfigError, match="lr_range"):
        method_space("lora", shape=MINILM_L6, budget=BUDGET, lr_range=(1e-3, 1e-4))


def test_constraints_are_positive_outside_the_tolerance() -> None:
    assert constraints({"budget_deviation": 0.07, "tolerance": 0.05}) == [pytest.approx(0.02)]
    assert constraints({"budget_deviation": -0.01, "tolerance": 0.05}) == [pytest.approx(-0.04)]
    with pytest.raises(ConfigError, match="budget_deviation"):
        constraints({"lr": 1e-3})


def test_params_round_trip_a_rank_pattern() -> None:
    config = MethodConfig("lora", rank=9, layer_ranks=(8, 8, 8, 9, 9, 9))
    params = trial_params(config, count_params(config, MINILM_L6), BUDGET)
    assert params["layer_ranks"] == "8,8,8,9,9,9" and params["fusion"] is None
    assert method_config_from_params(params, num_labels=2, head="mean") == config
    fused = MethodConfig("lora_fusion", sources=SOURCES[:2], fusion_layers=(4, 5), layers=(5,))
    params = trial_params(fused, count_params(fused, MINILM_L6), BUDGET)
    assert (params["sources"], params["fusion_layers"]) == ("glue/sst2,newsgroups/bydate", "4,5")
    assert method_config_from_params(params, num_labels=2, head="mean") == fused


def test_methods_space_samples_each_matched_method_for_e1() -> None:
    methods = ("lora", "pfeiffer", "fusion", "lora_fusion", "bitfit")
    space = methods_space(methods, shape=MINILM_L6, budget=BUDGET, sources=SOURCES[:2])
    space = pickle.loads(pickle.dumps(space))
    _, sampled = run_study(space, optuna.samplers.TPESampler(seed=0), 40)
    assert {p["method"] for p in sampled} == set(methods)
    for params in sampled:
        assert set(params) == PUBLIC_KEYS
        if params["method"] == "bitfit":  # no knob: its true size, outside the budget's control
            assert params["tolerance"] is None and params["budget_deviation"] < -0.9
            assert constraints(params) == [0.0]
        else:
            assert BUDGET.contains(recount(params)) and constraints(params)[0] <= 0
    with pytest.raises(ConfigError, match="each method once"):
        methods_space(("lora", "lora"), shape=MINILM_L6, budget=BUDGET)


def test_the_startup_is_stratified_over_methods_then_lora_share_bins(
    space: BudgetSplitSpace,
) -> None:
    """Optuna walks each enqueued point to its split; the first points give every method its
    turn in rotation and reach every LoRA-share bin the space has (issue: 904 of 1,000 fusion)."""
    from search_spaces.accounting import LORA_SHARE_BINS, lora_share, share_bin

    points = space.startup_points(30, seed=0)
    assert points == space.startup_points(30, seed=0)  # seeded
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=30))
    for point in points:
        study.enqueue_trial(point)
    strata = []
    for _ in points:
        params = space(study.ask())
        config = method_config_from_params(params, num_labels=2, head="mean")
        counted = BUDGET.params(count_params(config, MINILM_L6))
        strata.append((params["method"], share_bin(lora_share(config, MINILM_L6, counted) or 0)))
    methods = [m for m, _ in strata]
    assert {methods.count(m) for m in ("lora", "fusion", "lora_fusion")} == {10}
    assert len(set(methods[:3])) == 3  # each method once in every three
    every_bin = {label for _, label in LORA_SHARE_BINS}
    assert {b for _, b in space.strata.values()} == every_bin  # the e4 space has all five
    assert {b for _, b in strata[:12]} == every_bin
