"""The hybrid's novelty knobs (study plan, section 9) against the plain hybrid, at one budget.

Every arm is lora_fusion with static fusion in every layer over the same three sources and LoRA
on three layers, its rank matched to the budget: the four arms hold exactly the same trainable
parameters. ``fusion_init=similarity`` gives fusion a prior from the sources' cosine similarity
to the target (measured from the data when the study starts); ``lora_placement_rule=
fusion_entropy`` puts the three LoRA layers where fusion attention entropy is highest after a
warm-up, instead of the top three.
"""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE

_KNOBS = (
    {},  # the plain hybrid
    {"fusion_init": "similarity"},
    {"lora_placement_rule": "fusion_entropy"},
    {"fusion_init": "similarity", "lora_placement_rule": "fusion_entropy"},
)


def novelty_arms(top: tuple[int, ...]) -> tuple[dict, ...]:
    """The four arms, each at LR_POINTS rates of lora_fusion's range (a knob may move its best)."""
    base = {"method": "lora_fusion", "fusion": "static", "fusion_layers": None, "layers": top}
    return tuple({**base, **knobs} for knobs in _KNOBS)


_ARMS = novelty_arms((3, 4, 5))  # MiniLM: LoRA on 3 of 6 layers
_SMOKE_ARMS = novelty_arms((1,))  # tiny-bert: 1 of 2

NOVELTY = register(Experiment(
    name="novelty",
    summary="Hybrid LoRA+fusion with task-similarity guided fusion and/or fusion-entropy LoRA "
            "placement vs the plain hybrid, equal trainable parameters, 3 seeds.",
    task="tweet_eval/sentiment",
    # static fusion on all 6 layers (1.77M) + LoRA r~16 on 3 layers: 1.85M trainable
    search=Search(kind="grid", budget_params=1_850_000, tolerance=0.05,
                  sources=("glue/sst2", "imdb", "newsgroups/bydate"), configs=_ARMS,
                  lr_points=LR_POINTS),
    num_samples=len(_ARMS) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,  # every arm runs to the end: the deltas between arms are the result
    train={"epochs": 2.0, "evals": 6, "max_length": 96},
    presets={
        # tiny: static fusion on both layers (4,224) + LoRA r~4 on one layer
        "smoke": {**SMOKE, "num_samples": len(_SMOKE_ARMS), "seeds": (0,),
                  "search": {"budget_params": 4_800, "configs": _SMOKE_ARMS, "lr_points": 1}},
        "demo": {"num_samples": len(_ARMS), "train_samples": 3_000, "seeds": (0,),
                 "search": {"lr_points": 1},
                 "train": {"epochs": 1.0, "evals": 3, "max_length": 64}},
    },
))  # fmt: skip
