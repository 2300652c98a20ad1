"""What Ray 2.60's OptunaSearch does with a trial ASHA stopped, and what ours does instead."""

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tuner.searcher import FidelityOptunaSearch


def space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    return {"budget": 1}


def drive(cls):
    """Two trials of a two-objective study: one finished, one stopped early with a high score."""
    searcher = cls(space=space, metric=["dev_score", "added_params"], mode=["max", "min"], seed=0)
    searcher.suggest("finished")
    searcher.suggest("stopped")
    searcher.on_trial_result("stopped", {"dev_score": 0.99, "added_params": 10, "fidelity": 1 / 3,
                                         "training_iteration": 1})  # fmt: skip
    searcher.on_trial_complete("finished", {"dev_score": 0.80, "added_params": 20, "fidelity": 1.0})
    searcher.on_trial_complete(
        "stopped", {"dev_score": 0.99, "added_params": 10, "fidelity": 1 / 3}
    )
    return searcher._ot_study


def test_plain_optuna_search_puts_a_stopped_trial_on_the_front():
    study = drive(OptunaSearch)  # the behaviour the project works around
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.values for t in study.best_trials] == [[0.99, 10.0]]


def test_fidelity_search_prunes_the_stopped_trial():
    study = drive(FidelityOptunaSearch)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.values for t in study.best_trials] == [[0.80, 20.0]]


def test_an_errored_trial_is_failed_not_lost():
    searcher = FidelityOptunaSearch(space=space, metric="dev_score", mode="max", seed=0)
    searcher.suggest("t")
    searcher.on_trial_complete("t", None, error=True)
    assert searcher._ot_study.trials[0].state == TrialState.FAIL


def test_every_study_searcher_pickles_and_keeps_sampling_after_a_round_trip(tmp_path):
    """Ray pickles the searcher when it builds the Tuner and at every experiment checkpoint;
    Optuna 5.1's NSGA-II holds a threading.Lock (here added by hand, so the test bites on any
    Optuna version)."""
    import pickle
    import threading

    import ray.cloudpickle

    from tuner.experiments import get_experiment
    from tuner.runner import build_searcher
    from tuner.space import build_space

    for name in ("e4_budget", "e1_single_task"):  # several objectives (NSGA-II), one (TPE)
        exp = get_experiment(name).with_preset("smoke")
        searcher = build_searcher(exp, build_space(exp), seed=0)
        searcher._sampler._probe_lock = threading.Lock()
        searcher._sampler._probe_rlock = threading.RLock()
        ray.cloudpickle.dumps(searcher)  # what Tuner() does
        searcher.suggest("a")
        searcher.save(str(tmp_path / f"{name}.pkl"))  # what an experiment checkpoint does
        again = pickle.loads(pickle.dumps(searcher._sampler))
        assert isinstance(again._probe_lock, type(threading.Lock()))
        assert isinstance(again._probe_rlock, type(threading.RLock()))
        assert again._probe_lock is not searcher._sampler._probe_lock
        restored = build_searcher(exp, build_space(exp), seed=0)
        restored.restore(str(tmp_path / f"{name}.pkl"))
        assert restored.suggest("b")["method"]
        asked = [t for t in restored._ot_study.trials if t.state != TrialState.WAITING]
        assert len(asked) == 2  # the one asked before the save, and "b"
