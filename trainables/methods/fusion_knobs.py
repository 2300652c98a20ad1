"""The hybrid's novelty knobs (study plan, section 9), options of ``lora_fusion``:

* **Task-similarity guided fusion** (``fusion_init="similarity"``): each fusion layer's attention
  over its adapters gets a fixed prior, ``softmax(scores / T + log w)``, with ``w`` the sources'
  cosine similarity to the target (``source_similarity``, measured by the study from the data:
  :mod:`trainables.similarity`), floored at :data:`SIMILARITY_FLOOR` and normalised; a target
  adapter counts as similarity 1. At initialisation the scores are near zero, so fusion starts
  from ``w`` instead of uniform; the learned scores can still overrule it. No parameters.
* **Fusion-aware LoRA placement** (``lora_placement_rule="fusion_entropy"``): the LoRA goes to
  the ``k = len(layers)`` fused layers whose fusion attention entropy is highest. For the first
  :data:`WARMUP_FRACTION` of the training steps only the fusion trains while every fused layer's
  attention entropy is averaged; then (``step_hook``) the k LoRA slots are placed on the k
  highest-entropy layers (ties: upper layers first) and train from there on. The slots are
  allocated at build time, so the trainable count equals the fixed rule's for the same k, exactly;
  the measured entropies and the chosen layers are a frozen record saved with the weights.

Both hook into adapters 1.3.0's ``BertFusion``, whose only use of its ``dropout`` is on the
attention scores right before the softmax: a forward hook there sees (and may shift) the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from adapters.composition import Fuse
from adapters.methods.bottleneck import BottleneckLayer
from adapters.methods.modeling import BertFusion
from torch import nn

from search_spaces.accounting import linear_shape, method_layers
from search_spaces.errors import ConfigError
from search_spaces.method_config import PLACEMENTS, MethodConfig
from search_spaces.shapes import BackboneShape
from trainables.methods.extended import ExtendedEncoder
from trainables.methods.lora import MODULE_PATHS
from trainables.methods.registry import BuildContext
from trainables.model import MethodHooks

SIMILARITY_FLOOR = 0.01  # a source at or below zero similarity keeps a small weight, not -inf
WARMUP_FRACTION = 0.1  # share of the training steps that measure entropy before LoRA is placed
UNASSIGNED = -1.0


def fusion_layers_of(bert: nn.Module, fuse: Fuse) -> dict[int, BertFusion]:
    """The learned fusion layers of ``fuse``, by encoder layer (UniformFusion layers excluded)."""
    found: dict[int, BertFusion] = {}
    for index, layer in bert.iter_layers():
        for module in layer.modules():
            if isinstance(module, BottleneckLayer) and fuse.name in module.adapter_fusion_layer:
                fusion = module.adapter_fusion_layer[fuse.name]
                if isinstance(fusion, BertFusion):
                    found[index] = fusion
    return found


def similarity_log_prior(config: MethodConfig) -> torch.Tensor:
    """``log w`` over the fused adapters (sources in order, then the target adapter if any)."""
    if config.source_similarity is None:
        raise ConfigError(
            "fusion_init='similarity' needs source_similarity (one cosine per source): the study "
            "measures it from the data (tuner.space, trainables.similarity)"
        )
    sims = [*config.source_similarity, *([1.0] if config.target_bottleneck else [])]
    weights = torch.tensor([max(s, SIMILARITY_FLOOR) for s in sims])
    return torch.log(weights / weights.sum())


def _shift_scores(fusion: BertFusion, module: nn.Module, inputs: Any, scores: torch.Tensor):
    # softmax((scores + T log w) / T) = softmax(scores / T + log w), whatever the temperature
    return scores + fusion.T * fusion.log_prior.to(scores.dtype)


def add_similarity_prior(bert: nn.Module, fuse: Fuse, config: MethodConfig) -> None:
    prior = similarity_log_prior(config)
    for fusion in fusion_layers_of(bert, fuse).values():
        fusion.register_buffer("log_prior", prior.to(fusion.query.weight.device), persistent=False)
        fusion.dropout.register_forward_hook(partial(_shift_scores, fusion))


def _entropy(fusion: BertFusion, scores: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(scores.detach().float() / fusion.T, dim=-1)
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


class LoRASlots(nn.Module):
    """``k`` LoRA modules (adapters' LoRA initialisation and scale) without a layer until the
    warm-up ends, then each on one chosen fused layer.

    ``record`` (frozen, saved): the mean fusion entropy of each fused layer, then the layer of
    each slot (``-1`` while unassigned).
    """

    def __init__(
        self,
        config: MethodConfig,
        shape: BackboneShape,
        fused: tuple[int, ...],
        k: int,
        device: Any,
    ) -> None:
        super().__init__()
        self.fused, self.k = fused, k
        self.modules_of_layer = PLACEMENTS[config.placement]
        self.scaling = config.alpha / config.rank
        self.slots = nn.ModuleList()
        for _ in range(k):
            slot = nn.ParameterDict()
            for module in self.modules_of_layer:
                fan_in, fan_out = linear_shape(module, shape)
                a = nn.Parameter(torch.empty(config.rank, fan_in, device=device))
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                slot[f"{module}_A"] = a
                slot[f"{module}_B"] = nn.Parameter(torch.zeros(fan_out, config.rank, device=device))
            self.slots.append(slot)
        record = torch.cat([torch.zeros(len(fused)), torch.full((k,), UNASSIGNED)])
        self.record = nn.Parameter(record.to(device), requires_grad=False)
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self._cached: tuple[int, dict[int, int]] = (-1, {})

    def assignment(self) -> dict[int, int]:
        """layer -> slot, read from ``record`` only after it changed (loading, placing)."""
        version = self.record._version
        if version != self._cached[0]:
            layers = self.record[len(self.fused) :].tolist()
            placed = {int(layer): j for j, layer in enumerate(layers) if layer != UNASSIGNED}
            self._cached = (version, placed)
        return self._cached[1]

    def measure(self, layer: int, fusion: BertFusion, module: nn.Module, inputs: Any, scores):
        if fusion.training and not self.assignment():
            self._sums[layer] = self._sums.get(layer, 0.0) + _entropy(fusion, scores)
            self._counts[layer] = self._counts.get(layer, 0) + 1

    def place(self) -> None:
        """Put the k slots on the k fused layers of highest mean entropy (upper layers on ties)."""
        mean = {i: float(self._sums[i]) / self._counts[i] if i in self._counts else 0.0
                for i in self.fused}  # fmt: skip
        chosen = sorted(sorted(self.fused, key=lambda i: (mean[i], i), reverse=True)[: self.k])
        with torch.no_grad():
            values = [mean[i] for i in self.fused] + [float(i) for i in chosen]
            self.record.copy_(torch.tensor(values))
        self._sums.clear()
        self._counts.clear()

    def delta(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor | None:
        slot = self.assignment().get(layer)
        if slot is None:
            return None
        params = self.slots[slot]
        return self.scaling * ((x @ params[f"{module}_A"].T) @ params[f"{module}_B"].T)

    def metrics(self) -> dict[str, float]:
        n = len(self.fused)
        values = self.record.tolist()
        out = {f"fusion_entropy_L{i}": values[j] for j, i in enumerate(self.fused)}
        out.update({f"lora_slot{j}_layer": values[n + j] for j in range(self.k)})
        return out


def _apply_slot(slots: LoRASlots, layer: int, module: str, linear: nn.Module, inputs, output):
    delta = slots.delta(layer, module, inputs[0])
    return output if delta is None else output + delta.to(output.dtype)


def add_entropy_placement(
    bert: nn.Module, fuse: Fuse, config: MethodConfig, context: BuildContext
) -> tuple[LoRASlots, Callable[[int], None]]:
    """The LoRA slots, wired to every fused layer, and the step hook that places them."""
    fusions = fusion_layers_of(bert, fuse)
    fused = tuple(sorted(fusions))
    k = len(method_layers(config, context.shape.num_layers))
    slots = LoRASlots(config, context.shape, fused, k, next(bert.parameters()).device)
    for layer, fusion in fusions.items():
        fusion.dropout.register_forward_hook(partial(slots.measure, layer, fusion))
        for module in slots.modules_of_layer:
            linear = bert.encoder.layer[layer].get_submodule(MODULE_PATHS[module])
            linear.register_forward_hook(partial(_apply_slot, slots, layer, module))
    warmup = max(1, round(WARMUP_FRACTION * context.total_steps))

    def step(global_step: int) -> None:  # the 0-based index of the step just taken
        if global_step + 1 >= warmup and not slots.assignment():
            slots.place()

    return slots, step


def with_fusion_knobs(
    bert: nn.Module, config: MethodConfig, context: BuildContext, fuse: Fuse, hooks: MethodHooks
) -> tuple[nn.Module, MethodHooks]:
    """Apply the config's novelty knobs to a built fusion model; unchanged when both are off."""
    if config.fusion_init == "similarity":
        add_similarity_prior(bert, fuse, config)
    if config.lora_placement_rule != "fusion_entropy":
        return bert, hooks
    slots, step = add_entropy_placement(bert, fuse, config, context)
    hooks = MethodHooks(regularization=hooks.regularization, step=step, metrics=slots.metrics)
    return ExtendedEncoder(bert, lora_slots=slots), hooks


__all__ = [
    "SIMILARITY_FLOOR", "WARMUP_FRACTION", "LoRASlots", "add_entropy_placement",
    "add_similarity_prior", "fusion_layers_of", "similarity_log_prior", "with_fusion_knobs",
]  # fmt: skip
