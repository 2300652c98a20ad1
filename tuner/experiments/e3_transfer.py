from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import SMOKE

_ARMS = tuple(
    {"method": m, "seed": s} for m in ("lora", "fusion", "lora_fusion") for s in (0, 1, 2)
)

E3_TRANSFER = register(Experiment(
    name="e3_transfer",
    summary="Source adapters (SST-2, 20 Newsgroups, IMDB) fused with LoRA on TweetEval sentiment (H2).",
    task="tweet_eval/sentiment",
    search=Search(kind="grid", budget_params=600_000,
                  sources=("glue/sst2", "newsgroups/bydate", "imdb"), configs=_ARMS),
    num_samples=len(_ARMS),
    grace_period=6,  # every arm runs to the end: the deltas between arms are the result
    train={"epochs": 2.0, "evals": 6, "max_length": 96},
    presets={"smoke": {**SMOKE, "num_samples": 3, "search": {**SMOKE["search"], "configs": _ARMS[::3]}},
             "demo": {"num_samples": 3, "train_samples": 3_000, "search": {"configs": _ARMS[::3]},
                      "train": {"epochs": 1.0, "evals": 3, "max_length": 64}}},
))  # fmt: skip

E3_SHIFT = register(Experiment(
    name="e3_shift",
    summary="Trained on SST-2, scored on the domain-shift sets MR and CR: LoRA vs fusion vs hybrid (H2).",
    task="glue/sst2",
    search=Search(kind="grid", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  configs=_ARMS),
    num_samples=len(_ARMS),
    grace_period=6,
    extra_tests=("sentences/mr", "sentences/cr"),
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={"smoke": {**SMOKE, "num_samples": 3, "search": {**SMOKE["search"], "configs": _ARMS[::3]}}},
))  # fmt: skip
