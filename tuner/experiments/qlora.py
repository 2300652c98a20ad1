"""LoRA vs AdaLoRA, each on a full-precision and on a 4-bit frozen base (QLoRA), at a small and a
large budget: the comparison study 004 ends with (issue #24).

One experiment per task (``qlora_<task>``; ``analysis.report qlora`` combines them): SST-2 and
CoLA (the mirror has no MNLI or QNLI). The arms are the AdaLoRA study's LoRA and AdaLoRA arms
(placement ``all``, budgets ~ LoRA r=2 / r=8 on MiniLM), each once as loaded and once with
``quantize=nf4`` (bitsandbytes NF4, double quantisation, bf16 compute: trainables/quantize.py).
Quantisation changes no count, so a QLoRA arm has exactly its full-precision twin's trainable
parameters; what it changes is the base's bytes, the peak GPU memory and the speed, which the
report's memory table shows beside the scores (analysis/qlora.py).

Every preset needs CUDA: bitsandbytes 4-bit is refused on a host without it, with one line,
before any data is prepared (tuner/run.py), smoke included: a smoke run of only the unquantised
arms would test nothing this study adds.
"""

from tuner.experiment import Experiment
from tuner.experiments.adalora import BUDGETS, SMOKE_BUDGETS, budget_grid_study
from tuner.experiments.families import register_family, task_suffix

QLORA_TASKS = ("glue/sst2", "glue/cola")
QUANTIZE = ("none", "nf4")


def qlora_arms(budgets: dict[str, int]) -> tuple[dict, ...]:
    """LoRA and AdaLoRA at each budget, on the base as loaded and in 4 bits."""
    return tuple({"method": method, "budget_params": budget, "placement": "all", "quantize": q}
                 for budget in budgets.values() for q in QUANTIZE
                 for method in ("lora", "adalora"))  # fmt: skip


_ARMS = qlora_arms(BUDGETS)  # each at LR_POINTS rates of its own method's range, then 3 seeds
_SMOKE_ARMS = qlora_arms(SMOKE_BUDGETS)


def qlora_study(task: str) -> Experiment:
    return budget_grid_study(
        name=f"qlora_{task_suffix(task)}",
        summary=f"LoRA vs AdaLoRA, full-precision vs 4-bit NF4 base (QLoRA) on {task} at a small "
        "and a large budget: scores, base/adapter MiB, peak GPU memory (study 004; CUDA).",
        task=task,
        arms=_ARMS,
        smoke_arms=_SMOKE_ARMS,
    )


QLORA = tuple(qlora_study(task) for task in QLORA_TASKS)
register_family("qlora", tuple(e.name for e in QLORA))
