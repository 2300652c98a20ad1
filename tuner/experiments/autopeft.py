"""AutoPEFT (study 002): search per-layer modules and sizes for score and size at once, against
UniPELT and the single methods, on SST-2.

Two objectives (dev score up, trainable parameters down), so NSGA-II searches and the result is a
Pareto front. A trial is either ``autopeft`` (one of serial adapter, parallel adapter, prefix,
LoRA, nothing in each layer; the sizes of the types it used) or a baseline arm at its own size;
every trial tunes its learning rate. The analysis compares the front with UniPELT and with the
best single method chosen on dev.
"""

from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import SMOKE

# Flat prefixes: the reparametrisation MLP alone is 2.6M on MiniLM and would decide every front.
_FIXED = {"prefix_reparam": False}
_BASELINES = (
    {"method": "unipelt"},  # rank 8, bottleneck 24, prefix 16 (MethodConfig's defaults)
    {"method": "pfeiffer", "bottleneck": 24},
    {"method": "houlsby", "bottleneck": 24},
    {"method": "lora", "rank": 8},
    {"method": "prefix", "prefix_length": 16},
)
_SMOKE_BASELINES = ({"method": "unipelt", "rank": 2, "bottleneck": 4, "prefix_length": 2},
                    {"method": "lora", "rank": 2})  # fmt: skip

AUTOPEFT = register(Experiment(
    name="autopeft",
    summary="AutoPEFT: per-layer serial/parallel adapter, prefix, LoRA or nothing, searched by "
            "NSGA-II for dev score and trainable parameters, vs UniPELT and single methods.",
    task="glue/sst2",
    search=Search(kind="autopeft", match_budget=False, configs=_BASELINES, fixed=_FIXED),
    objectives=(("dev_score", "max"), ("trainable_params", "min")),
    num_samples=64,  # NSGA-II: a random generation of 16, then three evolved ones
    grace_period=2,
    train={"epochs": 2.0, "evals": 6, "max_length": 64},
    presets={
        "smoke": {**SMOKE, "num_samples": 4,
                  "search": {"configs": _SMOKE_BASELINES, "sizes": {
                      "bottleneck": (2, 4), "parallel_bottleneck": (2, 4),
                      "prefix_length": (2,), "rank": (1, 2)}}},
        "demo": {"num_samples": 16, "train_samples": 3_000,
                 "train": {"epochs": 1.0, "evals": 3}},
    },
))  # fmt: skip
