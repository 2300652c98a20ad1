"""The benchmarks of docs/BENCHMARKS.md, apart from the library (``python -m tuner.bench``).

- :mod:`tuner.bench.cli`: the command line and its suites; :mod:`tuner.bench.record` the
  JSON/markdown record of a suite.
- :mod:`tuner.bench.trial`: one trial, our loop against the Hugging Face ``Trainer``.
- :mod:`tuner.bench.packing`: 1, 2, 4, ... trials sharing one GPU (processes or fused);
  :mod:`tuner.bench.packing_tune` the same levels through Ray Tune.
- :mod:`tuner.bench.search`: finished studies compared (time to near-best, trials per GPU-hour).
- :mod:`tuner.bench.hpsearch`: a study's configs run the usual way
  (:mod:`tuner.bench.hpsearch_baseline` runs the search, :mod:`tuner.bench.hpsearch_trainer`
  what each of its trials runs), paired with the study's trials.

Nothing is imported here: ``python -m tuner.bench.packing worker`` starts without the rest.
"""
