"""The method configuration: which PEFT method, with which knobs. Frozen, validated, JSON round-trip.

Field names are the project's public vocabulary: the same keys appear in ``--set key=value``, in
experiment files and as MLflow params.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from search_spaces.errors import ConfigError, one_of

METHODS = (
    "full", "bitfit", "lora", "adalora", "houlsby", "pfeiffer",
    "prefix", "unipelt", "fusion", "lora_fusion", "lora_grow", "autopeft",
)  # fmt: skip
FUSION_METHODS = ("fusion", "lora_fusion")
LORA_METHODS = ("lora", "adalora", "lora_fusion", "unipelt", "lora_grow")
# How fusion weighs its sources before it learns: equally, or by the task similarity the study
# measured from the data (``source_similarity``, a fixed prior on the fusion attention).
FUSION_INITS = ("uniform", "similarity")
# Which layers carry the LoRA of lora_fusion: ``layers`` as given, or the ``len(layers)`` fused
# layers whose fusion attention entropy is highest after a short warm-up.
LORA_PLACEMENT_RULES = ("fixed", "fusion_entropy")
# AutoPEFT's per-layer module choices (``layer_modules``).
AUTOPEFT_MODULES = ("serial", "parallel", "prefix", "lora", "none")

# placement -> the BERT linear layers (names as in transformers' BertLayer) that carry LoRA
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "attn_qv": ("query", "value"),
    "attn_all": ("query", "key", "value", "attention.output"),
    "ffn": ("intermediate", "output"),
    "all": ("query", "key", "value", "attention.output", "intermediate", "output"),
    # the query/value and FFN linears: what LoRA+AdapterFusion rows of both attn_qv and ffn trials
    # pad into (adapters' LoRA adapts no attention.output: "all" is not open to it)
    "attn_qv_ffn": ("query", "value", "intermediate", "output"),
}
# AdaLoRA's update is scaled by lora_alpha / init_rank (peft divides by ``ranknum``, the initial
# rank). The authors' GLUE scripts (Zhang et al., ICLR 2023, github.com/QingruZhang/AdaLoRA,
# NLU/scripts) set lora_alpha / lora_r between about 5 and 16; 10 sits in the middle of that range.
# LoRA's alpha = 2 r carried over gave AdaLoRA a scale of ~1.3: its weights barely moved.
ADALORA_SCALE = 10.0
# The rank an AdaLoRA budget counts: the final (target) rank, the paper's convention, or the
# initial rank its tensors are allocated at (what the optimiser updates).
BUDGET_RANKS = ("final", "initial")
# How the frozen backbone's encoder linears are held: as loaded (fp32), or in 4-bit NormalFloat
# with double quantisation and bf16 compute (QLoRA, Dettmers et al. 2023, arXiv 2305.14314;
# bitsandbytes, CUDA only: trainables/quantize.py). Only methods that leave those linears frozen
# and wrap them through peft's bitsandbytes layers can take it.
QUANTIZE = ("none", "nf4")
QUANTIZABLE_METHODS = ("lora", "adalora")
HEADS = ("mean", "cls")  # mean pooling + linear, or [CLS] through the (trainable) pooler + linear
FUSIONS = ("static", "dynamic")
T = TypeVar("T")


@dataclass(frozen=True)
class MethodConfig:
    """One PEFT method and its knobs. Unused knobs keep their defaults and are ignored.

    Layers are 0-indexed encoder layers; ``None`` means every layer.
    """

    method: str
    num_labels: int = 2
    head: str = "mean"
    # LoRA / AdaLoRA / the LoRA part of unipelt and lora_fusion
    rank: int = 8
    alpha: float = 16.0
    placement: str = "attn_qv"
    layers: tuple[int, ...] | None = None
    layer_ranks: tuple[int, ...] | None = None  # per-layer rank (peft's rank_pattern); 0 = no LoRA
    init_rank: int = 12  # AdaLoRA: rank every module starts with; ``rank`` is the target average
    adalora_scale: float = ADALORA_SCALE  # AdaLoRA: lora_alpha / init_rank (``alpha`` is LoRA's)
    budget_rank: str = "final"  # AdaLoRA: which rank a parameter budget counts (BUDGET_RANKS)
    # bottleneck adapters (houlsby, pfeiffer, unipelt) and the source adapters fused by fusion methods
    bottleneck: int = 24
    # prefix tuning
    prefix_length: int = 16
    prefix_reparam: bool = True
    # AdapterFusion
    fusion: str = "dynamic"
    sources: tuple[str, ...] = ()
    fusion_layers: tuple[int, ...] | None = None  # fusion depth: layers that carry a fusion layer
    target_bottleneck: int = 0  # a trainable target-task adapter fused with the sources (0 = none)
    # rank growth (lora_grow): LoRA starts at start_rank and grows by grow_step, up to ``rank``,
    # when the dev loss has not improved for grow_patience evaluations
    start_rank: int = 2
    grow_step: int = 2
    grow_patience: int = 1
    # novelty knobs of the hybrid (lora_fusion; fusion_init also for fusion)
    fusion_init: str = "uniform"
    source_similarity: tuple[float, ...] | None = (
        None  # cosine similarity to the target, per source
    )
    lora_placement_rule: str = "fixed"
    # AutoPEFT: one module per layer (AUTOPEFT_MODULES); None = a serial adapter in every layer.
    # Sizes per module type: bottleneck (serial), parallel_bottleneck, prefix_length, rank.
    layer_modules: tuple[str, ...] | None = None
    parallel_bottleneck: int = 24
    # the frozen backbone's encoder linears in 4 bits (QUANTIZE); head, pooler, embeddings and
    # every trainable module stay in full precision
    quantize: str = "none"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise one_of("method", self.method, METHODS)
        if self.head not in HEADS:
            raise one_of("head", self.head, HEADS)
        if self.placement not in PLACEMENTS:
            raise one_of("placement", self.placement, PLACEMENTS)
        if self.fusion not in FUSIONS:
            raise one_of("fusion", self.fusion, FUSIONS)
        for name in ("num_labels", "rank", "init_rank", "bottleneck", "prefix_length",
                     "start_rank", "grow_step", "grow_patience", "parallel_bottleneck"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.target_bottleneck < 0:
            raise ConfigError(f"target_bottleneck={self.target_bottleneck!r} must be >= 0")
        if self.alpha <= 0:
            raise ConfigError(f"alpha={self.alpha!r} must be > 0")
        if self.adalora_scale <= 0:
            raise ConfigError(f"adalora_scale={self.adalora_scale!r} must be > 0")
        if self.budget_rank not in BUDGET_RANKS:
            raise one_of("budget_rank", self.budget_rank, BUDGET_RANKS)
        if self.method == "adalora" and self.init_rank < self.rank:
            raise ConfigError(f"init_rank={self.init_rank} must be >= rank={self.rank} for adalora")
        for name in ("layers", "fusion_layers"):
            _check_layers(name, getattr(self, name))
        if self.layer_ranks is not None and any(r < 0 for r in self.layer_ranks):
            raise ConfigError(f"layer_ranks={self.layer_ranks!r} must be >= 0")
        if self.method in FUSION_METHODS and not self.sources:
            raise ConfigError(f"method={self.method!r} needs sources (comma-separated task names)")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"sources={','.join(self.sources)!r} lists a task twice")
        if self.method == "lora_grow" and self.start_rank > self.rank:
            raise ConfigError(
                f"start_rank={self.start_rank} must be <= rank={self.rank} (the largest rank) "
                "for lora_grow"
            )
        _check_novelty(self)
        _check_quantize(self)
        if self.layer_modules is not None:
            bad = [m for m in self.layer_modules if m not in AUTOPEFT_MODULES]
            if bad:
                raise one_of("layer_modules entry", bad[0], AUTOPEFT_MODULES)

    def replace(self, **changes: Any) -> MethodConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """From a JSON-like dict or from ``--set`` strings; unknown keys are refused."""
        return from_flat_dict(cls, data, what="method key")

    def lora_ranks(self, num_layers: int) -> tuple[int, ...]:
        """The LoRA rank of each encoder layer (0 where it carries none)."""
        if self.layer_ranks is not None:
            if len(self.layer_ranks) != num_layers:
                raise ConfigError(
                    f"layer_ranks has {len(self.layer_ranks)} entries, the backbone {num_layers} layers"
                )
            return self.layer_ranks
        chosen = range(num_layers) if self.layers is None else self.layers
        _check_in_range("layers", chosen, num_layers)
        return tuple(self.rank if i in chosen else 0 for i in range(num_layers))

    def fused_layers(self, num_layers: int) -> tuple[int, ...]:
        """The encoder layers that carry a fusion layer."""
        chosen = tuple(range(num_layers)) if self.fusion_layers is None else self.fusion_layers
        _check_in_range("fusion_layers", chosen, num_layers)
        return tuple(chosen)


def _check_novelty(config: MethodConfig) -> None:
    """The hybrid's novelty knobs: known values, on a method that has them, with their data."""
    if config.fusion_init not in FUSION_INITS:
        raise one_of("fusion_init", config.fusion_init, FUSION_INITS)
    if config.lora_placement_rule not in LORA_PLACEMENT_RULES:
        raise one_of("lora_placement_rule", config.lora_placement_rule, LORA_PLACEMENT_RULES)
    if config.fusion_init != "uniform" and config.method not in FUSION_METHODS:
        raise ConfigError(
            f"fusion_init={config.fusion_init!r} needs a fusion method "
            f"({', '.join(FUSION_METHODS)}), got method={config.method!r}"
        )
    if config.lora_placement_rule != "fixed":
        if config.method != "lora_fusion":
            raise ConfigError(
                f"lora_placement_rule={config.lora_placement_rule!r} is an option of "
                f"method='lora_fusion', got method={config.method!r}"
            )
        if config.layers is None:
            raise ConfigError(
                "lora_placement_rule='fusion_entropy' places LoRA on len(layers) layers: set "
                "layers (e.g. the top k) to fix how many"
            )
    similarity = config.source_similarity
    if similarity is None:
        return
    if len(similarity) != len(config.sources):
        raise ConfigError(
            f"source_similarity has {len(similarity)} values for {len(config.sources)} sources "
            f"({','.join(config.sources)})"
        )
    if any(not -1.0 <= s <= 1.0 for s in similarity):
        raise ConfigError(f"source_similarity={similarity!r} must hold cosines in [-1, 1]")


def _check_quantize(config: MethodConfig) -> None:
    check_quantize(config.method, config.quantize)


def check_quantize(method: str, quantize: str) -> None:
    """``quantize`` is one of :data:`QUANTIZE`, and ``method`` can take it (a command checks this
    before it loads anything)."""
    if quantize not in QUANTIZE:
        raise one_of("quantize", quantize, QUANTIZE)
    if quantize != "none" and method not in QUANTIZABLE_METHODS:
        raise ConfigError(
            f"quantize={quantize!r} needs a method that keeps the backbone's linears frozen and "
            f"wraps them through peft ({', '.join(QUANTIZABLE_METHODS)}), got method={method!r}"
        )


def _check_layers(name: str, layers: tuple[int, ...] | None) -> None:
    if layers is None:
        return
    if not layers:
        raise ConfigError(f"{name}=() is empty: leave it unset for every layer")
    if any(not isinstance(i, int) or i < 0 for i in layers) or list(layers) != sorted(set(layers)):
        raise ConfigError(f"{name}={layers!r} must be distinct layer indices >= 0, ascending")


def _check_in_range(name: str, layers: Any, num_layers: int) -> None:
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ConfigError(f"{name} has layer {bad[0]}, the backbone has layers 0..{num_layers - 1}")


def from_flat_dict(cls: type[T], data: dict[str, Any], *, what: str) -> T:
    """``cls(**data)`` for a frozen config dataclass, each value coerced to its field's type;
    unknown keys are refused with the known ones."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise one_of(what, unknown[0], sorted(known))
    return cls(**{k: coerce(k, v, known[k].type) for k, v in data.items()})


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a ``--set`` string (or a JSON value) into the type of the field it sets."""
    optional = "None" in str(annotation)
    kind = str(annotation).replace(" | None", "")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        if kind == "str" and isinstance(value, str) and value:
            return value.lower()  # a word a str field may hold: quantize=none
        raise ConfigError(f"{key}={value!r} must not be empty")
    try:
        if kind.startswith("tuple[int"):
            items = value.split(",") if isinstance(value, str) else value
            ints = [int(x) for x in items]
            # layer sets are sets; per-layer values (layer_ranks) keep their order
            return tuple(sorted(set(ints))) if key.endswith("layers") else tuple(ints)
        if kind.startswith("tuple[float"):
            items = value.split(",") if isinstance(value, str) else value
            return tuple(float(x) for x in items)
        if kind.startswith("tuple[str"):
            items = value.split(",") if isinstance(value, str) else value
            return tuple(s.strip() for s in items if s.strip())
        if kind == "bool":
            return _to_bool(key, value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {kind}") from None
    return str(value) if kind == "str" else value


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={value!r} is not a boolean (true/false)")
