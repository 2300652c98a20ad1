"""Fixed-budget matching: turn one method's size knob until its count lands on a budget.

Every baseline of a budget study gets the integer knob setting whose count is nearest the budget
(:func:`match_budget`); a method whose knob cannot land inside the tolerance is reported with
its numbers, never stretched. ``full`` and ``bitfit`` have no knob: :func:`match_all` reports
their fixed counts and whether they fit.

A knob is a :class:`Lever`: an integer range and the config at each integer. The search assumes
only that a count never falls when its lever grows, and asks
:func:`search_spaces.accounting.count_params` (the single source of truth) for every count.
When the uniform knob misses, the per-layer levers take over: peft's LoRA spreads rank units over
the layers (``layer_ranks``), the other methods keep one size on the top m layers (``layers``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from search_spaces.accounting import ParamCount, count_params
from search_spaces.errors import ConfigError, one_of
from search_spaces.method_config import LORA_METHODS, METHODS, MethodConfig
from search_spaces.method_facts import METHOD_FACTS
from search_spaces.shapes import BackboneShape

ACCOUNTINGS = ("trainable", "added")
# method -> the knob matched to a budget; None: the method has no size knob (a fact of the method)
KNOBS: dict[str, str | None] = {m: METHOD_FACTS.get(m).size_knob for m in METHODS}
# LoRA methods with one rank per module, no rank_pattern (adapters' LoRA of lora_fusion and
# unipelt, AdaLoRA, lora_grow): their budget match narrows the layers instead.
ONE_RANK_METHODS = tuple(m for m in LORA_METHODS if not METHOD_FACTS.get(m).per_layer_ranks)
# LoRA's scale alpha / r stays at MethodConfig's default 16 / 8 whatever rank is solved.
ALPHA_PER_RANK = MethodConfig.alpha / MethodConfig.rank
# AdaLoRA starts every module at 1.5x its target average rank (peft's defaults: 12 for 8).
ADALORA_INIT_FACTOR = 1.5


class Infeasible(ConfigError):
    """No integer setting lands inside the budget's tolerance; the message gives the numbers.

    ``lowest``/``highest``: the smallest/largest reachable counts; ``nearest``: the closest one.
    """

    def __init__(
        self, message: str, *, lowest: int = 0, highest: int = 0, nearest: int = 0
    ) -> None:
        super().__init__(message)
        self.lowest, self.highest, self.nearest = lowest, highest, nearest


@dataclass(frozen=True)
class Budget:
    """``budget_params`` of the ``accounting`` figure, met within ``± tolerance`` (relative).

    ``"trainable"`` constrains what the optimiser updates, head included: the fair figure for
    comparing training (AdaLoRA at its final rank by default, its paper's convention:
    ``budget_rank``). ``"added"`` also counts frozen source adapters: the figure for storage.
    """

    budget_params: int
    tolerance: float = 0.05
    accounting: str = "trainable"

    def __post_init__(self) -> None:
        b = self.budget_params
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ConfigError(f"budget_params={b!r} must be a positive integer")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"tolerance={self.tolerance!r} must be in (0, 1), e.g. 0.05 for 5%")
        if self.accounting not in ACCOUNTINGS:
            raise one_of("accounting", self.accounting, ACCOUNTINGS)

    @classmethod
    def from_percent(cls, percent: float, shape: BackboneShape, **options: Any) -> Budget:
        """``percent`` (in (0, 100]) of ``shape.backbone_params``; ``options`` as the fields."""
        if not 0 < percent <= 100:
            raise ConfigError(f"percent={percent!r} must be in (0, 100]")
        return cls(max(1, round(percent / 100 * shape.backbone_params)), **options)

    def params(self, count: ParamCount | int) -> int:
        """The figure this budget constrains (an int passes through)."""
        if isinstance(count, int):
            return count
        if self.accounting == "added":
            return count.added_params
        return count.trainable_params if count.budget_trainable is None else count.budget_trainable

    def deviation(self, count: ParamCount | int) -> float:
        """Signed relative deviation: +0.03 is 3% above the budget."""
        return (self.params(count) - self.budget_params) / self.budget_params

    def contains(self, count: ParamCount | int) -> bool:
        return abs(self.params(count) - self.budget_params) <= self.tolerance * self.budget_params

    def describe(self) -> str:
        """E.g. ``500,000 trainable parameters ± 5%``."""
        return f"{self.budget_params:,} {self.accounting} parameters ± {self.tolerance * 100:g}%"

    def why_not(self, what: str, *, lowest: int, highest: int, nearest: int) -> str:
        """One line on why ``what`` misses: its reachable range against the budget's bounds."""
        b, tol, unit = f"{self.budget_params:,}", f"{self.tolerance * 100:g}%", self.accounting
        if lowest > self.budget_params * (1 + self.tolerance):
            return f"{what} alone is {lowest:,} {unit} parameters, above the budget {b} + {tol}"
        if highest < self.budget_params * (1 - self.tolerance):
            return f"{what} reaches at most {highest:,} {unit} parameters, below the budget {b} - {tol}"
        return (
            f"{what}: the nearest setting is {nearest:,} {unit} parameters "
            f"({self.deviation(nearest):+.1%}), outside the budget {b} ± {tol}"
        )


def nearest_int(count_at: Callable[[int], int], target: int, lo: int, hi: int) -> int:
    """The ``k`` in ``[lo, hi]`` whose count is nearest ``target`` (ties: the smaller ``k``).

    Contract: ``count_at`` never decreases with ``k``; it is called O(log(hi - lo)) times.
    """
    if count_at(hi) <= target:
        return hi
    if count_at(lo) >= target:
        return lo
    below, above = lo, hi  # count_at(below) < target <= count_at(above)
    while above - below > 1:
        middle = (below + above) // 2
        below, above = (middle, above) if count_at(middle) < target else (below, middle)
    return below if target - count_at(below) <= count_at(above) - target else above


@dataclass(frozen=True)
class Lever:
    """An integer knob: ``config_at(k)`` for ``k`` in ``[lo, hi]``, its count non-decreasing."""

    name: str
    lo: int
    hi: int
    config_at: Callable[[int], MethodConfig]

    def settle(self, budget: Budget, shape: BackboneShape) -> tuple[MethodConfig, int]:
        """The config nearest the budget on this lever and its accounted count."""
        cache: dict[int, int] = {}

        def count_at(k: int) -> int:
            if k not in cache:
                cache[k] = budget.params(count_params(self.config_at(k), shape))
            return cache[k]

        k = nearest_int(count_at, budget.budget_params, self.lo, self.hi)
        return self.config_at(k), count_at(k)

    def reach(self, budget: Budget, shape: BackboneShape) -> tuple[int, int]:
        """The accounted counts at both ends of the lever."""
        low, high = (count_params(self.config_at(k), shape) for k in (self.lo, self.hi))
        return budget.params(low), budget.params(high)


def top_layers(count: int, num_layers: int) -> tuple[int, ...] | None:
    """The top ``count`` layers, or ``None`` (every layer) when that is all of them.

    Upper layers first: AdapterDrop (Rücklé et al., 2021) loses least when lower ones go.
    """
    return None if count >= num_layers else tuple(range(num_layers - count, num_layers))


def method_layers(config: MethodConfig, num_layers: int) -> tuple[int, ...]:
    """The layers the config's ``layers`` selects (every layer when unset)."""
    ranks = config.replace(layer_ranks=None).lora_ranks(num_layers)
    return tuple(i for i, r in enumerate(ranks) if r)


def spread_ranks(total: int, layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """``total`` rank units over ``layers``: r each, one more on the top ``total % len`` of them.

    The extra rank goes up: AdaLoRA's learned allocations favour the upper layers.
    """
    rank, extra = divmod(total, len(layers))
    ranks = [0] * num_layers
    for position, layer in enumerate(layers):
        ranks[layer] = rank + (position >= len(layers) - extra)
    return tuple(ranks)


def rank_pattern(template: MethodConfig, shape: BackboneShape) -> Lever:
    """Rank units spread over the template's LoRA layers (peft's ``rank_pattern``)."""
    n, layers = shape.num_layers, method_layers(template, shape.num_layers)

    def config_at(total: int) -> MethodConfig:
        ranks = spread_ranks(total, layers, n)
        return template.replace(rank=max(ranks), layer_ranks=ranks)

    return Lever("layer_ranks", 1, len(layers) * shape.hidden, config_at)


def knob(template: MethodConfig, shape: BackboneShape) -> Lever:
    """The method's uniform size knob on the template's layers (fusion: its depth)."""
    t, d, n = template, shape.hidden, shape.num_layers
    if t.method in ("lora", "lora_fusion"):
        return Lever("rank", 1, d, lambda r: t.replace(rank=r, layer_ranks=None))
    if t.method == "adalora":
        return Lever("rank", 1, d, lambda r: t.replace(rank=r, init_rank=adalora_init_rank(r)))
    if t.method == "lora_grow":  # the largest rank it may grow to; it starts at start_rank
        return Lever("rank", t.start_rank, max(d, t.start_rank), lambda r: t.replace(rank=r))
    if t.method in ("houlsby", "pfeiffer"):
        return Lever("bottleneck", 1, d, lambda b: t.replace(bottleneck=b))
    if t.method == "prefix":
        return Lever("prefix_length", 1, shape.max_positions, lambda p: t.replace(prefix_length=p))
    if t.method == "unipelt":
        return Lever("sizes", 1, d, lambda k: unipelt_sizes(t, k))
    if t.method == "fusion":
        return Lever("fusion_layers", 1, n, lambda k: t.replace(fusion_layers=top_layers(k, n)))
    raise one_of("method with a size knob", t.method, [m for m, k in KNOBS.items() if k])


def fallbacks(template: MethodConfig, shape: BackboneShape) -> list[Lever]:
    """The per-layer levers tried when the uniform knob misses the tolerance."""
    n = shape.num_layers
    if template.method == "fusion":  # fill what the depth leaves with a target adapter
        return [target_adapter(template.replace(fusion_layers=top_layers(k, n)), shape)
                for k in range(1, n + 1)]  # fmt: skip
    if template.method in LORA_METHODS and template.method not in ONE_RANK_METHODS:
        return [rank_pattern(template, shape)]
    layers = method_layers(template, n)
    return [
        knob(template.replace(layers=layers[-m:]), shape) for m in range(len(layers) - 1, 0, -1)
    ]


def target_adapter(template: MethodConfig, shape: BackboneShape) -> Lever:
    """The size of the trainable target adapter fused with the sources (0 = none)."""
    return Lever(
        "target_bottleneck", 0, shape.hidden, lambda b: template.replace(target_bottleneck=b)
    )


def settle(
    first: Lever, others: Iterable[Lever], budget: Budget, shape: BackboneShape
) -> tuple[MethodConfig, int]:
    """``first``'s nearest setting when inside the tolerance, else the nearest of all levers."""
    best = first.settle(budget, shape)
    if budget.contains(best[1]):
        return best
    found = [best, *(lever.settle(budget, shape) for lever in others)]
    return min(found, key=lambda pair: abs(pair[1] - budget.budget_params))


@dataclass(frozen=True)
class Landing:
    """Where a set of levers lands: the nearest config, its count and the reachable range."""

    config: MethodConfig
    params: int
    lowest: int
    highest: int

    def check(self, budget: Budget, what: str) -> None:
        """Raise :class:`Infeasible` naming ``what`` and the numbers if the landing misses."""
        if budget.contains(self.params):
            return
        ends = {"lowest": self.lowest, "highest": self.highest, "nearest": self.params}
        raise Infeasible(budget.why_not(what, **ends), **ends)


def land(first: Lever, others: list[Lever], budget: Budget, shape: BackboneShape) -> Landing:
    """:func:`settle`, plus the reachable range when the nearest setting misses the tolerance."""
    config, params = settle(first, others, budget, shape)
    if budget.contains(params):
        return Landing(config, params, params, params)
    ends = [lever.reach(budget, shape) for lever in (first, *others)]
    return Landing(config, params, min(e[0] for e in ends), max(e[1] for e in ends))


def adalora_init_rank(rank: int) -> int:
    return math.floor(ADALORA_INIT_FACTOR * rank + 0.5)


def unipelt_sizes(template: MethodConfig, scale: int) -> MethodConfig:
    """UniPELT's three sizes at ``scale`` = LoRA rank, in the template's proportions."""
    ratio = scale / template.rank
    return template.replace(
        rank=scale,
        bottleneck=max(1, math.floor(template.bottleneck * ratio + 0.5)),
        prefix_length=max(1, math.floor(template.prefix_length * ratio + 0.5)),
    )


def with_alpha(config: MethodConfig) -> MethodConfig:
    """LoRA's alpha at :data:`ALPHA_PER_RANK` times the (largest) rank."""
    return config.replace(alpha=ALPHA_PER_RANK * config.rank)


@dataclass(frozen=True)
class MatchResult:
    """One method matched to a budget; ``config`` is the nearest setting even when it misses."""

    method: str
    knob: str | None
    config: MethodConfig
    count: ParamCount
    deviation: float
    fits: bool
    reason: str = ""  # why it misses; empty when it fits


def deepest_fusion(template: MethodConfig, budget: Budget, shape: BackboneShape) -> MethodConfig:
    """``lora_fusion`` with the most fused (top) layers that still leave a uniform LoRA rank
    inside the tolerance; one fused layer when no depth does."""
    n = shape.num_layers
    for depth in range(n, 1, -1):
        deeper = template.replace(fusion_layers=top_layers(depth, n))
        if budget.contains(knob(deeper, shape).settle(budget, shape)[1]):
            return deeper
    return template.replace(fusion_layers=top_layers(1, n))


def _land_method(
    method: str, budget: Budget, shape: BackboneShape, fixed: dict[str, Any]
) -> tuple[Landing, str]:
    """Where ``method``'s knob lands, and how a miss names the method."""
    if method not in KNOBS:
        raise one_of("method", method, METHODS)
    name = KNOBS[method]
    if name in fixed:
        raise ConfigError(f"{name}={fixed[name]!r} is the knob matched to the budget for {method}")
    template = MethodConfig(method=method, **fixed)
    if not name:
        params = budget.params(count_params(template, shape))
        return Landing(template, params, params, params), f"{method} (no size knob)"
    if method == "lora_fusion" and "fusion_layers" not in fixed:
        template = deepest_fusion(template, budget, shape)
    what = f"{method} ({name})"
    if method in ("fusion", "lora_fusion"):
        depth = len(template.fused_layers(shape.num_layers))
        what = f"{method} ({name}; {template.fusion} fusion on {depth} layers)"
    if method == "prefix" and template.prefix_reparam:
        what = "prefix with its reparametrisation MLP (prefix_reparam=false trains the prefix only)"
    landing = land(knob(template, shape), fallbacks(template, shape), budget, shape)
    if method in LORA_METHODS and "alpha" not in fixed:
        landing = replace(landing, config=with_alpha(landing.config))
    return landing, what


def match(method: str, budget: Budget, shape: BackboneShape, **fixed: Any) -> MatchResult:
    """Match ``method`` to ``budget`` with the other knobs at ``fixed`` (MethodConfig fields);
    a miss is reported in the result, not raised."""
    landing, what = _land_method(method, budget, shape, fixed)
    count = count_params(landing.config, shape)
    result = MatchResult(
        method, KNOBS[method], landing.config, count, budget.deviation(count), True
    )
    try:
        landing.check(budget, what)
    except Infeasible as miss:
        return replace(result, fits=False, reason=str(miss))
    return result


def match_budget(method: str, budget: Budget, shape: BackboneShape, **fixed: Any) -> MethodConfig:
    """The config of ``method`` nearest ``budget`` (knob per :data:`KNOBS`, others at ``fixed``).

    Raises :class:`Infeasible` with the numbers when no setting lands inside the tolerance,
    ``full`` and ``bitfit`` included (they have no knob).
    """
    landing, what = _land_method(method, budget, shape, fixed)
    landing.check(budget, what)
    return landing.config


def match_all(
    budget: Budget, shape: BackboneShape, methods: Iterable[str] = METHODS, **fixed: Any
) -> dict[str, MatchResult]:
    """:func:`match` for each method (experiment E1), infeasible ones reported, not raised."""
    return {method: match(method, budget, shape, **fixed) for method in methods}


__all__ = [
    "ACCOUNTINGS", "ALPHA_PER_RANK", "KNOBS", "Budget", "Infeasible", "Landing", "Lever",
    "MatchResult", "land", "match", "match_all", "match_budget", "nearest_int", "top_layers",
]  # fmt: skip
