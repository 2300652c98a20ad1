from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE

# each method at LR_POINTS rates of its own range; its best on dev, then 3 seeds
_ARMS = tuple({"method": m} for m in ("lora", "fusion", "lora_fusion"))
# the smoke runs the whole path small: two rates per arm, then each arm's best on a second seed
_SMOKE = {**SMOKE, "num_samples": 2 * len(_ARMS), "seeds": (0, 1),
          "search": {**SMOKE["search"], "lr_points": 2}}  # fmt: skip

E3_TRANSFER = register(Experiment(
    name="e3_transfer",
    summary="Source adapters (SST-2, 20 Newsgroups, IMDB) fused with LoRA on TweetEval sentiment (H2).",
    task="tweet_eval/sentiment",
    search=Search(kind="grid", budget_params=600_000,
                  sources=("glue/sst2", "newsgroups/bydate", "imdb"), configs=_ARMS,
                  lr_points=LR_POINTS),
    num_samples=len(_ARMS) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,  # every arm runs to the end: the deltas between arms are the result
    train={"epochs": 2.0, "evals": 6, "max_length": 96},
    presets={"smoke": _SMOKE,
             "demo": {"num_samples": 3, "train_samples": 3_000, "seeds": (0,),
                      "search": {"lr_points": 1},
                      "train": {"epochs": 1.0, "evals": 3, "max_length": 64}}},
))  # fmt: skip

E3_SHIFT = register(Experiment(
    name="e3_shift",
    summary="Trained on SST-2, scored on the domain-shift sets MR and CR: LoRA vs fusion vs hybrid (H2).",
    task="glue/sst2",
    search=Search(kind="grid", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  configs=_ARMS, lr_points=LR_POINTS),
    num_samples=len(_ARMS) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,
    extra_tests=("sentences/mr", "sentences/cr"),
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={"smoke": {**SMOKE, "num_samples": len(_ARMS), "seeds": (0,),
                       "search": {**SMOKE["search"], "lr_points": 1}}},
))  # fmt: skip
