"""Which trials may share one fused model (``--fuse``, the fused pool): pure arithmetic over method
configs, no torch.

A fused model is built from one *template* trial; another trial fits it when its trainable tensors
are the template's, or smaller ones zero-padded into the template's (the padded entries masked to
zero in the forward, so they get zero gradient and stay zero). Padding is exact only along the
knobs :data:`PADDED` lists per method (each method's ``fused_padding`` in its facts), each checked by a test against the trial trained alone
(tests/test_fused.py, tests/test_fused_rows.py); every other knob is part of a trial's
:func:`row_signature`, and trials of different signatures train in different fused groups.

Why each knob pads exactly:

* LoRA ``rank`` / ``layer_ranks`` / ``layers`` / ``placement`` (plain LoRA): a smaller rank is zero
  rows of A and columns of B; a linear without LoRA is both factors zero. ``alpha`` is a per-row
  scale on B (the template's own scale set to 1).
* ``bottleneck`` (houlsby, pfeiffer) and ``target_bottleneck``: a padded unit has zero down
  weights, zero down bias and zero up weights, so it adds nothing. A trial without a target adapter
  (uniform fusion init) is a row whose fusion gives the template's target adapter weight 0, as a
  source it lacks (below).
* ``lora_fusion``'s LoRA ``rank`` / ``layer_ranks`` / ``layers`` / ``placement``: as plain LoRA
  (adapters' LoRA adds ``scale * x A^T B^T`` to the linear; zero factors add zero). Its group's
  template carries LoRA on the linears of every placement of the group (:func:`covering_placement`:
  ``attn_qv_ffn`` for trials on ``attn_qv`` and on ``ffn``).
* ``sources`` of ``fusion`` / ``lora_fusion`` with ``fusion_init="uniform"``: the template fuses the
  union of its group's sources; a row's fusion attention gives the sources it lacks a score of
  ``-inf`` (weight exactly 0), and its parameter-free uniform layers average its own sources only
  (:class:`trainables.fused.rows.FusedRows`). The fusion's parameters do not depend on how many
  adapters it fuses.
* ``fusion_layers`` (uniform init): a layer where the trial has no learned fusion is a template
  fusion layer with query and key zero: every score 0, so the weights are uniform over the row's
  adapters, which is the trial's parameter-free uniform layer; a dynamic template's value matrix
  is the identity there (a row's fixed ``shift``, :class:`trainables.fused.rows.FusedRows`).
* ``fusion`` (uniform init): static fusion is dynamic fusion with its value matrix the identity,
  fixed, and no pull towards it; in a group holding both, the template is dynamic and a static
  row's value matrices are that fixed identity (zero gradient, zero pull).

What never pads: the method, head, labels, a prefix's length and parametrisation (a zero prefix
key still scores 0 against every query and takes softmax mass from the real keys), a bottleneck
adapter's layers (adapters runs the layer's original LayerNorm twice around an adapter: a zero
adapter is not an absent one), the sources' bottleneck, and under a similarity prior the sources,
the fusion type, the fusion layers and the presence of a target adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from search_spaces import catalog  # noqa: F401  (registers every method's facts)
from search_spaces.errors import ConfigError
from search_spaces.formulas import ADAPTERS_LORA_METHODS, ADAPTERS_LORA_PLACEMENTS
from search_spaces.method_config import PLACEMENTS, MethodConfig
from search_spaces.method_facts import METHOD_FACTS

# rows per fused group when tuner.run pools by itself: 16 LoRA trials pooled ran 9.8-10.4x one
# trial (H100, H200; docs/BENCHMARKS.md), 8 only 6.5-6.8x
DEFAULT_SLOTS = 16

# knobs along which a trial zero-pads into a larger template of its group, per fusable method:
# a view of each method's facts (MethodFacts.fused_padding, search_spaces/catalog.py)
PADDED: dict[str, tuple[str, ...]] = {
    name: padding
    for name in METHOD_FACTS
    if (padding := METHOD_FACTS.get(name).fused_padding) is not None
}
ROW_METHODS = tuple(PADDED)  # the methods a fused model can hold
# knobs that never change what a row method's trial computes (training-only, or read by other
# methods: prefix tuning reads its prefix knobs, which are then in its signature)
_IGNORED = ("init_rank", "adalora_scale", "budget_rank", "start_rank", "grow_step",
            "grow_patience", "layer_modules", "parallel_bottleneck", "prefix_length",
            "prefix_reparam")  # fmt: skip


def pads(config: MethodConfig, name: str) -> bool:
    """Whether knob ``name`` of ``config`` pads (or is a union) in its fused group: the knobs of
    :data:`PADDED`; the sources, the target adapter's presence, the fusion layers and the fusion
    type only under the uniform fusion init (a similarity prior is per fused adapter)."""
    if name not in PADDED[config.method]:
        return False
    if (
        name in ("sources", "target_bottleneck", "fusion_layers", "fusion")
        and config.fusion_init != "uniform"
    ):
        return name == "target_bottleneck"  # its size pads, its presence does not
    return True


def row_signature(config: MethodConfig) -> tuple[Any, ...]:
    """What a trial shares with every other trial of its fused group: its method config without
    the knobs that pad (:func:`pads`; under a similarity prior, whether it has a target adapter)."""
    if config.method not in PADDED:
        raise ConfigError(
            f"method={config.method!r} cannot be fused; fusable: {', '.join(ROW_METHODS)}"
        )
    out: list[Any] = []
    knobs = METHOD_FACTS.get(config.method).knobs
    for f in fields(MethodConfig):
        if f.name in _IGNORED and f.name not in knobs:
            continue
        value = getattr(config, f.name)
        if f.name == "target_bottleneck" and config.fusion_init != "uniform":
            value = value > 0
        elif pads(config, f.name):
            value = None
        out.append((f.name, value))
    return tuple(out)


def max_rank(config: MethodConfig) -> int:
    return max((config.rank, *(config.layer_ranks or ())))


def group_template(configs: Iterable[MethodConfig]) -> MethodConfig:
    """The method config of a group's template: the first config with every padded size at the
    group's largest, LoRA on every layer and on the linears of every placement of the group,
    dynamic fusion where any trial's is."""
    configs = list(configs)
    first = configs[0]
    if len({row_signature(c) for c in configs}) != 1:
        raise ConfigError("one fused group holds trials of one row signature only")
    template = row_limits(configs).template(first)
    if "rank" not in PADDED[first.method]:
        return template
    placements = {c.placement for c in configs}  # LoRA on every layer, one placement or several
    return template.replace(layers=None, placement=covering_placement(first.method, placements))


def covering_placement(method: str, placements: Iterable[str]) -> str:
    """The placement of ``method`` with the fewest linears that holds every one of ``placements``':
    the LoRA linears of a fused group's template (a trial's other linears are zero factors)."""
    placements = set(placements)
    allowed = ADAPTERS_LORA_PLACEMENTS if method in ADAPTERS_LORA_METHODS else tuple(PLACEMENTS)
    covering = [p for p in allowed if holds(p, placements)]
    if not covering:
        raise ConfigError(f"no placement of method={method!r} holds the linears of "
                          f"{', '.join(sorted(placements))}; its placements: "
                          f"{', '.join(allowed)}")  # fmt: skip
    return min(covering, key=lambda p: len(PLACEMENTS[p]))


def holds(outer: str, placements: Iterable[str]) -> bool:
    """Whether placement ``outer`` has LoRA on every linear of each of ``placements``."""
    return {m for p in placements for m in PLACEMENTS[p]} <= set(PLACEMENTS[outer])


def union_sources(configs: Iterable[MethodConfig]) -> tuple[str, ...]:
    """Every source the configs fuse, sorted: the sources of their groups' templates."""
    return tuple(sorted({s for c in configs for s in c.sources}))


def union_fusion_layers(configs: Iterable[MethodConfig]) -> tuple[int, ...] | None:
    """Every layer the configs fuse at, sorted; None (every layer) where one of them fuses at
    every layer, or there are none: the fusion layers of their groups' templates."""
    layers = [c.fusion_layers for c in configs]
    if not layers or None in layers:
        return None
    return tuple(sorted({n for each in layers if each is not None for n in each}))


def count_groups(configs: Iterable[MethodConfig]) -> dict[str, int]:
    """How many fused groups (row signatures) ``configs`` fall into, per method."""
    seen: dict[str, set[tuple[Any, ...]]] = {}
    for config in configs:
        seen.setdefault(config.method, set()).add(row_signature(config))
    return {method: len(signatures) for method, signatures in sorted(seen.items())}


@dataclass(frozen=True)
class RowLimits:
    """The largest sizes one method's rows hold in a pool (smaller trials pad into them): LoRA
    ``rank``, the ``bottleneck`` of a trainable bottleneck adapter and ``target_bottleneck``
    (None: the first trial's of its group), LoRA's ``placement`` (None: the first trial's), the
    fusion ``sources`` a row may fuse (None: the first trial's), the ``fusion_layers`` a row may
    learn its fusion at (None: every layer), and the ``fusion`` type ("dynamic" holds static
    trials too; None: the first trial's, and a dynamic trial does not fit a static group:
    :func:`trainables.fused.rows.check_rows` refuses it)."""

    rank: int = 16
    bottleneck: int | None = None
    target_bottleneck: int | None = None
    placement: str | None = None
    sources: tuple[str, ...] | None = None
    fusion: str | None = None
    fusion_layers: tuple[int, ...] | None = None

    def template(self, method: MethodConfig) -> MethodConfig:
        """The method config of the template of ``method``'s group, raised to these limits."""
        padded = PADDED[method.method]
        changes: dict[str, Any] = {}
        if "rank" in padded:
            changes.update(rank=self.rank, layer_ranks=None)
            if method.method != "lora" or self.placement is not None:
                changes["layers"] = None
            if self.placement is not None:
                changes["placement"] = self.placement
        for name in ("bottleneck", "target_bottleneck"):
            limit, present = getattr(self, name), getattr(method, name) > 0
            if pads(method, name) and limit is not None and (present or unions_adapters(method)):
                changes[name] = limit
        if pads(method, "sources") and self.sources:
            changes["sources"] = self.sources
        if pads(method, "fusion_layers"):  # a trial's layers outside its own: zero-score ones
            changes["fusion_layers"] = self.fusion_layers
        if pads(method, "fusion") and self.fusion is not None:
            changes["fusion"] = self.fusion  # a static row's value matrices: the identity
        return method.replace(**changes)

    def refuse(self, method: MethodConfig) -> None:
        """Refuse, naming the size, a trial larger than these limits."""
        padded, rank = PADDED[method.method], max_rank(method)
        if "rank" in padded and rank > self.rank:
            raise ConfigError(f"the fused pool takes LoRA trials of rank <= {self.rank}, not "
                              f"method={method.method!r} rank={rank}")  # fmt: skip
        placement = self.placement if "placement" in padded else None
        if placement is not None and not holds(placement, [method.placement]):
            raise ConfigError(f"the fused pool's {method.method} rows hold LoRA on "
                              f"placement={placement!r}, which lacks some linears of "
                              f"placement={method.placement!r}")  # fmt: skip
        for name in ("bottleneck", "target_bottleneck"):
            limit, value = getattr(self, name), getattr(method, name)
            if name in padded and limit is not None and value > limit:
                raise ConfigError(f"the fused pool takes {name} <= {limit}, not {name}={value}")
        if "sources" in padded and self.sources is not None:
            extra = sorted(set(method.sources) - set(self.sources))
            if extra:
                raise ConfigError(f"the fused pool's rows fuse sources {','.join(self.sources)}, "
                                  f"not {extra[0]!r}")  # fmt: skip
        layers, own = self.fusion_layers, method.fusion_layers
        outside = own is None or not set(own) <= set(layers or ())
        if pads(method, "fusion_layers") and layers is not None and outside:
            named = "every layer" if own is None else ",".join(map(str, own))
            raise ConfigError(f"the fused pool's rows fuse at {_layers(layers)}, not "
                              f"fusion_layers={named}")  # fmt: skip

    def describe(self, method: str) -> str:
        """What ``method``'s rows hold, in words: ``LoRA rank 65 on every linear``, ..."""
        padded, parts = PADDED[method], []
        if "rank" in padded:
            where = {None: "", "all": " on every linear"}.get(
                self.placement, f" on {self.placement}"
            )
            parts.append(f"LoRA rank {self.rank}{where}")
        parts += [f"{name} {getattr(self, name)}" for name in ("bottleneck", "target_bottleneck")
                  if name in padded and getattr(self, name)]  # fmt: skip
        if self.fusion == "dynamic" and "fusion" in padded:
            parts.append("static fusion as dynamic")
        if self.fusion_layers and "fusion_layers" in padded:
            parts.append(f"fusion at {_layers(self.fusion_layers)}")
        return ", ".join(parts)


def _layers(layers: tuple[int, ...]) -> str:
    return f"layer{'s' * (len(layers) > 1)} {','.join(map(str, layers))}"


def row_limits(configs: Sequence[MethodConfig]) -> RowLimits:
    """The limits of one method's rows for ``configs`` (of that method): their largest padded
    sizes; LoRA on every layer, on the linears of all their placements, where they sit on
    different ones; dynamic fusion where they hold both types; fusion at the layers any of them
    learns its fusion at (not every layer: where a trial averages its adapters, a row's fusion
    layer would still project every adapter's output)."""
    first = configs[0]
    padded = PADDED[first.method]
    where = {(c.placement, c.layers) for c in configs}
    types = {c.fusion for c in configs if pads(c, "fusion")}
    targets = [c.target_bottleneck for c in configs if c.target_bottleneck]
    return RowLimits(
        rank=max(max_rank(c) for c in configs) if "rank" in padded else RowLimits.rank,
        bottleneck=max(c.bottleneck for c in configs) if "bottleneck" in padded else None,
        target_bottleneck=max(targets, default=None) if "target_bottleneck" in padded else None,
        placement=covering_placement(first.method, {p for p, _ in where})
        if "placement" in padded and len(where) > 1 else None,
        sources=(union_sources(configs) or None) if "sources" in padded else None,
        fusion="dynamic" if len(types) > 1 else None,
        fusion_layers=union_fusion_layers(c for c in configs if pads(c, "fusion_layers")),
    )  # fmt: skip


def unions_adapters(method: MethodConfig) -> bool:
    """Whether a trial fuses the union of its group's adapters (a target one too, if any has it)."""
    return method.method in ("fusion", "lora_fusion") and method.fusion_init == "uniform"


__all__ = [
    "PADDED", "ROW_METHODS", "RowLimits", "count_groups", "covering_placement", "group_template",
    "holds", "max_rank", "pads", "row_limits", "row_signature", "union_fusion_layers",
    "union_sources", "unions_adapters",
]  # fmt: skip
