"""The method registry and ``build_model``: one entry per PEFT method, registered with one call.

A builder receives the backbone's ``BertModel`` (pooler already removed for ``head="mean"``), the
config and a :class:`BuildContext`; it modifies the model in place, leaves exactly the method's
parameters trainable and returns the encoder to call plus its :class:`MethodHooks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search_spaces.accounting import count_params
from search_spaces.method_config import MethodConfig
from search_spaces.method_facts import METHOD_FACTS, MethodFacts
from search_spaces.registry import Registry
from search_spaces.shapes import BackboneShape
from trainables.backbones import Backbone
from trainables.model import MethodHooks, PeftClassifier
from trainables.quantize import quantize_backbone

LIBRARIES = ("torch", "peft", "adapters")
# AdaLoRA needs its schedule length at build time; a loop that knows better passes total_steps.
DEFAULT_TOTAL_STEPS = 1000


@dataclass(frozen=True)
class BuildContext:
    """What a builder may need beyond the config: the shape and the fusion/AdaLoRA extras."""

    shape: BackboneShape
    source_adapters: Mapping[str, Path] | None
    total_steps: int
    meta: bool


Builder = Callable[[nn.Module, MethodConfig, BuildContext], tuple[nn.Module, MethodHooks]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name in ``MethodConfig.method``, paper, library and builder."""

    name: str
    paper: str
    library: str
    builder: Builder
    summary: str

    @property
    def facts(self) -> MethodFacts:
        """The method's pure facts (accounting, learning rates, knobs, fusability)."""
        return METHOD_FACTS.get(self.name)


METHOD_REGISTRY: Registry[MethodSpec] = Registry("method")


def register_method(
    name: str, *, paper: str, library: str, builder: Builder, summary: str
) -> MethodSpec:
    """Register a method's builder; refuses a method without registered facts
    (``search_spaces/catalog.py``), papers without an https link and unknown libraries, saying
    what is allowed."""
    if name not in METHOD_FACTS:
        raise ValueError(
            f"method {name!r} has no facts: register them in search_spaces/catalog.py first "
            f"(known: {', '.join(METHOD_FACTS.names())})"
        )
    if not paper.startswith("https://"):
        raise ValueError(f"method {name!r}: paper={paper!r} must be an https link to the paper")
    if library not in LIBRARIES:
        raise ValueError(f"method {name!r}: library={library!r} is not one of {LIBRARIES}")
    if not callable(builder):
        raise ValueError(f"method {name!r}: builder={builder!r} is not callable")
    return METHOD_REGISTRY.register(name, MethodSpec(name, paper, library, builder, summary))


def build_model(
    config: MethodConfig,
    backbone: Backbone,
    *,
    source_adapters: Mapping[str, Path] | None = None,
    total_steps: int | None = None,
) -> PeftClassifier:
    """Apply ``config``'s method to ``backbone`` (modified in place: load a fresh one per model).

    ``source_adapters`` maps a source task to a folder saved by ``save_source_adapter`` (fusion
    methods; ``None`` creates random sources). ``total_steps`` is AdaLoRA's schedule length.
    Raises ``ConfigError`` for a config the backbone cannot carry (checked before any work).
    """
    spec = METHOD_REGISTRY.get(config.method)
    count_params(config, backbone.shape)  # validates layers, placement and ranks against the shape
    bert = backbone.model
    if config.head == "mean":
        bert.pooler = None  # unused by mean pooling: no dead parameters in the counts
    quantize_backbone(bert, config.quantize)  # QLoRA: before the ids, so 4-bit weights are backbone
    backbone_ids = frozenset(
        id(p) for n, p in bert.named_parameters() if not n.startswith("pooler.")
    )
    meta = next(bert.parameters()).device.type == "meta"
    context = BuildContext(
        shape=backbone.shape,
        source_adapters=source_adapters,
        total_steps=DEFAULT_TOTAL_STEPS if total_steps is None else total_steps,
        meta=meta,
    )
    with torch.device("meta") if meta else contextlib.nullcontext():
        encoder, hooks = spec.builder(bert, config, context)
        model = PeftClassifier(
            encoder=encoder,
            bert=bert,
            config=config,
            shape=backbone.shape,
            backbone_ids=backbone_ids,
            hooks=hooks,
            library=spec.library,
        )
    return model.eval()  # the loop switches to train(); a fresh model predicts deterministically


__all__ = [
    "BuildContext", "DEFAULT_TOTAL_STEPS", "METHOD_REGISTRY", "MethodSpec", "build_model",
    "register_method",
]  # fmt: skip
