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

# Grid studies (fair arms, docs/STUDIES.md): every arm at three learning rates over its own method's
# range, the best on dev then run on three seeds by the seeds phase.
LR_POINTS = 3
SEEDS = (0, 1, 2)

# demo: the README's main job on a laptop CPU (~15 min): real backbone, real data, small sample.
DEMO = {
    "num_samples": 12,
    "train_samples": 3_000,
    "train": {"epochs": 1.0, "evals": 3, "batch_size": 32, "max_length": 64},
}
