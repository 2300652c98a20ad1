"""LoRA vs AdaLoRA vs rank growth on plateau, at a small and a large budget (study 004).

One experiment per task (``adalora_<task>``; ``analysis.report adalora`` combines them). Every
arm is matched to its budget on all six linears of each layer (``placement=all``, as AdaLoRA's
paper adapts them): small ~ LoRA r=2, large ~ LoRA r=8 on MiniLM. AdaLoRA starts at 1.5x its
target rank and prunes; its final rank per layer and module is read from the saved singular
values and drawn as a heat map. ``lora_grow`` starts at ``start_rank`` and grows when the dev loss
stops improving (needs the loop's ``plateau_hook`` call), up to the largest rank that fits.
"""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE
from tuner.experiments.families import register_family, task_suffix

ADALORA_TASKS = ("glue/sst2", "glue/cola", "glue/mrpc", "glue/rte", "glue/stsb")
BUDGETS = {"small": 85_000, "large": 330_000}  # MiniLM, placement=all: LoRA r=2 / r=8 (+ head)
SMOKE_BUDGETS = {"small": 1_900, "large": 7_200}  # tiny-bert: the same ranks
# rank growth: from 1 by 1 at the small budget (its largest rank is ~2), from 2 by 2 at the large
GROWTH = {"small": {"start_rank": 1, "grow_step": 1}, "large": {"start_rank": 2, "grow_step": 2}}


def adalora_arms(budgets: dict[str, int]) -> tuple[dict, ...]:
    arms = []
    for size, budget in budgets.items():
        arms += [{"method": "lora", "budget_params": budget},
                 {"method": "adalora", "budget_params": budget},
                 {"method": "lora_grow", "budget_params": budget, **GROWTH[size]}]  # fmt: skip
    return tuple({**arm, "placement": "all"} for arm in arms)


_ARMS = adalora_arms(BUDGETS)  # each at LR_POINTS rates of its own method's range, then 3 seeds
_SMOKE_ARMS = adalora_arms(SMOKE_BUDGETS)


def budget_grid_study(
    *, name: str, summary: str, task: str, arms: tuple[dict, ...], smoke_arms: tuple[dict, ...]
) -> Experiment:
    """A grid of budget-matched arms (``arms`` at ``BUDGETS``, ``smoke_arms`` at ``SMOKE_BUDGETS``),
    each at LR_POINTS rates of its own method's range, then 3 seeds: the AdaLoRA and QLoRA studies."""
    return register(Experiment(
        name=name,
        summary=summary,
        task=task,
        search=Search(kind="grid", budget_params=BUDGETS["large"], tolerance=0.05, configs=arms,
                      lr_points=LR_POINTS),
        num_samples=len(arms) * LR_POINTS,
        seeds=SEEDS,
        # no early stop: AdaLoRA prunes late, rank growth needs every plateau, QLoRA's memory is
        # measured on every arm
        grace_period=8,
        train={"epochs": 3.0, "evals": 8, "max_length": 128},
        presets={
            "smoke": {**SMOKE, "num_samples": len(smoke_arms), "seeds": (0,),
                      "search": {"budget_params": SMOKE_BUDGETS["large"], "configs": smoke_arms,
                                 "lr_points": 1},
                      "train": {**SMOKE["train"], "evals": 3}},
            "demo": {"num_samples": len(arms), "train_samples": 3_000, "seeds": (0,),
                     "search": {"configs": arms, "lr_points": 1},
                     "train": {"epochs": 2.0, "evals": 6, "max_length": 64}},
        },
    ))  # fmt: skip


def adalora_study(task: str) -> Experiment:
    return budget_grid_study(
        name=f"adalora_{task_suffix(task)}",
        summary=f"LoRA vs AdaLoRA vs rank growth on plateau on {task} at a small and a large "
        "budget; AdaLoRA's final ranks per layer as a heat map (study 004).",
        task=task,
        arms=_ARMS,
        smoke_arms=_SMOKE_ARMS,
    )


ADALORA = tuple(adalora_study(task) for task in ADALORA_TASKS)
register_family("adalora", tuple(e.name for e in ADALORA))
