"""Where LoRA goes (study 001): attention only, FFN only, everywhere, and layer subsets."""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import SMOKE

RANK = 8  # one rank for every arm: placement alone sets the size (accuracy vs params is the result)
LR = 1e-3  # measured best for LoRA on SST-2 with MiniLM (docs/BENCHMARKS.md)


def placement_arms(num_layers: int, *, seeds: tuple[int, ...]) -> tuple[dict, ...]:
    """Module placements on every layer, then every linear (``all``) on layer subsets: the top
    half, the bottom half and every other layer (the odd ones, the top layer included)."""
    half = num_layers // 2
    subsets = {
        "top": tuple(range(num_layers - half, num_layers)),
        "bottom": tuple(range(half)),
        "every_other": tuple(range(1, num_layers, 2)),
    }
    arms = [{"placement": p} for p in ("attn_all", "ffn", "all")]
    arms += [{"placement": "all", "layers": layers} for layers in dict.fromkeys(subsets.values())]
    return tuple({"method": "lora", "rank": RANK, "lr": LR, **arm, "seed": seed}
                 for seed in seeds for arm in arms)  # fmt: skip


_ARMS = placement_arms(6, seeds=(0, 1, 2))  # MiniLM-L6
_SMOKE_ARMS = placement_arms(2, seeds=(0,))  # tiny-bert: top = every other = (1,)

PLACEMENT = register(Experiment(
    name="placement",
    summary="LoRA r=8 in attention only, FFN only, everywhere, top/bottom half, every other layer: "
            "score, trainable params and training time; Pareto fronts.",
    task="glue/sst2",
    search=Search(kind="grid", match_budget=False, configs=_ARMS),  # sizes follow placement
    num_samples=len(_ARMS),
    grace_period=6,  # every arm runs to the end: its training time is a result
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={
        "smoke": {**SMOKE, "num_samples": len(_SMOKE_ARMS),
                  "search": {"configs": _SMOKE_ARMS}},
        "demo": {"num_samples": len(_ARMS) // 3, "train_samples": 3_000,
                 "search": {"configs": _ARMS[: len(_ARMS) // 3]},
                 "train": {"epochs": 1.0, "evals": 3, "max_length": 64}},
    },
))  # fmt: skip
