"""One fused group of a pool (:mod:`trainables.fused.pool`): the trials of one row signature
(:func:`search_spaces.row_groups.row_signature`) as the rows of one fused model, its template
and its step. Plain LoRA rows are a :class:`~trainables.fused.model.FusedLoRA` (hand-written
batched LoRA linears, packed batches, CUDA graphs); the other row methods a
:class:`~trainables.fused.rows.FusedRows`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainables.fused.model import FusedLoRA, check_members
from trainables.fused.pool_trial import PoolTrial
from trainables.fused.rows import FusedRows, check_rows
from trainables.fused.step import FusedStep
from trainables.fused.train import prepare_fused
from trainables.model import PeftClassifier
from trainables.prepared import PreparedData
from trainables.train_config import TrainConfig


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


__all__ = ["PoolGroup", "build_group", "check_fits"]
