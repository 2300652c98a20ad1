"""Preset diffs shared by the experiments: what makes a study small enough to run here and now."""

# smoke: a few CPU minutes on the random tiny BERT (tests, CI): checks the machinery, not accuracy.
# Its budget is for the tiny shape (hidden 32): one static fusion layer is 2,112 parameters.
SMOKE = {
    "backbone": "tiny-bert",
    "num_samples": 4,
    "train_samples": 256,
    "train": {"epochs": 1.0, "evals": 2, "batch_size": 32, "max_length": 64},
    "search": {"budget_params": 4_000},
}

# demo: the README's main job on a laptop CPU (~15 min): real backbone, real data, small sample.
DEMO = {
    "num_samples": 12,
    "train_samples": 3_000,
    "train": {"epochs": 1.0, "evals": 3, "batch_size": 32, "max_length": 64},
}
