"""The studies' search machinery, pure: new config fields, accounting of the new options, rank
growth matched to a budget, the AutoPEFT space, and the choices/per-arm-budget arms."""

from __future__ import annotations

import optuna
import pytest

from search_spaces.accounting import (
    GROWTH_STATE_PARAMS,
    count_params,
    encoder_layer_params,
    lora_params_per_layer,
)
from search_spaces.autopeft_space import SIZE_KNOBS, autopeft_space
from search_spaces.errors import ConfigError
from search_spaces.matching import Budget, match_budget
from search_spaces.method_config import AUTOPEFT_MODULES, MethodConfig
from search_spaces.shapes import BERT_BASE, MINILM_L6, TINY_BERT
from search_spaces.spaces import method_config_from_params, method_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_new_fields_round_trip_through_set_strings_and_params() -> None:
    config = MethodConfig.from_dict({
        "method": "lora_fusion", "sources": "a,b", "layers": "4,5", "fusion_init": "similarity",
        "source_similarity": "0.52,0.38", "lora_placement_rule": "fusion_entropy",
    })  # fmt: skip
    assert config.source_similarity == (0.52, 0.38) and config.layers == (4, 5)
    assert MethodConfig.from_dict(config.to_dict()) == config
    space = method_space("lora_fusion", shape=MINILM_L6, budget=None, **{
        k: v for k, v in config.to_dict().items() if k not in ("method", "num_labels", "head")})  # fmt: skip
    assert space.params["source_similarity"] == "0.52,0.38"
    rebuilt = method_config_from_params(space.params, num_labels=2, head="mean")
    assert rebuilt == config
    modules = MethodConfig.from_dict({"method": "autopeft", "layer_modules": "serial,none"})
    assert modules.layer_modules == ("serial", "none")


@pytest.mark.parametrize(
    ("knobs", "fragment"),
    [
        ({"method": "lora_grow", "rank": 2, "start_rank": 4}, "start_rank=4 must be <= rank=2"),
        ({"method": "lora_grow", "grow_step": 0}, "grow_step=0"),
        ({"method": "lora_fusion", "sources": ("a",), "fusion_init": "cosine"}, "fusion_init="),
        (
            {"method": "lora", "lora_placement_rule": "fusion_entropy"},
            "option of method='lora_fusion'",
        ),
        ({"method": "fusion", "sources": ("a",), "source_similarity": (2.0,)}, r"\[-1, 1\]"),
    ],
)
def test_bad_values_name_the_field(knobs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        MethodConfig(**knobs)


def test_accounting_of_the_new_options() -> None:
    d, head = MINILM_L6.hidden, 770
    full_top2 = count_params(MethodConfig("full", layers=(4, 5)), MINILM_L6)
    assert full_top2.trainable_params == 2 * encoder_layer_params(MINILM_L6) + head
    assert 6 * encoder_layer_params(MINILM_L6) < MINILM_L6.backbone_params  # embeddings frozen
    grow = count_params(MethodConfig("lora_grow", rank=8), MINILM_L6)
    lora = count_params(MethodConfig("lora", rank=8), MINILM_L6)
    assert grow.trainable_params == lora.trainable_params  # counted at its largest rank
    assert grow.added_params == lora.added_params + GROWTH_STATE_PARAMS
    modules = ("serial", "parallel", "prefix", "lora", "none", "none")
    auto = MethodConfig("autopeft", layer_modules=modules, prefix_reparam=False, rank=4,
                        bottleneck=8, parallel_bottleneck=16, prefix_length=5)  # fmt: skip
    expected = ((2 * d * 8 + 8 + d) + (2 * d * 16 + 16 + d) + 5 * 2 * d
                + lora_params_per_layer(4, "attn_qv", MINILM_L6) + head)  # fmt: skip
    assert count_params(auto, MINILM_L6).trainable_params == expected


def test_rank_growth_is_matched_from_its_start_rank() -> None:
    config = match_budget("lora_grow", Budget(330_000), MINILM_L6, placement="all", start_rank=2)
    assert config.rank == 8 and config.alpha == 16.0 and config.start_rank == 2
    tiny = match_budget("lora_grow", Budget(1_900), TINY_BERT, placement="all", start_rank=1)
    assert tiny.rank == 2


def test_autopeft_space_samples_exact_counts_and_only_used_sizes() -> None:
    space = autopeft_space(shape=MINILM_L6, prefix_reparam=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_modules = set()
    for _ in range(60):
        params = space(study.ask())
        config = method_config_from_params(params, num_labels=2, head="mean")
        assert count_params(config, MINILM_L6).trainable_params == params["trainable_params"]
        modules = params["layer_modules"].split(",")
        assert len(modules) == 6 and set(modules) != {"none"}
        seen_modules |= set(modules)
        for kind, knob in SIZE_KNOBS.items():
            assert (params[knob] is None) == (kind not in modules)
    assert seen_modules == set(AUTOPEFT_MODULES)


def test_autopeft_space_with_baselines_and_bad_sizes() -> None:
    lora = method_space("lora", shape=TINY_BERT, budget=None, rank=2)
    space = autopeft_space(shape=TINY_BERT, baselines={"lora rank=2": lora})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    methods = {space(study.ask())["method"] for _ in range(20)}
    assert methods == {"autopeft", "lora"}
    with pytest.raises(ConfigError, match="autopeft size knob"):
        autopeft_space(shape=TINY_BERT, sizes={"width": (4,)})
    with pytest.raises(ConfigError, match="positive integers"):
        autopeft_space(shape=TINY_BERT, sizes={"rank": ()})
    with pytest.raises(ConfigError, match="placement='all'"):
        autopeft_space(shape=BERT_BASE, placement="all")


def test_arms_keep_their_sizes_or_take_their_own_budget() -> None:
    from tuner.space import Arms, ChoicesSpace, arm_label

    common = {"num_labels": 2, "head": "mean"}
    fixed = Arms(TINY_BERT, None, (), common, {}, target="glue/sst2", backbone="tiny-bert")
    assert fixed.space({"method": "lora", "rank": 3}).params["rank"] == 3
    matched = Arms(TINY_BERT, Budget(7_200), (), common, {}, target="glue/sst2",
                   backbone="tiny-bert")  # fmt: skip
    small = matched.grid_arm({"method": "lora", "placement": "all", "budget_params": 1_900,
                              "seed": 2}, 1e-3)  # fmt: skip
    assert small["lr"] == 1e-3
    assert small["budget_params"] == 1_900 and small["rank"] == 2 and small["seed"] == 2
    assert abs(small["budget_deviation"]) <= 0.05
    arms = {arm_label(a): fixed.space(a) for a in ({"method": "lora", "rank": 2},
                                                   {"method": "houlsby", "bottleneck": 4})}  # fmt: skip
    assert list(arms) == ["lora rank=2", "houlsby bottleneck=4"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    picked = {ChoicesSpace(arms)(study.ask())["method"] for _ in range(12)}
    assert picked == {"lora", "houlsby"}
