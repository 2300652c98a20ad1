"""Preset diffs shared by the experiments: what makes a study small enough to run here and now."""

# smoke: a few CPU minutes on the random tiny BERT (tests, CI): checks the machinery, not accuracy.
# Its budget is for the tiny shape (hidden 32): one static fusion layer is 2,112 parameters.
SMOKE = {
    "backbone": "tiny-bert",
    "num_samples": 4,
    "seeds_top": 1,  # a seeds phase of each arm's best only: fewer CPU trials
    "train_samples": 256,
    "train": {"epochs": 1.0, "evals": 2, "batch_size": 32, "max_length": 64},
    "search": {"budget_params": 4_000},
}

# Grid studies (fair arms, docs/STUDIES.md): every arm at four learning rates over its own method's
# range (the middles of four log-even bins: LoRA's 1e-4..1e-2 gives 1.8e-4, 5.6e-4, 1.8e-3, 5.6e-3),
# the best on dev then run on three seeds by the seeds phase. Four, not three, since the ranges
# widened: three points on a 100x range sit 4.6x apart. At 16 trials per GPU a 6-arm study's 24
# search trials take the same two waves as 18.
LR_POINTS = 4
SEEDS = (0, 1, 2)

# demo: the README's main job on a laptop CPU (~15 min): real backbone, real data, small sample.
DEMO = {
    "num_samples": 12,
    "seeds_top": 1,  # each arm's best only: a laptop's CPU minutes
    "train_samples": 3_000,
    "train": {"epochs": 1.0, "evals": 3, "batch_size": 32, "max_length": 64},
}
