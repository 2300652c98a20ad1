"""The training core: one step/plan/report design that a model trained alone
(:func:`trainables.training.loop.fit`), K fused trials (:func:`trainables.fused.train.fit_fused`)
and a trial of a fused pool (:mod:`trainables.fused.pool`) share.

* :mod:`.plan`: what a run fixes before its first step (steps, evaluation steps, schedule, graphs
  or not) and the best-score rule, in the metric's ``mode``;
* :mod:`.steps`: the training step, replayed from CUDA graphs (:mod:`.graphs`) or eager;
* :mod:`.batching` and :mod:`.packed`: batches padded to their longest row, or packed;
* :mod:`.progress`: a run's tally, its evaluation reports and result, its training clock;
* :mod:`.state`: the loop state a run resumes from;
* :mod:`.loop`: :func:`~.loop.fit`;
* :mod:`.report`: a trial's report dicts for Tune and MLflow, the same keys for every path.

Import from the modules; this package imports none of them (``trainables.inference`` takes its
batches from :mod:`.batching`, and :mod:`.loop` evaluates through ``trainables.inference``).
"""
