"""AdapterFusion rows over the union of their group's sources (:mod:`search_spaces.row_groups`).

A group's template fuses every source its trials fuse. Each row says which of the template's
fused adapters are its own (``present``, 1 or 0 per adapter); in the fused model's copy of the
template, every learned fusion layer adds ``log(present)`` to its attention scores (0, or ``-inf``:
an adapter the row lacks gets weight exactly 0), and every parameter-free uniform layer
(:class:`trainables.methods.fusion.UniformFusion`) averages the row's own adapters only. A row's
fusion then computes what its trial's own fusion computes, up to float rounding; the fusion's
parameters are the same whatever the number of adapters, under another name only (adapters names
a fusion by its adapters: :func:`rename`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from adapters.methods.modeling import BertFusion
from torch import nn

from trainables.methods.fusion import UniformFusion

PRESENT = "row_present"  # the buffer of each fusion layer in the fused copy: [adapters]
_FUSION = re.compile(r"\.adapter_fusion_layer\.([^.]+)$")


def fusion_name(model: nn.Module) -> str | None:
    """The name adapters gives the model's fusion (its adapters, comma-separated), or None."""
    names = {m.group(1) for n, _ in model.named_modules() if (m := _FUSION.search(n))}
    if len(names) > 1:
        raise ValueError(f"a fused row holds one fusion, not {sorted(names)}")
    return next(iter(names), None)


def rename(name: str, ours: str | None, theirs: str | None) -> str:
    """A member's tensor ``name`` under the template's fusion name."""
    if ours is None or theirs is None or ours == theirs:
        return name
    return name.replace(f".adapter_fusion_layer.{ours}.", f".adapter_fusion_layer.{theirs}.")


def presence(template_fusion: str | None, member_fusion: str | None) -> torch.Tensor:
    """1 over the template's fused adapters that the member fuses, 0 over the others."""
    if template_fusion is None:
        return torch.zeros(0)
    own = set((member_fusion or "").split(","))
    return torch.tensor([float(a in own) for a in template_fusion.split(",")])


class _MaskedUniform(nn.Module):
    """:class:`UniformFusion` over the row's own adapters: their mean plus the residual."""

    def __init__(self, adapters: int) -> None:
        super().__init__()
        self.register_buffer(PRESENT, torch.ones(adapters), persistent=False)

    def forward(self, query, key, value, residual, output_attentions: bool = False):  # type: ignore[no-untyped-def]
        present = getattr(self, PRESENT).to(value.dtype)
        context = (value * present[:, None]).sum(dim=2) / present.sum() + residual
        if output_attentions:
            raise ValueError("fused rows do not return fusion attentions")
        return context


def _mask_scores(fusion: BertFusion, module: nn.Module, inputs: Any, scores: torch.Tensor):  # type: ignore[no-untyped-def]
    return scores + torch.log(getattr(fusion, PRESENT)).to(scores.dtype)


def mask_fusion(net: nn.Module, name: str | None) -> list[str]:
    """Make the fused copy's fusion layers read a row's ``present``; the buffers' names."""
    if name is None:
        return []
    adapters = len(name.split(","))
    out = []
    for path, module in list(net.named_modules()):
        if not path.endswith(f".adapter_fusion_layer.{name}"):
            continue
        if isinstance(module, UniformFusion):
            parent, _, child = path.rpartition(".")
            net.get_submodule(parent)[child] = _MaskedUniform(adapters)
        elif isinstance(module, BertFusion):
            module.register_buffer(PRESENT, torch.ones(adapters), persistent=False)
            module.dropout.register_forward_hook(
                lambda m, i, o, fusion=module: _mask_scores(fusion, m, i, o)
            )
        else:
            raise ValueError(f"{path}: a fusion layer of type {type(module).__name__}")
        out.append(f"{path}.{PRESENT}")
    return out


__all__ = ["PRESENT", "fusion_name", "mask_fusion", "presence", "rename"]
