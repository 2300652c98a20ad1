"""What the search knows about a method without building it: one frozen :class:`MethodFacts` per
method, registered with one :func:`register_facts` call that validates it.

A method's facts are its exact accounting (``count``), its learning-rate range, the knobs it
reads, the knob matched to a budget, whether it trains fused in a pool and whether it takes
per-layer ranks. The tables other modules read (``spaces.LR_RANGES``, ``spaces.KNOBS_USED``,
``matching.KNOBS``, ``matching.ONE_RANK_METHODS``) are views of this
registry; :mod:`search_spaces.catalog` holds the registrations, one per method, and fills the
registry when imported (``search_spaces.accounting`` imports it, so every reader sees it full). The torch side
(``trainables.methods.register_method``: builder, paper, library) refuses a method without facts,
and ``tests/test_method_facts.py`` fails on a method without a row in docs/METHODS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from search_spaces.formulas import ParamCount
from search_spaces.method_config import METHODS, MethodConfig
from search_spaces.registry import Registry
from search_spaces.shapes import BackboneShape

Counter = Callable[[MethodConfig, BackboneShape], ParamCount]
# The knob names a budget may turn besides MethodConfig fields: unipelt's three sizes at once.
COMPOSITE_KNOBS = ("sizes",)
CONFIG_FIELDS = tuple(f.name for f in fields(MethodConfig))


@dataclass(frozen=True)
class MethodFacts:
    """One method's facts. ``count`` gives the method's own parameters (head excluded: the
    caller adds it); ``lr_range`` is searched log-uniformly and its geometric middle is the rate of
    a config that sets none; ``knobs`` are the MethodConfig fields the method reads (the others
    are None in a trial's params); ``size_knob`` is what a budget match turns (None: fixed size);
    ``fused_padding``: None, or the method trains as a row of a fused model (``--fuse``, the
    fused pool) and these knobs zero-pad into a larger template of its group (why each is exact:
    :mod:`search_spaces.row_groups`; ``fusable`` says whether it is not None);
    ``per_layer_ranks``: takes a different rank per layer (``layer_ranks``, peft's
    ``rank_pattern``), so a budget match may spread rank units over the layers;
    ``pools_by_default``: fusable, and its rows measured faster than packed processes. Built
    facts are valid: a bad range, knob, size knob or counter raises ``ValueError`` naming it."""

    name: str
    count: Counter
    lr_range: tuple[float, float]
    knobs: tuple[str, ...]
    size_knob: str | None
    fused_padding: tuple[str, ...] | None
    per_layer_ranks: bool
    # its fused rows are measured faster than one trial per actor (docs/BENCHMARKS.md, with the
    # figure beside the registration): ``tuner.run`` pools such studies on a GPU without --fuse
    pools_by_default: bool = False

    @property
    def fusable(self) -> bool:
        return self.fused_padding is not None

    def __post_init__(self) -> None:
        name = self.name
        if not callable(self.count):
            raise ValueError(f"method {name!r}: count={self.count!r} is not callable")
        lo, hi = self.lr_range
        if not 0 < lo < hi:
            raise ValueError(f"method {name!r}: lr_range={self.lr_range!r} must be 0 < low < high")
        unknown = [k for k in self.knobs if k not in CONFIG_FIELDS]
        if unknown:
            raise ValueError(
                f"method {name!r}: knob {unknown[0]!r} is not a MethodConfig field; one of: "
                f"{', '.join(CONFIG_FIELDS)}"
            )
        size = self.size_knob
        if size is not None and size not in self.knobs and size not in COMPOSITE_KNOBS:
            raise ValueError(
                f"method {name!r}: size_knob={size!r} is not among its knobs {self.knobs} "
                f"nor {COMPOSITE_KNOBS}"
            )
        if not isinstance(self.per_layer_ranks, bool):
            raise ValueError(
                f"method {name!r}: per_layer_ranks={self.per_layer_ranks!r} must be True or False"
            )
        if self.per_layer_ranks and "layer_ranks" not in self.knobs:
            raise ValueError(
                f"method {name!r}: per_layer_ranks=True needs layer_ranks in its knobs"
            )
        padding = self.fused_padding
        if padding is not None and (
            not isinstance(padding, tuple) or any(k not in self.knobs for k in padding)
        ):
            raise ValueError(
                f"method {name!r}: fused_padding={padding!r} must be None or a tuple of its "
                f"knobs {self.knobs}"
            )
        if self.pools_by_default and padding is None:
            raise ValueError(f"method {name!r}: pools_by_default=True needs fused_padding")


METHOD_FACTS: Registry[MethodFacts] = Registry("method")


def register_facts(facts: MethodFacts) -> MethodFacts:
    """Register ``facts`` (validated when built); refuses a name outside MethodConfig's
    ``METHODS`` and a method registered twice."""
    if facts.name not in METHODS:
        raise ValueError(
            f"method {facts.name!r} is not in MethodConfig's METHODS: add it there first"
        )
    return METHOD_FACTS.register(facts.name, facts)


__all__ = [
    "COMPOSITE_KNOBS", "CONFIG_FIELDS", "Counter", "METHOD_FACTS", "MethodFacts",
    "register_facts",
]  # fmt: skip
