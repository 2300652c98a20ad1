"""count_params against hand-checked reference values and against the models actually built."""

from __future__ import annotations

import os

import pytest

from search_spaces.accounting import (
    ParamCount,
    count_params,
    fusion_params_per_layer,
    head_params,
    lora_params_per_layer,
    prefix_params,
)
from search_spaces.errors import ConfigError
from search_spaces.method_config import AUTOPEFT_MODULES, METHODS, PLACEMENTS, MethodConfig
from search_spaces.shapes import BERT_BASE, MINILM_L6

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCES = ("glue/sst2", "newsgroups/bydate")


def cfg(method: str, **knobs: object) -> MethodConfig:
    if method in ("fusion", "lora_fusion"):
        knobs.setdefault("sources", SOURCES)
    return MethodConfig(method=method, **knobs)


# --- reference values (MiniLM, num_labels=2, head=mean: head = Linear(384, 2) = 770) -------------


def test_minilm_reference_values() -> None:
    assert head_params(cfg("lora"), MINILM_L6) == 770
    assert count_params(cfg("lora"), MINILM_L6).trainable_params == 74_498
    assert count_params(cfg("pfeiffer", bottleneck=24), MINILM_L6).trainable_params == 113_810
    assert count_params(cfg("fusion", fusion="dynamic"), MINILM_L6).trainable_params == 2_659_586


@pytest.mark.parametrize("num_sources", [1, 2, 5])
def test_static_fusion_ignores_number_of_sources(num_sources: int) -> None:
    config = cfg("fusion", fusion="static", sources=tuple(f"s{i}" for i in range(num_sources)))
    count = count_params(config, MINILM_L6)
    assert count.trainable_params == 1_774_850
    # the frozen sources are stored: one Pfeiffer adapter (2*384*24 + 24 + 384) per layer each
    assert count.added_params == 1_774_850 + num_sources * 6 * 18_840


def test_cls_head_adds_the_trainable_pooler() -> None:
    mean = count_params(cfg("lora"), MINILM_L6)
    cls = count_params(cfg("lora", head="cls"), MINILM_L6)
    assert cls.trainable_params - mean.trainable_params == 384 * 384 + 384
    assert cls.added_params - mean.added_params == 384 * 384 + 384


def test_fusion_layer_size_is_2d2_or_3d2_plus_2d() -> None:
    d = MINILM_L6.hidden
    assert fusion_params_per_layer("static", MINILM_L6) == 2 * d * d + 2 * d
    assert fusion_params_per_layer("dynamic", MINILM_L6) == 3 * d * d + 2 * d


def test_prefix_trains_the_mlp_but_stores_the_flat_prefix() -> None:
    # the adapters default (30 positions) on BERT-base: ~9.9M trained, ~0.55M stored
    trainable, stored = prefix_params(30, 12, BERT_BASE, reparam=True)
    assert stored == 30 * 12 * 2 * 768 == 552_960
    assert 9_800_000 < trainable < 9_900_000
    assert prefix_params(30, 12, BERT_BASE, reparam=False) == (stored, stored)


def test_lora_per_layer_arithmetic() -> None:
    d, i = MINILM_L6.hidden, MINILM_L6.intermediate
    assert lora_params_per_layer(8, "attn_qv", MINILM_L6) == 2 * 8 * 2 * d
    assert lora_params_per_layer(8, "ffn", MINILM_L6) == 2 * 8 * (d + i)
    assert lora_params_per_layer(8, "all", MINILM_L6) == 4 * 8 * 2 * d + 2 * 8 * (d + i)


def test_layer_ranks_sum_per_layer() -> None:
    config = cfg("lora", layer_ranks=(0, 2, 4, 0, 8, 16))
    expected = sum(lora_params_per_layer(r, "attn_qv", MINILM_L6) for r in (2, 4, 8, 16)) + 770
    assert count_params(config, MINILM_L6) == ParamCount(expected, expected)


def test_layers_restrict_adapters() -> None:
    every = count_params(cfg("houlsby"), MINILM_L6).trainable_params - 770
    two = count_params(cfg("houlsby", layers=(0, 5)), MINILM_L6).trainable_params - 770
    assert two * 3 == every


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (cfg("unipelt", placement="attn_all"), "placement='attn_all'"),
        (cfg("lora_fusion", placement="all"), "placement='all'"),
        (cfg("lora_fusion", layer_ranks=(2, 4, 0, 0, 0, 0)), "mixes ranks"),
        (cfg("adalora", layer_ranks=(2, 4, 0, 0, 0, 0)), "layer_ranks"),
        (cfg("unipelt", layer_ranks=(8, 8, 0, 0, 0, 0)), "layer_ranks"),
        (cfg("lora", layer_ranks=(0,) * 6), "no layer"),
        (cfg("lora", layer_ranks=(8,) * 5), "5 entries"),
        (cfg("lora", layers=(6,)), "layer 6"),
        (cfg("fusion", fusion_layers=(9,)), "layer 9"),
    ],
)
def test_configs_the_backbone_cannot_carry_raise(config: MethodConfig, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        count_params(config, MINILM_L6)


# --- the prediction equals the built model, method x options x shape -----------------------------


def _variants() -> list[tuple[str, dict[str, object]]]:
    """(id, knobs): every method at its defaults plus the options that change its size."""
    per_method: dict[str, list[dict[str, object]]] = {
        "full": [{"num_labels": 20}, {"layers": (1,), "head": "cls"}],
        "bitfit": [{"head": "cls", "num_labels": 1}],
        "lora": [
            *({"placement": p} for p in PLACEMENTS),
            {"layers": (0,), "rank": 3},
            {"layer_ranks": "pattern", "placement": "all"},
            {"head": "cls", "num_labels": 20},
        ],
        "adalora": [{"placement": "all", "init_rank": 6, "rank": 2}, {"layers": (1,)}],
        "houlsby": [{"bottleneck": 7}, {"layers": (0,), "num_labels": 1}],
        "pfeiffer": [{"bottleneck": 100}, {"layers": (1,), "head": "cls"}],
        "prefix": [{"prefix_reparam": False}, {"prefix_length": 5, "layers": (0,)}],
        "unipelt": [
            {"placement": "ffn", "prefix_reparam": False},
            {"placement": "attn_qv_ffn"},
            {"layers": (1,), "bottleneck": 5},
        ],
        "fusion": [
            {"fusion": "static"},
            {"fusion_layers": (1,)},
            {"target_bottleneck": 4, "fusion": "static", "sources": ("a",)},
            {"head": "cls", "num_labels": 20, "sources": ("a", "b", "c")},
        ],
        "lora_fusion": [
            {"placement": "ffn", "fusion": "static"},
            {"placement": "attn_qv_ffn", "rank": 3},
            {"layers": (0,), "fusion_layers": (1,), "target_bottleneck": 6},
            {"layer_ranks": "uniform"},
            {
                "layers": (1,),
                "lora_placement_rule": "fusion_entropy",
                "fusion_init": "similarity",
                "source_similarity": (0.9, 0.1),
                "target_bottleneck": 4,
            },
            {"layers": (0, 1), "placement": "ffn", "lora_placement_rule": "fusion_entropy"},
        ],
        "lora_grow": [
            {"placement": "all", "rank": 4, "start_rank": 1},
            {"layers": (0,), "head": "cls"},
        ],
        "autopeft": [
            {"layer_modules": "mixed", "prefix_reparam": False},
            {"layer_modules": "mixed+2", "placement": "ffn", "num_labels": 1},
        ],
    }
    out = [(m, {}) for m in METHODS]
    for method, options in per_method.items():
        out += [(method, knobs) for knobs in options]
    return out


def _resolve(method: str, knobs: dict[str, object], num_layers: int) -> MethodConfig:
    knobs = dict(knobs)
    if knobs.get("layer_ranks") == "pattern":  # mixed ranks with a gap, any depth
        knobs["layer_ranks"] = tuple((i % 3) * 2 for i in range(num_layers))
    elif knobs.get("layer_ranks") == "uniform":  # one rank, layers skipped
        knobs["layer_ranks"] = tuple(4 if i % 2 else 0 for i in range(num_layers))
    if str(knobs.get("layer_modules", "")).startswith("mixed"):  # every module type in turn
        offset = int(str(knobs["layer_modules"]).partition("+")[2] or 0)
        knobs["layer_modules"] = tuple(
            AUTOPEFT_MODULES[(i + offset) % len(AUTOPEFT_MODULES)] for i in range(num_layers)
        )
    return cfg(method, **knobs)


VARIANTS = _variants()
BACKBONES = [("tiny-bert", False), ("minilm-l6", True), ("bert-base", True)]


@pytest.mark.parametrize(("backbone", "meta"), BACKBONES, ids=[b for b, _ in BACKBONES])
@pytest.mark.parametrize(
    ("method", "knobs"),
    VARIANTS,
    ids=[f"{m}-{'-'.join(map(str, k.items())) or 'default'}" for m, k in VARIANTS],
)
def test_prediction_equals_built_model(backbone: str, meta: bool, method: str, knobs: dict) -> None:
    from trainables.backbones import load_backbone
    from trainables.methods import build_model

    loaded = load_backbone(backbone, meta=meta)
    config = _resolve(method, knobs, loaded.shape.num_layers)
    predicted = count_params(config, loaded.shape)
    model = build_model(config, loaded)
    built_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    built_total = sum(p.numel() for p in model.parameters())
    assert built_trainable == predicted.trainable_params
    assert model.trainable_params() == predicted.trainable_params
    assert model.added_params() == predicted.added_params
    assert model.backbone_params() == loaded.shape.backbone_params
    if not (method in ("prefix", "unipelt", "autopeft") and config.prefix_reparam):
        # no flattening adjustment: added is literally (built total - backbone)
        assert built_total - loaded.shape.backbone_params == predicted.added_params
