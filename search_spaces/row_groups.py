"""Which trials may share one fused model (``--fuse``, the fused pool): pure arithmetic over method
configs, no torch.

A fused model is built from one *template* trial; another trial fits it when its trainable tensors
are the template's, or smaller ones zero-padded into the template's (the padded entries masked to
zero in the forward, so they get zero gradient and stay zero). Padding is exact only along the
knobs :data:`PADDED` lists per method, each checked by a test against the trial trained alone
(tests/test_fused.py, tests/test_fused_rows.py); every other knob is part of a trial's
:func:`row_signature`, and trials of different signatures train in different fused groups.

Why each knob pads exactly:

* LoRA ``rank`` / ``layer_ranks`` / ``layers`` / ``placement`` (plain LoRA): a smaller rank is zero
  rows of A and columns of B; a linear without LoRA is both factors zero. ``alpha`` is a per-row
  scale on B (the template's own scale set to 1).
* ``bottleneck`` (houlsby, pfeiffer) and ``target_bottleneck`` (its size, not its presence): a
  padded unit has zero down weights, zero down bias and zero up weights, so it adds nothing.
* ``lora_fusion``'s LoRA ``rank`` / ``layer_ranks`` / ``layers``: as plain LoRA (adapters' LoRA
  adds ``scale * x A^T B^T`` to the linear; zero factors add zero).
* ``sources`` of ``fusion`` / ``lora_fusion`` with ``fusion_init="uniform"``: the template fuses the
  union of its group's sources; a row's fusion attention gives the sources it lacks a score of
  ``-inf`` (weight exactly 0), and its parameter-free uniform layers average its own sources only
  (:class:`trainables.fused.rows.FusedRows`). The fusion's parameters do not depend on how many
  adapters it fuses.

What never pads: the method, head, labels, a bottleneck adapter's layers (adapters runs the
layer's original LayerNorm twice around an adapter: a zero adapter is not an absent one), the
sources' bottleneck, the fusion type and layers, the presence of a target adapter, sources under
a similarity prior, ``lora_fusion``'s LoRA placement (other linears of adapters' LoRA).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig

# knobs along which a trial zero-pads into a larger template of its group, per method
PADDED: dict[str, tuple[str, ...]] = {
    "lora": ("rank", "alpha", "layer_ranks", "layers", "placement"),
    "bitfit": (),
    "pfeiffer": ("bottleneck",),
    "houlsby": ("bottleneck",),
    "fusion": ("target_bottleneck", "sources"),
    "lora_fusion": ("rank", "alpha", "layer_ranks", "layers", "target_bottleneck", "sources"),
}
ROW_METHODS = tuple(PADDED)  # the methods a fused model can hold
# knobs that never change what a trial computes (training-only, or read by other methods)
_IGNORED = ("init_rank", "adalora_scale", "budget_rank", "start_rank", "grow_step",
            "grow_patience", "layer_modules", "parallel_bottleneck", "prefix_length",
            "prefix_reparam")  # fmt: skip


def row_signature(config: MethodConfig) -> tuple[Any, ...]:
    """What a trial shares with every other trial of its fused group: its method config without
    the knobs that pad (``target_bottleneck``: only whether it is set)."""
    if config.method not in PADDED:
        raise ConfigError(
            f"method={config.method!r} cannot be fused; fusable: {', '.join(ROW_METHODS)}"
        )
    padded = PADDED[config.method]
    out: list[Any] = []
    for f in fields(MethodConfig):
        if f.name in _IGNORED:
            continue
        value = getattr(config, f.name)
        if f.name == "target_bottleneck" and f.name in padded:
            value = value > 0
        elif f.name == "sources" and config.fusion_init != "uniform":
            pass  # a similarity prior is per source: no union
        elif f.name in padded:
            value = None
        out.append((f.name, value))
    return tuple(out)


def max_rank(config: MethodConfig) -> int:
    return max((config.rank, *(config.layer_ranks or ())))


def group_template(configs: Iterable[MethodConfig]) -> MethodConfig:
    """The method config of a group's template: the first config with every padded size at the
    group's largest, LoRA on every layer (plain LoRA: on every linear when placements differ)."""
    configs = list(configs)
    first = configs[0]
    if len({row_signature(c) for c in configs}) != 1:
        raise ConfigError("one fused group holds trials of one row signature only")
    padded = PADDED[first.method]
    changes: dict[str, Any] = {}
    if "rank" in padded:
        changes.update(rank=max(max_rank(c) for c in configs), layer_ranks=None, layers=None)
        if first.method == "lora" and len({c.placement for c in configs}) > 1:
            changes["placement"] = "all"
    for name in ("bottleneck", "target_bottleneck"):
        if name in padded:
            changes[name] = max(getattr(c, name) for c in configs)
    if "sources" in padded and first.fusion_init == "uniform":
        changes["sources"] = union_sources(configs)
    return first.replace(**changes)


def union_sources(configs: Iterable[MethodConfig]) -> tuple[str, ...]:
    """Every source the configs fuse, sorted: the sources of their groups' templates."""
    return tuple(sorted({s for c in configs for s in c.sources}))


def count_groups(configs: Iterable[MethodConfig]) -> dict[str, int]:
    """How many fused groups (row signatures) ``configs`` fall into, per method."""
    seen: dict[str, set[tuple[Any, ...]]] = {}
    for config in configs:
        seen.setdefault(config.method, set()).add(row_signature(config))
    return {method: len(signatures) for method, signatures in sorted(seen.items())}


__all__ = [
    "PADDED", "ROW_METHODS", "count_groups", "group_template", "max_rank", "row_signature",
    "union_sources",
]  # fmt: skip
