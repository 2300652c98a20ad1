from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import SMOKE

# Few-shot sizes are a grid axis: nested stratified subsets, so 128 ⊂ 512 ⊂ 1k ⊂ 5k per seed.
_ARMS = tuple(
    {"method": method, "train_samples": k, "seed": seed}
    for method in ("lora", "fusion", "lora_fusion")
    for k in (128, 512, 1_000, 5_000)
    for seed in (0, 1, 2)
)

E2_FEW_SHOT = register(Experiment(
    name="e2_few_shot",
    summary="LoRA vs fusion vs LoRA+fusion with 128/512/1k/5k examples, 3 seeds (H2, H4).",
    task="glue/sst2",
    search=Search(kind="grid", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  configs=_ARMS),
    num_samples=len(_ARMS),
    grace_period=6,  # no early stopping: the low-data variance across seeds is the result
    train={"epochs": 5.0, "evals": 6},
    presets={
        "smoke": {**SMOKE, "num_samples": 3, "search": {**SMOKE["search"], "configs": tuple(
            {"method": m, "train_samples": 64, "seed": 0} for m in ("lora", "fusion", "lora_fusion"))}},
        "demo": {"num_samples": 9, "search": {"configs": tuple(
            {"method": m, "train_samples": k, "seed": 0}
            for m in ("lora", "fusion", "lora_fusion") for k in (128, 512, 1_000))},
            "train": {"epochs": 3.0, "evals": 3, "max_length": 64}},
    },
))  # fmt: skip
