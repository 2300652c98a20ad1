"""Split one parameter budget between LoRA, AdapterFusion and a target adapter.

A :class:`Split` fixes the coarse lumps (method, fusion type and depth, sources, source-adapter
and target-adapter sizes, LoRA placement); :func:`solve` then sets the fine lever of that split.
The simplest structure that lands inside the tolerance wins, and within it the integer setting
whose count is nearest the budget:

* ``lora`` and ``lora_fusion``: one LoRA rank on every layer; if none lands inside, a per-layer
  pattern (peft's ``rank_pattern``: r on the lower layers, r+1 on the upper ones) or, where the
  library takes one rank per module (adapters' LoRA in ``lora_fusion``), one rank on the top m
  layers;
* ``fusion``: fusion alone; if it misses, plus a trainable target adapter of the nearest size.

Budgets, levers and the nearest-integer search live in :mod:`search_spaces.matching`.

Every count comes from :func:`search_spaces.accounting.count_params`, the single source of truth;
the solver only assumes that a count never falls when its lever grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from search_spaces.accounting import ADAPTERS_LORA_PLACEMENTS, ParamCount, count_params
from search_spaces.errors import ConfigError, one_of
from search_spaces.matching import (
    Budget,
    Infeasible,
    Lever,
    fallbacks,
    knob,
    land,
    target_adapter,
    top_layers,
    with_alpha,
)
from search_spaces.method_config import FUSIONS, PLACEMENTS, MethodConfig
from search_spaces.shapes import BackboneShape

SPLIT_METHODS = ("lora", "fusion", "lora_fusion")
# The LoRA placements a split draws from by default: study 000's attention q/v, all attention, FFN
# and everywhere (lora_fusion: attn_qv and ffn, the two of them adapters' LoRA takes). Not every
# PLACEMENTS value: attn_qv_ffn is there for fused rows to pad into (a study may still name it).
SPLIT_PLACEMENTS = ("attn_qv", "attn_all", "ffn", "all")
# The order in which a search space samples the lumps: the expensive, coarse ones first.
LUMP_ORDER = (
    "method", "fusion", "fusion_depth", "sources", "bottleneck", "target_bottleneck", "placement",
)  # fmt: skip
# Which lumps each split method has (the fine lever is solved, never sampled).
LUMPS_OF = {
    "lora": ("placement",),
    "fusion": ("fusion", "fusion_depth", "sources", "bottleneck"),
    "lora_fusion": (
        "fusion", "fusion_depth", "sources", "bottleneck", "target_bottleneck", "placement",
    ),
}  # fmt: skip
# The size of the pre-trained source adapters: Pfeiffer et al.'s reduction factor 16 on d = 384.
SOURCE_BOTTLENECK = MethodConfig.bottleneck
TARGET_BOTTLENECKS = (0, 16, 48)  # none, a small and a mid-size target adapter


@dataclass(frozen=True)
class Split:
    """The coarse lumps of one way to spend the budget; fields a method lacks keep defaults.

    ``fusion_depth`` counts fused layers from the top (AdapterDrop: upper layers matter most).
    """

    method: str
    placement: str = "attn_qv"
    fusion: str = "dynamic"
    fusion_depth: int = 0
    sources: tuple[str, ...] = ()
    bottleneck: int = SOURCE_BOTTLENECK
    target_bottleneck: int = 0

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise one_of("method", self.method, SPLIT_METHODS)
        fused = self.method != "lora"
        if fused and (self.fusion_depth < 1 or not self.sources):
            raise ConfigError(
                f"{self.method} split needs fusion_depth >= 1 and sources, got {self}"
            )
        if not fused and (self.fusion_depth or self.sources):
            raise ConfigError(f"lora split takes no fusion_depth or sources, got {self}")

    def lumps(self) -> tuple[object, ...]:
        """The values of this method's lumps in :data:`LUMP_ORDER` (sources as one string)."""
        values = {"method": self.method, "sources": ",".join(self.sources)}
        return tuple(
            values.get(name, getattr(self, name))
            for name in LUMP_ORDER
            if name == "method" or name in LUMPS_OF[self.method]
        )

    def template(self, shape: BackboneShape, *, num_labels: int, head: str) -> MethodConfig:
        """The method config at the fine lever's smallest setting."""
        n = shape.num_layers
        if self.method == "lora":
            return MethodConfig("lora", num_labels, head, placement=self.placement)
        if self.fusion_depth > n:
            raise ConfigError(f"fusion_depth={self.fusion_depth} exceeds the {n} layers")
        return MethodConfig(
            self.method,
            num_labels,
            head,
            placement=self.placement,
            fusion=self.fusion,
            fusion_layers=top_layers(self.fusion_depth, n),
            sources=self.sources,
            bottleneck=self.bottleneck,
            target_bottleneck=self.target_bottleneck if self.method == "lora_fusion" else 0,
        )

    def describe(self) -> str:
        """E.g. ``dynamic fusion on the top 2 layers of 3 sources + LoRA attn_qv``."""
        lora = f"LoRA {self.placement}"
        if self.method == "lora":
            return lora
        where = (
            f"on the top {self.fusion_depth} layers"
            if self.fusion_depth > 1
            else "on the top layer"
        )
        count = len(self.sources)
        text = f"{self.fusion} fusion {where} of {count} source{'s' if count > 1 else ''}"
        if self.method == "fusion":
            return text
        target = f" + target adapter {self.target_bottleneck}" if self.target_bottleneck else ""
        return f"{text}{target} + {lora}"


@dataclass(frozen=True)
class Allocation:
    """One feasible split with its solved config, its counts and its signed relative deviation."""

    split: Split
    config: MethodConfig
    count: ParamCount
    deviation: float


@dataclass(frozen=True)
class Lumps:
    """The candidate values of each coarse lump; :func:`candidate_splits` takes their product."""

    methods: tuple[str, ...] = SPLIT_METHODS
    fusions: tuple[str, ...] = FUSIONS
    depths: tuple[int, ...] | None = None  # fused layers from the top; None = 1 .. num_layers
    placements: tuple[str, ...] = SPLIT_PLACEMENTS
    bottlenecks: tuple[int, ...] = (SOURCE_BOTTLENECK,)
    target_bottlenecks: tuple[int, ...] = TARGET_BOTTLENECKS
    min_sources: int = 1
    max_sources: int | None = None  # None = the whole pool

    def __post_init__(self) -> None:
        _check_subset("methods", self.methods, SPLIT_METHODS)
        _check_subset("fusions", self.fusions, FUSIONS)
        _check_subset("placements", self.placements, tuple(PLACEMENTS))
        for name in ("depths", "bottlenecks", "target_bottlenecks"):
            values = getattr(self, name)
            least = 0 if name == "target_bottlenecks" else 1
            if values is None and name == "depths":
                continue
            if not values or any(not isinstance(v, int) or v < least for v in values):
                raise ConfigError(f"{name}={values!r} must be integers >= {least}")
        if self.min_sources < 1 or (self.max_sources or 1) < self.min_sources:
            raise ConfigError(
                f"min_sources={self.min_sources}, max_sources={self.max_sources} must satisfy "
                "1 <= min_sources <= max_sources"
            )


def _check_subset(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not values:
        raise ConfigError(f"{name}=() is empty; allowed: {', '.join(allowed)}")
    for value in values:
        if value not in allowed:
            raise one_of(name, value, allowed)


def _levers(template: MethodConfig, shape: BackboneShape) -> tuple[Lever, list[Lever]]:
    """The split's fine lever and the levers tried when it misses the tolerance."""
    if template.method == "fusion":  # fusion alone first: a 1-wide target adapter is noise
        return Lever("target_bottleneck", 0, 0, lambda _: template), [
            target_adapter(template, shape)
        ]
    return knob(template, shape), fallbacks(template, shape)


def allocate(
    split: Split, budget: Budget, shape: BackboneShape, *, num_labels: int = 2, head: str = "mean"
) -> Allocation:
    """Solve ``split``'s fine lever to the count nearest ``budget``; raise :class:`Infeasible`
    (with the numbers) when that count is outside the tolerance."""
    template = split.template(shape, num_labels=num_labels, head=head)
    landing = land(*_levers(template, shape), budget, shape)
    landing.check(budget, split.describe())
    config = landing.config if split.method == "fusion" else with_alpha(landing.config)
    count = count_params(config, shape)
    return Allocation(split, config, count, budget.deviation(count))


def solve(
    split: Split, budget: Budget, shape: BackboneShape, *, num_labels: int = 2, head: str = "mean"
) -> MethodConfig:
    """The config of ``split`` nearest ``budget``; :class:`Infeasible` if none is inside it."""
    return allocate(split, budget, shape, num_labels=num_labels, head=head).config


def candidate_splits(
    lumps: Lumps, shape: BackboneShape, *, sources_pool: tuple[str, ...]
) -> list[Split]:
    """Every split in the product of ``lumps`` that the libraries can build on ``shape``."""
    depths = lumps.depths or tuple(range(1, shape.num_layers + 1))
    depths = tuple(d for d in depths if d <= shape.num_layers)
    most = min(lumps.max_sources or len(sources_pool), len(sources_pool))
    subsets = [s for k in range(lumps.min_sources, most + 1) for s in combinations(sources_pool, k)]
    splits: list[Split] = []
    for method in lumps.methods:
        if method == "lora":
            splits += [Split("lora", placement=p) for p in lumps.placements]
            continue
        # adapters' LoRA cannot adapt attention.output; fusion alone has no placement
        placements = [p for p in lumps.placements if p in ADAPTERS_LORA_PLACEMENTS]
        placements = placements if method == "lora_fusion" else [MethodConfig.placement]
        targets = lumps.target_bottlenecks if method == "lora_fusion" else (0,)
        splits += [
            Split(method, p, f, d, s, b, t)
            for f in lumps.fusions
            for d in depths
            for s in subsets
            for b in lumps.bottlenecks
            for t in targets
            for p in placements
        ]
    return splits


def enumerate_splits(
    budget: Budget,
    shape: BackboneShape,
    *,
    sources_pool: tuple[str, ...],
    lumps: Lumps | None = None,
    num_labels: int = 2,
    head: str = "mean",
) -> list[Allocation]:
    """Every feasible split of ``lumps`` with its solved config, in :func:`candidate_splits` order.

    Raises :class:`Infeasible` when no split fits, naming the smallest and largest reachable counts.
    """
    lumps = lumps or Lumps()
    if any(m != "lora" for m in lumps.methods) and not sources_pool:
        raise ConfigError("sources_pool=() is empty: fusion splits need source tasks")
    if len(set(sources_pool)) != len(sources_pool):
        raise ConfigError(f"sources_pool={','.join(sources_pool)!r} lists a task twice")
    if any("," in s or not s.strip() for s in sources_pool):
        raise ConfigError(f"sources_pool={sources_pool!r}: task names must be non-empty, no commas")
    splits = candidate_splits(lumps, shape, sources_pool=sources_pool)
    feasible: list[Allocation] = []
    misses: list[tuple[Infeasible, Split]] = []
    for split in splits:
        try:
            feasible.append(allocate(split, budget, shape, num_labels=num_labels, head=head))
        except Infeasible as miss:
            misses.append((miss, split))
    if feasible:
        return feasible
    raise _explain(misses, budget, lumps)


def _explain(misses: list[tuple[Infeasible, Split]], budget: Budget, lumps: Lumps) -> Infeasible:
    """One error for a request no split fits: the reachable range and the nearest miss."""
    lowest = min(m.lowest for m, _ in misses)
    highest = max(m.highest for m, _ in misses)
    miss, split = min(misses, key=lambda pair: abs(pair[0].nearest - budget.budget_params))
    nearest = miss.nearest
    message = (
        f"no split of {', '.join(lumps.methods)} fits the budget {budget.describe()}: "
        f"the {len(misses)} splits reach {lowest:,} to {highest:,} {budget.accounting} "
        f"parameters, the nearest {nearest:,} ({budget.deviation(nearest):+.1%}, {split.describe()})"
    )
    return Infeasible(message, lowest=lowest, highest=highest, nearest=nearest)


__all__ = [
    "LUMPS_OF", "LUMP_ORDER", "SPLIT_METHODS", "SPLIT_PLACEMENTS", "Allocation", "Budget",
    "Infeasible", "Lumps", "Split", "allocate", "candidate_splits", "enumerate_splits", "solve",
]  # fmt: skip
