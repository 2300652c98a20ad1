"""How long and how to train: optimiser, schedule, evaluation cadence, precision. Frozen, validated,
JSON round-trip.

Field names are public vocabulary (``--set lr=3e-4``, MLflow params). The step arithmetic that the
loop, the AdaLoRA schedule and ASHA must agree on (total steps, warm-up steps, evaluation steps)
lives here, so there is one definition of each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from search_spaces.errors import ConfigError, one_of
from search_spaces.method_config import from_flat_dict

PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on CUDA, fp32 on CPU
# random: the head starts as nn.Linear's default; probe: as a linear probe on the trial's own
# training rows and the frozen backbone (LP-FT, trainables/head_init.py)
HEAD_INITS = ("random", "probe")
MAX_LR = 1.0  # above this AdamW diverges for any model here: almost surely a typo (3e-4 -> 3)
MAX_SEQUENCE_LENGTH = 8192  # no encoder this project tunes has more positions
# Knobs added to the recipe since runs were first recorded: the commit that added each and the
# value that trains as a run saved before it did (a checkpoint's recipe without the knob).
ADDED_KNOBS: dict[str, tuple[str, float]] = {
    "head_lr_scale": ("8752f3f", 1.0),  # before: one learning rate for every parameter
    "head_lr_max": ("613121d", MAX_LR),  # before: the head at lr * head_lr_scale, uncapped
}


def knobs_missing(recipe: dict[str, Any]) -> dict[str, float]:
    """The :data:`ADDED_KNOBS` a saved recipe (``TrainConfig.to_dict()`` of its day) lacks, each
    with the value its run trained with."""
    return {knob: value for knob, (_, value) in ADDED_KNOBS.items() if knob not in recipe}


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. ``max_steps > 0`` overrides ``epochs``.

    The defaults are the PEFT norms for BERT-size encoders: LoRA (Hu et al. 2021, RoBERTa-base GLUE)
    used 4e-4..5e-4 and bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) 1e-4..1e-3,
    and a one-epoch LoRA run on SST-2 with the embedded MiniLM was best at 1e-3 (docs/BENCHMARKS.md:
    3e-4 underfits); full fine-tuning wants ~2e-5. A trial config without ``lr`` gets its own
    method's default instead (the middle of its range, ``trainables.recipe.split_config``), so this
    one serves only code that builds a TrainConfig without a method (benchmarks). Warm-up
    6 % and weight decay 0.01 follow RoBERTa / LoRA; clipping at 1.0 follows BERT.

    ``head_lr_scale``: the classifier head, the one layer trained from scratch, learns at
    ``lr * head_lr_scale`` (its weight decay too, as a group's lr in ``torch.optim.AdamW``). 10 is
    the fine-tuning convention for a new layer over a pretrained net (BVLC Caffe's
    ``examples/finetune_flickr_style``: ``lr_mult: 10`` on the new classifier); measured here at 1,
    3 and 10 on 2,000-row CoLA and SST-2 (docs/STUDIES.md "The 2,000-row CoLA check"): at 1 and 3
    LoRA and AdaLoRA answer one class on CoLA, at 10 both learn it and SST-2 moves within a seed's
    spread. ``1`` is one learning rate for everything (peft's and AdapterHub's way).
    ``head_lr_max`` bounds the head's rate (:attr:`head_lr`) where the multiple would not: a linear
    head over these features is stable up to an absolute step size, whatever the body's rate
    (measured on 2,000 SST-2 rows, docs/TRAINING.md: LoRA at 1e-2 learns on three seeds of three
    with its head at 5e-2, and answers one class on one of three at 1e-1). It never slows the head
    below ``lr``.
    """

    lr: float = 1e-3  # measured: LoRA on SST-2/MiniLM, docs/BENCHMARKS.md
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int = 0  # 0 = train for ``epochs``
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    evals: int = (
        8  # evaluations over the run; the trainable reports once each, so ASHA's max_t = evals
    )
    eval_batch_size: int = 128
    seed: int = 0
    max_length: int = 128  # tokens per example, applied when the data layer tokenises
    precision: str = "auto"
    length_grouping: bool = True
    compile: bool = False
    cuda_graphs: bool = True  # replay each step from a CUDA graph (trainables/graphs.py)
    head_init: str = "random"  # how the classifier head starts: HEAD_INITS
    head_lr_scale: float = 10.0  # the head's learning rate over ``lr`` (see the class doc)
    head_lr_max: float = 0.05  # ... at most this (or ``lr``, where that is higher): ``head_lr``

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise one_of("precision", self.precision, PRECISIONS)
        if self.head_init not in HEAD_INITS:
            raise one_of("head_init", self.head_init, HEAD_INITS)
        for name in ("batch_size", "evals", "eval_batch_size", "max_length"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("max_steps", self.max_steps, low=0)
        _check_int("seed", self.seed, low=0)
        for name in ("lr", "epochs", "warmup_ratio", "weight_decay", "grad_clip", "head_lr_scale",
                     "head_lr_max"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} must be a number")
        if self.max_length > MAX_SEQUENCE_LENGTH:
            raise ConfigError(f"max_length={self.max_length} must be in 1..{MAX_SEQUENCE_LENGTH}")
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"lr={self.lr!r} must be in (0, {MAX_LR}]")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"epochs={self.epochs!r} must be > 0 (or set max_steps > 0)")
        if not self.head_lr_scale > 0:  # `head_lr` stays <= MAX_LR: capped by head_lr_max or lr
            raise ConfigError(f"head_lr_scale={self.head_lr_scale!r} must be > 0")
        if not 0 < self.head_lr_max <= MAX_LR:
            raise ConfigError(f"head_lr_max={self.head_lr_max!r} must be in (0, {MAX_LR}]")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:  # `not >=` also refuses NaN
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")

    @property
    def head_lr(self) -> float:
        """The classifier head's learning rate: ``lr * head_lr_scale``, at most ``head_lr_max``
        unless ``lr`` itself is higher (then ``lr``)."""
        return min(self.lr * self.head_lr_scale, max(self.lr, self.head_lr_max))

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From a JSON-like dict or from ``--set`` strings; unknown keys are refused."""
        return from_flat_dict(cls, data, what="train key")

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps in one pass over ``num_examples`` (the last batch may be short)."""
        if num_examples <= 0:
            raise ConfigError(f"the training split has {num_examples} examples, needs >= 1")
        return math.ceil(num_examples / self.batch_size)

    def total_steps(self, num_examples: int) -> int:
        """Optimizer steps of the whole run (what AdaLoRA's ``total_step`` must be set to)."""
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch(num_examples)))

    def warmup_steps(self, total_steps: int) -> int:
        return round(self.warmup_ratio * total_steps)

    def eval_steps(self, total_steps: int) -> tuple[int, ...]:
        """The ``evals`` steps after which the loop evaluates: evenly spread, the last one final.

        Step ``floor(k * total / evals)`` for k = 1..evals, so the count is exactly ``evals`` (ASHA's
        rungs stay aligned) even when ``total`` is not a multiple of ``evals``.
        """
        if total_steps < self.evals:
            raise ConfigError(
                f"evals={self.evals} exceeds the run's {total_steps} steps: lower evals or train longer"
            )
        return tuple(k * total_steps // self.evals for k in range(1, self.evals + 1))


def _check_int(name: str, value: Any, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
