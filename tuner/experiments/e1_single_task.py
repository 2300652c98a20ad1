from tuner.experiment import Experiment, Search, register
from tuner.experiments._presets import DEMO, SMOKE

E1_SINGLE_TASK = register(Experiment(
    name="e1_single_task",
    summary="Every method on one task (SST-2; IMDB with --set task=imdb) at one matched budget (±5%), learning rate tuned per method (H1).",
    # the other E1 task: --set task=imdb sources=glue/sst2,newsgroups/bydate (a study never fuses
    # its own task: tuner.experiment.own_task_source)
    task="glue/sst2",
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
