"""The methods and options the studies added: rank growth, the hybrid's novelty knobs, AutoPEFT,
top-k full fine-tuning and AdaLoRA's rank report, on the tiny random BERT."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.backbones import load_backbone
from trainables.methods import build_model
from trainables.methods.fusion_knobs import WARMUP_FRACTION, similarity_log_prior
from trainables.model import PeftClassifier
from trainables.ranks import parse_rank_metric, rank_metric, singular_value_ranks

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCES = ("glue/sst2", "newsgroups/bydate")
LABELS = torch.tensor([0, 1, 0, 1])


def build(config: MethodConfig, **kwargs: object) -> PeftClassifier:
    torch.manual_seed(0)
    return build_model(config, load_backbone("tiny-bert"), **kwargs)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (4, 9), generator=generator)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def train_steps(model: PeftClassifier, steps: int, *, lr: float = 0.5, start: int = 0) -> None:
    """SGD over every parameter (frozen ones get no gradient), the loop's hook order; ``start``
    is the global index of the first step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for step in range(start, start + steps):
        loss = torch.nn.functional.cross_entropy(model(*batch(step)), LABELS)
        extra = model.regularization_loss()
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
        model.step_hook(step)
        optimizer.zero_grad()
    model.eval()


# --- lora_grow ----------------------------------------------------------------------------------


def grow_config(**knobs: object) -> MethodConfig:
    return MethodConfig(method="lora_grow", rank=6, start_rank=2, grow_step=2, **knobs)


def test_rank_grows_after_patience_stalls_and_stops_at_the_largest_rank() -> None:
    model = build(grow_config(grow_patience=2))
    assert model.method_metrics() == {"active_rank": 2.0}
    assert model.plateau_hook(1.0) is False  # first loss: an improvement
    assert model.plateau_hook(0.9) is False
    assert model.plateau_hook(0.95) is False  # one stall of two
    assert model.plateau_hook(0.9) is True  # equal is no improvement: second stall, grow
    assert model.method_metrics() == {"active_rank": 4.0}
    assert model.plateau_hook(0.8) is False
    assert [model.plateau_hook(0.85), model.plateau_hook(0.85)] == [False, True]
    assert model.method_metrics() == {"active_rank": 6.0}
    assert [model.plateau_hook(0.9) for _ in range(4)] == [False] * 4  # capped at rank=6
    assert model.plateau_hook(math.nan) is False


def test_growing_keeps_the_function_and_the_trainable_count() -> None:
    config = grow_config(grow_patience=1)
    model = build(config)
    train_steps(model, 3)
    with torch.no_grad():  # non-zero updates in the inactive components too (A already is)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param[:, 2:] = 0.0
    before = model(*batch())
    trainable = model.trainable_params()
    model.plateau_hook(1.0)
    assert model.plateau_hook(1.0) is True
    torch.testing.assert_close(model(*batch()), before)  # new components start with B = 0
    assert (
        model.trainable_params() == trainable == count_params(config, model.shape).trainable_params
    )


def test_inactive_components_get_no_gradient_and_a_checkpoint_keeps_the_grown_rank(
    tmp_path: Path,
) -> None:
    model = build(grow_config())
    loss = torch.nn.functional.cross_entropy(model(*batch()), LABELS)
    loss.backward()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            assert param.grad[:, 2:].abs().sum() == 0 and param.grad[:, :2].abs().sum() > 0
    model.zero_grad()
    model.plateau_hook(1.0)
    model.plateau_hook(2.0)  # a stall with patience 1: grows to 4
    path = model.save_method_weights(tmp_path / "w.safetensors")
    fresh = build(grow_config())
    fresh.load_method_weights(path)
    assert fresh.method_metrics() == {"active_rank": 4.0}
    assert fresh.plateau_hook(1.5) is True  # best loss 1.0 and the stall count came back too


def test_lora_grow_merges_exactly() -> None:
    model = build(grow_config(placement="all"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_" in name:
                param.normal_(0.0, 0.1)
    unmerged = model(*batch())
    model.merge()
    torch.testing.assert_close(model(*batch()), unmerged, atol=1e-5, rtol=1e-5)


def test_plateau_hook_is_a_no_op_elsewhere() -> None:
    model = build(MethodConfig(method="lora"))
    assert model.plateau_hook(1.0) is False and model.plateau_hook(2.0) is False
    assert model.method_metrics() == {}


# --- novelty knobs of lora_fusion ---------------------------------------------------------------


def hybrid(**knobs: object) -> MethodConfig:
    return MethodConfig(method="lora_fusion", sources=SOURCES, fusion="static", **knobs)


def test_similarity_prior_sets_the_initial_fusion_weights() -> None:
    config = hybrid(fusion_init="similarity", source_similarity=(0.6, 0.2))
    torch.testing.assert_close(similarity_log_prior(config).exp(), torch.tensor([0.75, 0.25]))
    model = build(config)
    seen = []
    for module in model.modules():
        if type(module).__name__ == "BertFusion":
            module.dropout.register_forward_hook(
                lambda m, i, out, f=module: seen.append(torch.softmax(out / f.T, -1).mean((0, 1)))
            )
    model(*batch())
    assert len(seen) == 2  # one learned fusion per layer
    for probs in seen:  # query/key start near zero: attention starts at the prior
        torch.testing.assert_close(probs, torch.tensor([0.75, 0.25]), atol=0.02, rtol=0)
    plain = build(hybrid())
    assert plain.trainable_params() == model.trainable_params()


def test_similarity_needs_its_measurement_and_fusion() -> None:
    with pytest.raises(ConfigError, match="source_similarity"):
        build(hybrid(fusion_init="similarity"))
    with pytest.raises(ConfigError, match="needs a fusion method"):
        MethodConfig(method="lora", fusion_init="similarity")
    with pytest.raises(ConfigError, match="2 values for 1 sources"):
        MethodConfig(method="fusion", sources=("a",), source_similarity=(0.1, 0.2))


def test_fusion_entropy_places_lora_after_the_warm_up(tmp_path: Path) -> None:
    config = hybrid(layers=(1,), lora_placement_rule="fusion_entropy")
    total = 20
    model = build(config, total_steps=total)
    fixed = hybrid(layers=(1,))
    assert model.trainable_params() == count_params(fixed, model.shape).trainable_params
    assert model.added_params() == count_params(config, model.shape).added_params
    slots = model.encoder.lora_slots
    assert slots.assignment() == {}
    warmup = round(WARMUP_FRACTION * total)
    train_steps(model, warmup - 1)
    assert slots.assignment() == {}  # not yet: LoRA is off and its slots untouched
    assert all(torch.count_nonzero(p) == 0 for n, p in slots.named_parameters() if n.endswith("_B"))
    train_steps(model, 1, start=warmup - 1)  # the step_hook of step warmup - 1 places them
    placed = slots.assignment()
    metrics = model.method_metrics()
    entropies = [metrics["fusion_entropy_L0"], metrics["fusion_entropy_L1"]]
    highest = max((0, 1), key=lambda i: (entropies[i], i))  # ties go to the upper layer
    assert placed == {highest: 0} and metrics["lora_slot0_layer"] == highest
    assert all(0 < h <= math.log(2) + 1e-6 for h in entropies)
    fresh = build(config, total_steps=total)
    fresh.load_method_weights(model.save_method_weights(tmp_path / "w.safetensors"))
    assert fresh.encoder.lora_slots.assignment() == placed
    torch.testing.assert_close(fresh(*batch()), model(*batch()))


def test_fusion_entropy_needs_k_layers_among_the_fused_ones() -> None:
    with pytest.raises(ConfigError, match="set layers"):
        hybrid(lora_placement_rule="fusion_entropy")
    config = hybrid(layers=(0, 1), fusion_layers=(1,), lora_placement_rule="fusion_entropy")
    with pytest.raises(ConfigError, match="picks 2 LoRA layers among the 1 fused"):
        build(config)


# --- AutoPEFT, top-k full fine-tuning, AdaLoRA ranks --------------------------------------------


def test_autopeft_builds_the_module_each_layer_chose() -> None:
    model = build(MethodConfig(method="autopeft", layer_modules=("parallel", "lora"), rank=2))
    layers = model.encoder.encoder.layer
    assert type(layers[0].output.adapters["target"]).__name__ == "ParallelAdapter"
    assert "target" not in layers[1].output.adapters
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("layer.1.attention.self.query.loras.target" in n for n in names)
    assert not any("layer.0.attention.self.query.loras" in n for n in names)
    with pytest.raises(ConfigError, match="no module in any layer"):
        build(MethodConfig(method="autopeft", layer_modules=("none", "none")))
    with pytest.raises(ConfigError, match="layer_modules entry"):
        MethodConfig(method="autopeft", layer_modules=("serial", "adapter"))


def test_full_with_layers_trains_only_those_layers() -> None:
    model = build(MethodConfig(method="full", layers=(1,)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n or n.startswith("classifier") for n in trainable)
    train_steps(model, 1)


def test_adalora_reports_its_final_ranks_as_metrics_and_in_its_weights(tmp_path: Path) -> None:
    config = MethodConfig(method="adalora", init_rank=4, rank=1, placement="all")
    model = build(config, total_steps=6)
    train_steps(model, 6, lr=0.1)
    metrics = model.method_metrics()
    assert len(metrics) == 2 * 6 and all(0 <= r <= 4 for r in metrics.values())
    assert sum(metrics.values()) < 2 * 6 * 4  # pruned
    saved = load_file(str(model.save_method_weights(tmp_path / "w.safetensors")))
    from_file = singular_value_ranks(saved.items())
    assert {rank_metric(*k): float(v) for k, v in from_file.items()} == metrics
    assert parse_rank_metric(rank_metric(3, "attention.output")) == (3, "attention.output")


def test_source_similarity_is_measured_from_the_data_and_cached(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainables import similarity

    monkeypatch.setenv("PEFT_TUNE_CACHE_DIR", str(tmp_path))
    first = similarity.task_embedding("glue/sst2", "tiny-bert", samples=16, data_dir=data_dir)
    assert first.shape == (32,) and list((tmp_path / "embeddings").glob("*.npy"))
    monkeypatch.setattr(similarity, "_embed", lambda *a: pytest.fail("not read from the cache"))
    cached = similarity.task_embedding("glue/sst2", "tiny-bert", samples=16, data_dir=data_dir)
    np.testing.assert_array_equal(cached, first)
    assert similarity.cosine(first, first) == pytest.approx(1.0)
    assert similarity.cosine(first, -first) == pytest.approx(-1.0)
