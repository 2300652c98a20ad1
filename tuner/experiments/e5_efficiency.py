from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import SMOKE

_METHODS = ("full", "bitfit", "lora", "adalora", "houlsby", "pfeiffer", "prefix", "unipelt",
            "fusion", "lora_fusion")  # fmt: skip

E5_EFFICIENCY = register(Experiment(
    name="e5_efficiency",
    summary="Throughput, time to target accuracy, peak memory and inference latency per method.",
    task="glue/sst2",
    search=Search(kind="grid", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  configs=tuple({"method": m} for m in _METHODS)),
    num_samples=len(_METHODS),
    grace_period=8,  # never stop early: time-to-target needs the whole curve
    timed=True,  # throughput per method: tuner.run never pools it by itself
    train={"epochs": 1.0, "evals": 8},
    presets={"smoke": {**SMOKE, "num_samples": 3, "search": {**SMOKE["search"], "configs": tuple(
        {"method": m} for m in ("bitfit", "lora", "pfeiffer"))}}},
))  # fmt: skip
