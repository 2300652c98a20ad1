from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import LR_POINTS, SEEDS, SMOKE

# Few-shot sizes are a grid axis: nested stratified subsets, so 128 ⊂ 512 ⊂ 1k ⊂ 5k per seed.
# Each (method, size) arm runs at LR_POINTS rates of its method's range; its best on dev, 3 seeds.
_ARMS = tuple(
    {"method": method, "train_samples": k}
    for method in ("lora", "fusion", "lora_fusion")
    for k in (128, 512, 1_000, 5_000)
)

E2_FEW_SHOT = register(Experiment(
    name="e2_few_shot",
    summary="LoRA vs fusion vs LoRA+fusion with 128/512/1k/5k examples, learning rate chosen on "
            "dev per arm, 3 seeds (H2, H4).",
    task="glue/sst2",
    search=Search(kind="grid", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  configs=_ARMS, lr_points=LR_POINTS),
    num_samples=len(_ARMS) * LR_POINTS,
    seeds=SEEDS,
    grace_period=6,  # no early stopping: the low-data variance across seeds is the result
    train={"epochs": 5.0, "evals": 6},
    presets={
        "smoke": {**SMOKE, "num_samples": 3, "seeds": (0,), "search": {
            **SMOKE["search"], "lr_points": 1, "configs": tuple(
                {"method": m, "train_samples": 64} for m in ("lora", "fusion", "lora_fusion"))}},
        "demo": {"num_samples": 9, "seeds": (0,), "search": {"lr_points": 1, "configs": tuple(
            {"method": m, "train_samples": k}
            for m in ("lora", "fusion", "lora_fusion") for k in (128, 512, 1_000))},
            "train": {"epochs": 3.0, "evals": 3, "max_length": 64}},
    },
))  # fmt: skip
