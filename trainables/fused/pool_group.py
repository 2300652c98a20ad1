"""One fused group of a pool (:mod:`trainables.fused.pool`): the trials of one row signature
(:func:`search_spaces.row_groups.row_signature`) as the rows of one fused model, its template
and its step. Plain LoRA rows are a :class:`~trainables.fused.model.FusedLoRA` (hand-written
batched LoRA linears, packed batches, CUDA graphs); the other row methods a
:class:`~trainables.fused.rows.FusedRows`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from search_spaces.row_groups import PADDED, holds, max_rank, pads
from trainables.fused.model import FusedLoRA, check_members
from trainables.fused.pool_trial import PoolTrial
from trainables.fused.rows import FusedRows, check_rows
from trainables.fused.step import FusedStep
from trainables.fused.train import prepare_fused
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig


@dataclass(frozen=True)
class RowLimits:
    """The largest sizes a pool's rows hold (smaller trials pad into them): LoRA ``rank``,
    ``bottleneck`` of a trainable bottleneck adapter and ``target_bottleneck`` (None: the first
    trial's of its group), the LoRA placement of plain LoRA rows (``placement``) and of
    LoRA+AdapterFusion rows (``lora_fusion_placement``; None: the first trial's), the fusion
    ``sources`` a row may fuse (None: the first trial's of its group), the ``fusion_layers`` a
    row may fuse at (None: every layer), and the ``fusion`` type of fusion rows ("dynamic" holds
    static trials too; None: the first trial's, and a dynamic trial does not fit a static group:
    :func:`~trainables.fused.rows.check_rows` refuses it)."""

    rank: int = 16
    bottleneck: int | None = None
    target_bottleneck: int | None = None
    placement: str | None = None
    sources: tuple[str, ...] | None = None
    lora_fusion_placement: str | None = None
    fusion: str | None = None
    fusion_layers: tuple[int, ...] | None = None

    def placement_of(self, method: str) -> str | None:
        """The placement ``method``'s rows hold LoRA on (None: the first trial's of its group)."""
        return {"lora": self.placement, "lora_fusion": self.lora_fusion_placement}.get(method)

    def template(self, method: MethodConfig) -> MethodConfig:
        """The method config of the template of ``method``'s group, raised to these limits."""
        padded = PADDED[method.method]
        changes: dict[str, Any] = {}
        if "rank" in padded:
            changes.update(rank=self.rank, layer_ranks=None)
            placement = self.placement_of(method.method)
            if method.method != "lora" or placement is not None:
                changes["layers"] = None
            if placement is not None:
                changes["placement"] = placement
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
        rank = max_rank(method)
        if "rank" in PADDED[method.method] and rank > self.rank:
            raise ConfigError(f"the fused pool takes LoRA trials of rank <= {self.rank}, not "
                              f"method={method.method!r} rank={rank}")  # fmt: skip
        placement = self.placement_of(method.method)
        if placement is not None and not holds(placement, [method.placement]):
            raise ConfigError(f"the fused pool's {method.method} rows hold LoRA on "
                              f"placement={placement!r}, which lacks some linears of "
                              f"placement={method.placement!r}")  # fmt: skip
        for name in ("bottleneck", "target_bottleneck"):
            limit, value = getattr(self, name), getattr(method, name)
            if name in PADDED[method.method] and limit is not None and value > limit:
                raise ConfigError(f"the fused pool takes {name} <= {limit}, not {name}={value}")
        if "sources" in PADDED[method.method] and self.sources is not None:
            extra = sorted(set(method.sources) - set(self.sources))
            if extra:
                raise ConfigError(f"the fused pool's rows fuse sources {','.join(self.sources)}, "
                                  f"not {extra[0]!r}")  # fmt: skip
        layers, own = self.fusion_layers, method.fusion_layers
        outside = own is None or not set(own) <= set(layers or ())
        if pads(method, "fusion_layers") and layers is not None and outside:
            raise ConfigError(f"the fused pool's rows fuse at layers "
                              f"{','.join(map(str, layers))}, not fusion_layers="
                              f"{'every layer' if own is None else ','.join(map(str, own))}")  # fmt: skip


def unions_adapters(method: MethodConfig) -> bool:
    """Whether a trial fuses the union of its group's adapters (a target one too, if any has it)."""
    return method.method in ("fusion", "lora_fusion") and method.fusion_init == "uniform"


def check_fits(template: PeftClassifier, member: PeftClassifier) -> None:
    """Refuse ``member`` if it cannot be a row of ``template``'s group, naming why."""
    if template.config.method == "lora":
        check_members([template, member], subset=True)
    else:
        check_rows(template, [member])


@dataclass(eq=False)
class PoolGroup:
    """A group's fused model of ``slots`` rows, its step and the trials in its rows."""

    template: PeftClassifier
    train: TrainConfig
    model: FusedLoRA | FusedRows
    stepper: FusedStep
    rows: list[PoolTrial | None]
    loss_sums: torch.Tensor  # each row's training loss since its last eval
    trials: int = 0  # trials ever admitted
    label: str = field(default="")

    def free(self) -> int:
        return sum(m is None for m in self.rows)


def build_group(
    template: PeftClassifier, train: TrainConfig, data: PreparedData, *, slots: int, device: str
) -> PoolGroup:
    """A group's fused model, its rows copies of ``template`` (each overwritten as a trial is
    admitted), readied as :func:`fit_fused` readies its model (a bf16 backbone on GPUs)."""
    torch.manual_seed(train.seed)  # dropout masks: one generator for the fused model
    if template.config.method == "lora":
        model: FusedLoRA | FusedRows = FusedLoRA([template] * slots)
    else:
        model = FusedRows([template] * slots, template=template)
    # the pool's other groups train on: the device's peak memory keeps counting
    _, stepper = prepare_fused(model, len(data.train), [train] * slots, task_kind=data.task_kind,
                               metric=data.metric, device=device, fresh_peak=False)  # fmt: skip
    with torch.no_grad():
        stepper.lr.zero_()
    model.train()
    config = template.config
    return PoolGroup(template, train, model, stepper, [None] * slots,
                     torch.zeros(slots, device=device), label=config.method)  # fmt: skip


__all__ = ["PoolGroup", "RowLimits", "build_group", "check_fits"]
