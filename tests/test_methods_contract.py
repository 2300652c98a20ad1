"""The contract every registered method keeps, checked on the tiny random BERT.

It builds; a forward gives ``[B, num_labels]``; one optimiser step changes only parameters counted
as trainable (and changes some method parameter); the count equals the prediction; saved method
weights reload into a fresh model with identical logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.backbones import load_backbone
from trainables.methods import METHOD_REGISTRY, build_model, save_source_adapter
from trainables.model import PeftClassifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCES = ("glue/sst2", "newsgroups/bydate")
METHOD_NAMES = METHOD_REGISTRY.names()


def config_for(method: str, **knobs: object) -> MethodConfig:
    if method in ("fusion", "lora_fusion"):
        knobs.setdefault("sources", SOURCES)
    return MethodConfig(method=method, **knobs)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row: mean pooling must ignore it
    types = torch.zeros_like(ids)
    return ids, mask, types


def build(config: MethodConfig, **kwargs: object) -> PeftClassifier:
    torch.manual_seed(0)
    return build_model(config, load_backbone("tiny-bert"), **kwargs)


def one_step(model: PeftClassifier) -> None:
    """One SGD step over *all* parameters: frozen ones must stay put because they get no grad."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    ids, mask, types = batch()
    logits = model(ids, mask, types)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
    extra = model.regularization_loss()
    if extra is not None:
        loss = loss + extra
    loss.backward()
    optimizer.step()
    model.step_hook(0)  # after step, before zero_grad: AdaLoRA reads the gradients
    optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_registered_with_paper_and_library(method: str) -> None:
    spec = METHOD_REGISTRY.get(method)
    assert spec.paper.startswith("https://arxiv.org/abs/")
    assert spec.library in ("torch", "peft", "adapters")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_contract(method: str, tmp_path: Path) -> None:
    config = config_for(method)
    model = build(config)
    predicted = count_params(config, model.shape)
    assert (model.trainable_params(), model.added_params()) == (
        predicted.trainable_params,
        predicted.added_params,
    )
    assert f"trainable_params={predicted.trainable_params:,}" in model.describe()
    ids, mask, types = batch()
    assert model(ids, mask, types).shape == (4, config.num_labels)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    one_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:3]}"
    assert changed - {"classifier.weight", "classifier.bias"}, "no method parameter changed"

    logits = model(ids, mask, types)
    path = model.save_method_weights(tmp_path / "method.safetensors")
    fresh = build(config)
    assert not torch.equal(fresh(ids, mask, types), logits)
    fresh.load_method_weights(path)
    assert torch.equal(fresh(ids, mask, types), logits)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_padding_leaves_a_row_as_it_is_alone(method: str) -> None:
    """The [B, 1, T] mask the classifier hands the encoder masks pad tokens for every method
    (prefix tuning extends the mask; fusion attends over adapters of each token; UniPELT's gates
    average over real tokens, trainables/methods/gates.py)."""
    model = build(config_for(method)).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        padded = model(ids, mask, types)[1]
        alone = model(ids[1:2, :6], mask[1:2, :6], types[1:2, :6])[0]
    assert torch.allclose(padded, alone, atol=1e-5), (padded, alone)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_graph_safe_unless_a_hook_changes_what_a_step_computes(method: str) -> None:
    # lora_grow grows its rank between steps; AdaLoRA's hook reads gradients and masks in place
    assert build(config_for(method)).graph_safe == (method != "lora_grow")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_regression_and_cls_head(method: str) -> None:
    config = config_for(method, num_labels=1, head="cls")
    model = build(config)
    ids, mask, types = batch()
    assert model(ids, mask, types).shape == (4, 1)
    assert model.trainable_params() == count_params(config, model.shape).trainable_params


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_merge_agrees_with_unmerged(method: str) -> None:
    model = build(config_for(method, placement="all"))
    with torch.no_grad():  # non-zero updates everywhere (LoRA's B starts at zero)
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_" in name:
                param.normal_(0.0, 0.1)
    ids, mask, types = batch()
    unmerged = model(ids, mask, types)
    model.merge()
    torch.testing.assert_close(model(ids, mask, types), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_refused_for_adapters() -> None:
    with pytest.raises(ConfigError, match="cannot be merged"):
        build(config_for("houlsby")).merge()


@pytest.mark.parametrize("method", ["fusion", "lora_fusion"])
@pytest.mark.parametrize("fusion", ["static", "dynamic"])
def test_fusion_layers_leave_no_fusion_elsewhere(method: str, fusion: str, tmp_path: Path) -> None:
    config = config_for(method, fusion=fusion, fusion_layers=(1,), target_bottleneck=4)
    model = build(config)
    fusion_names = [n for n, _ in model.named_parameters() if "adapter_fusion_layer" in n]
    assert fusion_names and all(".layer.1." in n for n in fusion_names)
    assert model.trainable_params() == count_params(config, model.shape).trainable_params
    one_step(model)
    ids, mask, types = batch()
    logits = model(ids, mask, types)
    fresh = build(config)
    fresh.load_method_weights(model.save_method_weights(tmp_path / "w.safetensors"))
    assert torch.equal(fresh(ids, mask, types), logits)
    assert not [
        n for n, _ in fresh.named_parameters() if "adapter_fusion_layer" in n and ".layer.0." in n
    ]


def test_lora_fusion_trains_lora_fusion_and_target_but_not_sources() -> None:
    model = build(config_for("lora_fusion", target_bottleneck=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("target_lora" in n for n in trainable)
    assert any("adapter_fusion_layer" in n for n in trainable)
    assert any("target_adapter" in n for n in trainable)
    assert not any("src_" in n and "adapter_fusion_layer" not in n for n in trainable)


def test_prefix_flattening_keeps_outputs_and_matches_added() -> None:
    model = build(config_for("prefix"))
    ids, mask, types = batch()
    logits = model(ids, mask, types)
    model.encoder.eject_prefix_tuning("target")
    flat_added = sum(p.numel() for p in model.parameters()) - model.shape.backbone_params
    assert flat_added == count_params(config_for("prefix"), model.shape).added_params
    torch.testing.assert_close(model(ids, mask, types), logits)


def test_source_adapters_round_trip(tmp_path: Path) -> None:
    sources = {}
    for i, task in enumerate(SOURCES):
        donor = build(config_for("pfeiffer", bottleneck=8))
        with torch.no_grad():
            for param in donor.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.1 * (i + 1))
        sources[task] = save_source_adapter(donor, task, tmp_path / task.replace("/", "_"))
    assert not list(tmp_path.rglob("*.bin"))
    config = config_for("fusion", bottleneck=8)
    model = build(config, source_adapters=sources)
    assert model.added_params() == count_params(config, model.shape).added_params
    donor_up = donor.encoder.encoder.layer[1].output.adapters["target"].adapter_up.weight
    fused_up = model.encoder.encoder.layer[1].output.adapters["src_newsgroups_bydate"]
    assert torch.equal(fused_up.adapter_up.weight, donor_up)
    assert not fused_up.adapter_up.weight.requires_grad


def test_source_adapter_errors(tmp_path: Path) -> None:
    config = config_for("fusion", bottleneck=8)
    with pytest.raises(
        ConfigError, match="'newsgroups/bydate' has no adapter folder; available: glue/sst2"
    ):
        build(config, source_adapters={"glue/sst2": tmp_path})
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "pytorch_adapter.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="pickle"):
        build(config, source_adapters={t: pickled for t in SOURCES})
    wrong = save_source_adapter(
        build(config_for("pfeiffer", bottleneck=4)), "x", tmp_path / "wrong"
    )
    with pytest.raises(ConfigError, match="bottleneck=8"):
        build(config, source_adapters={t: wrong for t in SOURCES})
    with pytest.raises(ConfigError, match="pfeiffer"):
        save_source_adapter(build(config_for("houlsby")), "x", tmp_path / "houlsby")


def test_load_refuses_weights_of_another_config(tmp_path: Path) -> None:
    path = build(config_for("lora", rank=4)).save_method_weights(tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="another config"):
        build(config_for("lora", rank=8)).load_method_weights(path)


def test_adalora_step_hook_reallocates_ranks() -> None:
    model = build(config_for("adalora", init_rank=4, rank=1), total_steps=6)
    ids, mask, types = batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for step in range(6):
        torch.nn.functional.cross_entropy(
            model(ids, mask, types), torch.tensor([0, 1, 0, 1])
        ).backward()
        optimizer.step()
        model.step_hook(step)
        optimizer.zero_grad()
    singular = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert sum(int((p == 0).sum()) for p in singular) > 0  # pruned ranks are masked to zero


@pytest.mark.parametrize("method", ["fusion", "lora_fusion"])
def test_dynamic_fusion_pull_is_adapters_regulariser(method: str) -> None:
    """Our identity pull (no host copy: graph-safe) gives adapters' fusion regularisation loss."""
    model = build(config_for(method, fusion="dynamic"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".value." in name and p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    ours, theirs = model.regularization_loss(), model.encoder.get_fusion_regularization_loss()
    assert ours is not None and float(ours.detach()) > 0
    assert torch.allclose(ours, theirs)
    assert build(config_for(method, fusion="static")).regularization_loss() is None


@pytest.mark.parametrize(
    ("method", "knobs", "expected"),
    [("prefix", {}, True), ("unipelt", {}, True), ("lora", {}, False), ("houlsby", {}, False),
     ("autopeft", {"layer_modules": ("lora", "prefix")}, True),
     ("autopeft", {"layer_modules": ("serial", "lora")}, False)],
)  # fmt: skip
def test_prefix_methods_run_forward_on_the_inputs_device(method, knobs, expected) -> None:
    """adapters' prefix tuning makes its position ids and mask on the host each step; on CUDA
    the forward of a model holding prefixes runs with the inputs' device as the default (so the
    step can be graphed: tests/test_graphs.py); the output does not change."""
    model = build(config_for(method, **knobs)).eval()
    assert model._hooks.host_tensors is expected
    ids, mask, types = batch()
    with torch.no_grad():
        plain = model(ids, mask, types)
        with torch.device("cpu"):
            assert torch.equal(model(ids, mask, types), plain)
