"""Where low-rank updates live and how large they ended up: the rank of each adapted linear.

Pure numpy over parameter names, so the same rule reads a live model and a saved
``method.safetensors`` (the analysis reads the latter without torch).

AdaLoRA (peft) keeps every tensor at ``init_rank`` and prunes by zeroing entries of its singular
values ``lora_E`` (``[r, 1]`` per adapted linear); after the final budget step peft re-applies the
same mask every step, so the final rank of a linear is the number of non-zero entries of its
``lora_E``, i.e. ``sum(rank_pattern[name])``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

# placement entry (search_spaces.method_config.PLACEMENTS) <- its path inside encoder.layer.<i>
_MODULES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention.output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
}
_LINEAR = re.compile(
    r"(?:^|\.)layer\.(\d+)\.("
    + "|".join(re.escape(p) for p in sorted(_MODULES, key=len, reverse=True))
    + r")\."
)
SINGULAR_VALUES = "lora_E"  # AdaLoRA's singular values, one column per adapted linear


def adapted_linear(name: str) -> tuple[int, str] | None:
    """``(layer, module)`` of the BERT linear a parameter name belongs to, e.g.
    ``...encoder.layer.3.attention.self.query.lora_E.default`` -> ``(3, "query")``."""
    match = _LINEAR.search(name)
    if match is None:
        return None
    return int(match.group(1)), _MODULES[match.group(2)]


def singular_value_ranks(named: Iterable[tuple[str, Any]]) -> dict[tuple[int, str], int]:
    """AdaLoRA's rank per adapted linear: non-zero singular values, keyed ``(layer, module)``.

    ``named`` yields ``(name, array-like)`` pairs: ``model.named_parameters()`` or a loaded
    safetensors dict's items. Names without ``lora_E`` are ignored.
    """
    ranks: dict[tuple[int, str], int] = {}
    for name, value in named:
        if SINGULAR_VALUES not in name:
            continue
        where = adapted_linear(name)
        if where is None:
            continue
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        ranks[where] = int(np.count_nonzero(array))
    return dict(sorted(ranks.items()))


def rank_metric(layer: int, module: str) -> str:
    """The trial-metric name of one linear's rank, e.g. ``rank_L3_attention_output``."""
    return f"rank_L{layer}_{module.replace('.', '_')}"


RANK_METRIC = re.compile(r"^rank_L(\d+)_([a-z_]+)$")


def parse_rank_metric(name: str) -> tuple[int, str] | None:
    """The inverse of :func:`rank_metric`; None for other metric names."""
    match = RANK_METRIC.match(name)
    if match is None:
        return None
    module = match.group(2)
    return int(match.group(1)), "attention.output" if module == "attention_output" else module


__all__ = [
    "SINGULAR_VALUES", "adapted_linear", "parse_rank_metric", "rank_metric",
    "singular_value_ranks",
]  # fmt: skip
