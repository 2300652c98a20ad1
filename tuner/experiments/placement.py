"""Where LoRA goes (study 001): attention only, FFN only, everywhere, and layer subsets."""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE

RANK = 8  # one rank for every arm: placement alone sets the size (accuracy vs params is the result)


def placement_arms(num_layers: int) -> tuple[dict, ...]:
    """Module placements on every layer, then every linear (``all``) on layer subsets: the top
    half, the bottom half and every other layer (the odd ones, the top layer included). Each arm
    runs at LR_POINTS rates of LoRA's range: a placement that trains fewer weights may want more."""
    half = num_layers // 2
    subsets = {
        "top": tuple(range(num_layers - half, num_layers)),
        "bottom": tuple(range(half)),
        "every_other": tuple(range(1, num_layers, 2)),
    }
    arms = [{"placement": p} for p in ("attn_all", "ffn", "all")]
    arms += [{"placement": "all", "layers": layers} for layers in dict.fromkeys(subsets.values())]
    return tuple({"method": "lora", "rank": RANK, **arm} for arm in arms)


_ARMS = placement_arms(6)  # MiniLM-L6
_SMOKE_ARMS = placement_arms(2)  # tiny-bert: top = every other = (1,)

PLACEMENT = register(Experiment(
    name="placement",
    summary="LoRA r=8 in attention only, FFN only, everywhere, top/bottom half, every other layer: "
            "score, trainable params and training time; Pareto fronts.",
    task="glue/sst2",
    search=Search(kind="grid", match_budget=False, configs=_ARMS,  # sizes follow placement
                  lr_points=LR_POINTS),
    num_samples=len(_ARMS) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,  # every arm runs to the end: its training time is a result
    timed=True,  # so tuner.run does not pool it by itself (--fuse K still does)
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={
        "smoke": {**SMOKE, "num_samples": len(_SMOKE_ARMS), "seeds": (0,),
                  "search": {"configs": _SMOKE_ARMS, "lr_points": 1}},
        "demo": {"num_samples": len(_ARMS), "train_samples": 3_000, "seeds": (0,),
                 "search": {"lr_points": 1},
                 "train": {"epochs": 1.0, "evals": 3, "max_length": 64}},
    },
))  # fmt: skip
