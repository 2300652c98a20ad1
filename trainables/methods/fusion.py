"""AdapterFusion over frozen source adapters, alone (``fusion``) or under a trainable LoRA
(``lora_fusion``: adapters' ``Stack(lora, Fuse(*sources))``), and the source adapters' files.

``fusion_layers`` sets the fusion depth. adapters builds a fusion layer in every layer whatever
``leave_out`` says, so the builder replaces the fusion layers outside ``fusion_layers`` by
:class:`UniformFusion`: a parameter-free average of the fused adapters, which is what a fusion
layer computes when its attention is uniform (static fusion with equal scores; dynamic fusion with
its value matrix at its identity initialisation). Those layers keep the sources' knowledge but
learn no mixing, and hold no fusion parameters at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from adapters import SeqBnConfig
from adapters.composition import Fuse, Stack
from adapters.methods.bottleneck import BottleneckLayer
from torch import nn

from search_spaces.accounting import bottleneck_adapter_params
from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.methods.adapters_common import (
    init_adapters,
    lora_config,
    quiet_activation,
    reduction_factor,
)
from trainables.methods.bottleneck import ADAPTER_NAME
from trainables.methods.fusion_knobs import fusion_layers_of, with_fusion_knobs
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks

LORA_NAME = "target_lora"
TARGET_NAME = "target_adapter"
SOURCE_PREFIX = "src_"  # adapter names must be identifiers: "glue/sst2" -> "src_glue_sst2"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"  # adapters' SAFE_WEIGHTS_NAME
PICKLE_WEIGHTS_FILE = "pytorch_adapter.bin"  # adapters' WEIGHTS_NAME: refused


class UniformFusion(nn.Module):
    """The fusion of a layer outside ``fusion_layers``: mean of the adapters' outputs + residual.

    Same call signature as adapters' ``BertFusion``; no parameters and no ``value`` attribute, so
    adapters' fusion regularisation skips it.
    """

    def forward(self, query, key, value, residual, output_attentions: bool = False):
        context = value.mean(dim=2) + residual  # value: [batch, tokens, adapters, hidden]
        if output_attentions:
            uniform = torch.full(value.shape[:3], 1.0 / value.shape[2])
            return context, uniform.numpy()
        return context


def source_adapter_name(task: str) -> str:
    """The adapters-side name of a source task's adapter."""
    return SOURCE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", task)


def source_adapter_config(bottleneck: int, hidden: int) -> SeqBnConfig:
    """Source adapters are Pfeiffer adapters in every layer, as in the AdapterFusion paper."""
    return SeqBnConfig(reduction_factor=reduction_factor(hidden, bottleneck))


def save_source_adapter(model: nn.Module, name: str, path: str | Path) -> Path:
    """Save the adapter of ``model``, a ``pfeiffer`` :class:`PeftClassifier` trained on source task
    ``name``, to folder ``path`` (adapters' layout, safetensors) for ``build_model(source_adapters=)``.

    Raises ``ConfigError`` unless ``model`` is a pfeiffer model with an adapter in every layer:
    the shape fusion expects of a source.
    """
    config = getattr(model, "config", None)
    if (
        not isinstance(config, MethodConfig)
        or config.method != "pfeiffer"
        or config.layers is not None
    ):
        raise ConfigError(
            f"a source adapter comes from a method='pfeiffer' model with layers unset; got "
            f"{getattr(config, 'method', type(model).__name__)!r}"
        )
    path = Path(path)
    model.encoder.save_adapter(
        str(path), ADAPTER_NAME, meta_dict={"source_task": name}, use_safetensors=True
    )
    return path


def _check_source_folder(task: str, folder: Path) -> None:
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise ConfigError(f"source {task!r}: {str(folder)!r} has no {ADAPTER_CONFIG_FILE}")
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        pickled = (
            " (a pickle: refused, re-save with safetensors)"
            if (folder / PICKLE_WEIGHTS_FILE).exists()
            else ""
        )
        raise ConfigError(
            f"source {task!r}: {str(folder)!r} has no {ADAPTER_WEIGHTS_FILE}{pickled}"
        )


def add_sources(bert: nn.Module, config: MethodConfig, context: BuildContext) -> list[str]:
    """Add one frozen source adapter per ``config.sources``: loaded from ``source_adapters`` when
    given (safetensors only), random otherwise. Returns their adapters-side names."""
    names = [source_adapter_name(task) for task in config.sources]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"sources={','.join(config.sources)!r} collide once made identifiers: {names}"
        )
    given = context.source_adapters
    if given is not None:
        missing = [task for task in config.sources if task not in given]
        if missing:
            raise ConfigError(
                f"source {missing[0]!r} has no adapter folder; available: {', '.join(sorted(given)) or 'none'}"
            )
    expected = context.shape.num_layers * bottleneck_adapter_params(
        config.bottleneck, context.shape
    )
    for task, name in zip(config.sources, names, strict=True):
        if given is None:
            bert.add_adapter(
                name, config=source_adapter_config(config.bottleneck, context.shape.hidden)
            )
            continue
        folder = Path(given[task])
        _check_source_folder(task, folder)
        bert.load_adapter(str(folder), load_as=name, use_safetensors=True)
        size = sum(p.numel() for n, p in bert.named_parameters() if f".{name}." in n)
        if size != expected:
            raise ConfigError(
                f"source {task!r} at {str(folder)!r} has {size:,} parameters; bottleneck="
                f"{config.bottleneck} expects {expected:,} (a Pfeiffer adapter in every layer)"
            )
    return names


def restrict_fusion(bert: nn.Module, fuse: Fuse, fused: tuple[int, ...]) -> None:
    """Replace the fusion layers outside ``fused`` by :class:`UniformFusion`."""
    for index, layer in bert.iter_layers():
        for module in layer.modules():
            if (
                isinstance(module, BottleneckLayer)
                and fuse.name in module.adapter_fusion_layer
                and index not in fused
            ):
                module.adapter_fusion_layer[fuse.name] = UniformFusion()


def identity_pull(bert: nn.Module, fuse: Fuse) -> Callable[[], torch.Tensor | None]:
    """Dynamic fusion's regulariser: ``0.01 * ||I - W_value||^2`` summed over the trainable value
    matrices, as adapters' ``get_fusion_regularization_loss``, which builds the identity on the
    host and copies it over every step (a wait for the host: no CUDA graph). Here the identity is
    made on the weights' device, once per device and dtype."""
    values = [f.value.weight for f in fusion_layers_of(bert, fuse).values() if hasattr(f, "value")]
    eyes: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def pull() -> torch.Tensor | None:
        loss = None
        for weight in values:
            if not weight.requires_grad:
                continue
            key = (weight.device, weight.dtype)
            if key not in eyes:
                eyes[key] = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
            term = 0.01 * (eyes[key] - weight).pow(2).sum()
            loss = term if loss is None else loss + term
        return loss

    return pull


def _unfreeze(bert: nn.Module, name: str) -> None:
    bert.apply_to_adapter_layers(lambda _, layer: layer.enable_adapters(Stack(name), True, False))


def _build(
    bert: nn.Module, config: MethodConfig, context: BuildContext, *, lora: bool
) -> tuple[nn.Module, MethodHooks]:
    n = context.shape.num_layers
    bert = init_adapters(bert)
    fused = add_sources(bert, config, context)
    if config.target_bottleneck:
        bert.add_adapter(
            TARGET_NAME,
            config=source_adapter_config(config.target_bottleneck, context.shape.hidden),
        )
        fused.append(TARGET_NAME)
    fuse = Fuse(*fused)
    bert.add_adapter_fusion(fuse, config=config.fusion)
    restrict_fusion(bert, fuse, config.fused_layers(n))
    setup = fuse
    # fusion-aware placement brings its own LoRA slots (fusion_knobs), placed after a warm-up
    lora_adapter = lora and config.lora_placement_rule == "fixed"
    if lora_adapter:
        bert.add_adapter(LORA_NAME, config=lora_config(config, n))
        setup = Stack(LORA_NAME, fuse)
    with quiet_activation():
        bert.train_adapter_fusion(setup)  # freezes backbone and every adapter, unfreezes the fusion
    # train_adapter_fusion leaves the target-side modules frozen: the LoRA and the target adapter
    for name in (
        LORA_NAME if lora_adapter else None,
        TARGET_NAME if config.target_bottleneck else None,
    ):
        if name is not None:
            _unfreeze(bert, name)
    bert.eval()
    hooks = MethodHooks(
        regularization=identity_pull(bert, fuse) if config.fusion == "dynamic" else None
    )
    return with_fusion_knobs(bert, config, context, fuse, hooks)


def build_fusion(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """AdapterFusion: trainable attention over frozen source adapters (+ optional target adapter)."""
    return _build(bert, config, context, lora=False)


def build_lora_fusion(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """Trainable LoRA on the target task stacked on a trainable fusion of frozen sources."""
    return _build(bert, config, context, lora=True)


register_method(
    "fusion",
    paper="https://arxiv.org/abs/2005.00247",
    library="adapters",
    builder=build_fusion,
    summary="AdapterFusion: learn to mix frozen source-task adapters per layer",
)
register_method(
    "lora_fusion",
    paper="https://arxiv.org/abs/2005.00247",
    library="adapters",
    builder=build_lora_fusion,
    summary="LoRA (https://arxiv.org/abs/2106.09685) stacked on AdapterFusion over frozen sources",
)
