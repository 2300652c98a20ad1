from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import DEMO, SMOKE

E4_BUDGET = register(Experiment(
    name="e4_budget",
    summary="Split one trainable-parameter budget between LoRA rank, adapter size and fusion sources (H3).",
    task="tweet_eval/sentiment",
    # 600k trainable on MiniLM admits every split: one dynamic fusion layer (443k) + LoRA r~17,
    # static fusion on 2 layers + LoRA r~1, or LoRA alone at r~65.
    search=Search(kind="budget_split", budget_params=600_000, tolerance=0.05,
                  sources=("glue/sst2", "newsgroups/bydate", "imdb")),
    # Trainable params are pinned to the budget (±5%), so the front that means something is
    # accuracy vs added params: what the frozen sources and fusion cost to store and serve.
    objectives=(("dev_score", "max"), ("added_params", "min")),
    num_samples=64,   # enough for NSGA-II to leave its (stratified) first generation
    # the seeds phase: each method's best split on dev (lora, fusion, lora_fusion) re-run on
    # three seeds, so H3 is decided from this study alone on seed pairs with an interval
    seeds=(0, 1, 2),
    grace_period=1,   # ASHA may stop after the first evaluation: bad splits show early
    train={"epochs": 2.0, "evals": 6, "max_length": 96},  # tweets: 99% fit in 96 tokens
    presets={"smoke": SMOKE, "demo": DEMO},
))  # fmt: skip
