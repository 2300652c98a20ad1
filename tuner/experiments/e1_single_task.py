from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import DEMO, SMOKE

E1_SINGLE_TASK = register(Experiment(
    name="e1_single_task",
    summary="Every method on SST-2 at one matched budget (±5%), learning rate tuned per method (H1).",
    task="glue/sst2",  # --set task=imdb / newsgroups/bydate for the other E1 tasks
    search=Search(kind="methods", budget_params=600_000, sources=("imdb", "newsgroups/bydate"),
                  methods=("lora", "adalora", "houlsby", "pfeiffer", "prefix", "unipelt",
                           "fusion", "lora_fusion", "bitfit"),
                  # the prefix MLP alone is ~2.6M on MiniLM: flat prefixes fit the budget
                  fixed={"prefix_reparam": False}),
    num_samples=72,  # ~8 learning rates per method
    seeds=(0, 1, 2),
    train={"epochs": 3.0, "evals": 6},
    presets={"smoke": SMOKE, "demo": {**DEMO, "num_samples": 9}},
))  # fmt: skip
