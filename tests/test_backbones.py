"""The backbone registry and ``load_backbone``: offline, fast, BERT only, ConfigError otherwise."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from search_spaces.errors import ConfigError
from search_spaces.shapes import BERT_BASE, MINILM_L6
from trainables.backbones import BACKBONES, backbone_param_count, load_backbone

os.environ["HF_HUB_OFFLINE"] = "1"  # the hub does not answer here; fail fast instead of retrying


def test_registry_names_and_test_only_tiny_bert() -> None:
    assert {"minilm-l6", "tiny-bert", "bert-base"} <= set(BACKBONES.names())
    assert "TESTS ONLY" in BACKBONES.get("tiny-bert").description


def test_minilm_loads_pretrained_fast_with_sdpa() -> None:
    load_backbone("minilm-l6")  # warm the tokenizer cache, as a Ray worker's second trial would
    started = time.perf_counter()
    backbone = load_backbone("minilm-l6")
    assert time.perf_counter() - started < 10.0  # generous: the machine is shared
    assert backbone.shape == MINILM_L6 and backbone.pretrained
    assert backbone.model.config._attn_implementation == "sdpa"
    assert backbone_param_count(backbone.model) == MINILM_L6.backbone_params
    assert backbone.model.pooler is not None  # kept for head="cls"
    ids = backbone.tokenizer("a short sentence", return_tensors="pt")
    out = backbone.model(**ids).last_hidden_state
    assert out.shape == (1, ids["input_ids"].shape[1], MINILM_L6.hidden)


def test_each_load_is_a_fresh_model() -> None:
    first, second = load_backbone("minilm-l6"), load_backbone("minilm-l6")
    assert first.model is not second.model


def test_tiny_bert_is_deterministic_and_covers_the_tokenizer() -> None:
    first, second = load_backbone("tiny-bert"), load_backbone("tiny-bert")
    assert first.shape.vocab == 30522 == len(first.tokenizer)
    for (name, a), (_, b) in zip(
        first.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    rng_before = torch.random.get_rng_state()
    load_backbone("tiny-bert")
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_bert_base_on_meta_device() -> None:
    backbone = load_backbone("bert-base", meta=True)
    assert backbone.shape == BERT_BASE
    assert {p.device.type for p in backbone.model.parameters()} == {"meta"}
    assert backbone_param_count(backbone.model) == BERT_BASE.backbone_params


def test_local_folder_loads(tmp_path: Path) -> None:
    folder = Path(BACKBONES.get("minilm-l6").folder())
    backbone = load_backbone(str(folder), meta=True)
    assert backbone.shape == MINILM_L6


def test_unknown_names_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"not registered \(bert-base, minilm-l6, tiny-bert\) and not a folder$"
    ):
        load_backbone(str(tmp_path / "missing"))
    # the tests run with HF_HUB_OFFLINE=1 (conftest): a hub id is refused without asking the hub
    with pytest.raises(ConfigError, match=r"Hub is out of reach \(HF_HUB_OFFLINE is set\)"):
        load_backbone("someone/not-a-model")


def test_non_bert_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ConfigError, match="model_type='roberta'"):
        load_backbone(str(tmp_path), meta=True)
