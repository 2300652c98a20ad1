"""Full fine-tuning vs adapters vs LoRA on every GLUE task of the mirror (study 003), and a
parameters-vs-score curve on SST-2 (adapter sizes, LoRA ranks, top-k layers fine-tuned).

One experiment per task (``glue_methods_<task>``; ``analysis.report glue_methods`` combines
them): a trial picks a method at one of its sizes, then its learning rate, and the seeds phase
re-runs each method's best configuration on dev with three seeds. Each task is scored with its
own metric (CoLA: MCC, MRPC: F1, STS-B: Pearson/Spearman, SST-2 and RTE: accuracy).
"""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE
from tuner.experiments.families import register_family, task_suffix

GLUE_TASKS = ("glue/sst2", "glue/cola", "glue/mrpc", "glue/stsb", "glue/rte")
# Study 003 searched adapter bottlenecks {64, 256} and LoRA ranks {4, 16} on BERT-base (hidden
# 768); MiniLM has half the width, so the adapters get a quarter of theirs relative to hidden.
_ARMS = ({"method": "full"},
         {"method": "houlsby", "bottleneck": 16}, {"method": "houlsby", "bottleneck": 64},
         {"method": "lora", "rank": 4, "alpha": 8.0}, {"method": "lora", "rank": 16, "alpha": 32.0})  # fmt: skip
_SMOKE_ARMS = ({"method": "full"}, {"method": "houlsby", "bottleneck": 4},
               {"method": "lora", "rank": 2, "alpha": 4.0})  # fmt: skip


def glue_methods(task: str) -> Experiment:
    return register(Experiment(
        name=f"glue_methods_{task_suffix(task)}",
        summary=f"Full fine-tuning vs Houlsby adapters vs LoRA on {task}: size and learning rate "
                "selected on dev per method, 3 seeds of each method's best (study 003).",
        task=task,
        search=Search(kind="choices", match_budget=False, configs=_ARMS),
        num_samples=25,  # ~5 learning rates per arm
        # ASHA decides after half the evaluations: at grace 1 it stopped every full fine-tuning
        # and LoRA trial on RTE (dev at chance after one evaluation; H100 run, docs/STUDIES.md)
        grace_period=3,
        seeds=(0, 1, 2),
        train={"epochs": 3.0, "evals": 6, "max_length": 128},
        presets={
            # two evaluations: ASHA may not stop a smoke trial, so every arm reaches the table
            "smoke": {**SMOKE, "num_samples": 3, "seeds": (0,), "grace_period": 2,
                      "search": {"configs": _SMOKE_ARMS}},
            "demo": {"num_samples": 10, "seeds": (0,), "train_samples": 2_000,
                     "train": {"epochs": 1.0, "evals": 3, "max_length": 64}},
        },
    ))  # fmt: skip


GLUE_METHODS = tuple(glue_methods(task) for task in GLUE_TASKS)
register_family("glue_methods", tuple(e.name for e in GLUE_METHODS))


def _curve_arms(num_layers: int, sizes: tuple[int, ...], ranks: tuple[int, ...],
                depths: tuple[int, ...]) -> tuple[dict, ...]:  # fmt: skip
    """Houlsby sizes, LoRA ranks (alpha / r = 2) and full fine-tuning of the top k layers (k =
    the depth: every weight, embeddings included); each point at LR_POINTS rates of its method's
    range, its best on dev then on three seeds."""
    arms = [{"method": "houlsby", "bottleneck": b} for b in sizes]
    arms += [{"method": "lora", "rank": r, "alpha": 2.0 * r} for r in ranks]
    arms += [{"method": "full", **({"layers": tuple(range(num_layers - k, num_layers))}
                                   if k < num_layers else {})} for k in depths]  # fmt: skip
    return tuple(arms)


_CURVE = _curve_arms(6, (2, 8, 32, 128), (1, 4, 16, 64), (1, 2, 4, 6))
_SMOKE_CURVE = _curve_arms(2, (2, 8), (1, 4), (1, 2))

GLUE_CURVE = register(Experiment(
    name="glue_curve",
    summary="Score vs trainable parameters on SST-2: Houlsby sizes, LoRA ranks, top-k layers "
            "fine-tuned (study 003's curve), 3 seeds each.",
    task="glue/sst2",
    search=Search(kind="grid", match_budget=False, configs=_CURVE, lr_points=LR_POINTS),
    num_samples=len(_CURVE) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,  # every point of the curve runs to the end
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={
        "smoke": {**SMOKE, "num_samples": len(_SMOKE_CURVE), "seeds": (0,),
                  "search": {"configs": _SMOKE_CURVE, "lr_points": 1}},
        "demo": {"num_samples": len(_CURVE), "train_samples": 3_000, "seeds": (0,),
                 "search": {"lr_points": 1},
                 "train": {"epochs": 1.0, "evals": 3}},
    },
))  # fmt: skip
