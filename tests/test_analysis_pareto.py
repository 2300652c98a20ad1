"""Pareto fronts on synthetic trials with known answers (pure: no Ray, no MLflow)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.pareto import dominated_mask, optuna_study, pareto_front
from analysis.synthetic import trial, trials_frame
from search_spaces.errors import ConfigError

# (trial_id, trainable_params, test score): B and F tie (both on the front), C and E are dominated.
POINTS = [("A", 100, 0.70), ("B", 200, 0.80), ("C", 300, 0.75), ("D", 400, 0.90),
          ("E", 150, 0.60), ("F", 200, 0.80)]  # fmt: skip
FRONT = ["A", "B", "F", "D"]


def frame(extra=()):
    records = [trial(tid, params={"method": "lora", "trainable_params": n}, dev=s, test=s)
               for tid, n, s in POINTS]  # fmt: skip
    return trials_frame([*records, *extra])


def test_known_front_and_dominated_points():
    info = pareto_front(frame())
    assert info.front["trial_id"].tolist() == FRONT  # sorted by params, then by score
    assert sorted(info.dominated["trial_id"]) == ["C", "E"]
    assert info.excluded.empty


def test_stopped_trial_with_a_high_low_fidelity_score_is_not_on_the_front():
    stopped = trial("S", params={"method": "lora_fusion", "trainable_params": 50}, dev=0.99,
                    status="stopped", curve=[0.99])  # fmt: skip
    info = pareto_front(frame([stopped]), y="dev_score")
    assert "S" not in set(info.front["trial_id"]) | set(info.dominated["trial_id"])
    assert info.front["trial_id"].tolist() == FRONT
    row = info.excluded.set_index("trial_id").loc["S"]
    assert row["reason"] == "stopped at fidelity 0.33"


def test_completed_trial_without_the_objective_is_excluded_with_a_reason():
    uncounted = trial("U", params={"method": "lora"}, dev=0.99)
    info = pareto_front(frame([uncounted]))
    assert info.excluded.set_index("trial_id").loc["U", "reason"] == "no trainable_params"
    assert info.front["trial_id"].tolist() == FRONT


def test_modes_flip_the_front():
    info = pareto_front(frame(), x_mode="max", y_mode="min")
    assert sorted(info.front["trial_id"]) == ["C", "D", "E"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"x_mode": "least"}, "x_mode='least'"), ({"y": "accuracy"}, "'accuracy' is not a column")],
)
def test_bad_input_names_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pareto_front(frame(), **kwargs)


def test_optuna_study_has_the_same_front_and_keeps_stopped_trials_off_it():
    stopped = trial("S", params={"method": "lora", "trainable_params": 50}, dev=0.99,
                    status="stopped", curve=[0.99])  # fmt: skip
    study = optuna_study(frame([stopped]), (("trainable_params", "min"), ("dev_score", "max")))
    best = sorted(t.user_attrs["trial_id"] for t in study.best_trials)
    assert best == sorted(FRONT)
    states = {t.user_attrs["trial_id"]: t.state.name for t in study.trials}
    assert states["S"] == "PRUNED"


def test_front_is_chosen_on_dev_when_test_disagrees_and_test_is_reported_beside_it():
    records = [trial("A", params={"method": "lora", "trainable_params": 10}, dev=0.9, test=0.5),
               trial("B", params={"method": "lora", "trainable_params": 20}, dev=0.8, test=0.95)]  # fmt: skip
    info = pareto_front(trials_frame(records))
    assert info.y == "dev_score"
    assert info.front["trial_id"].tolist() == ["A"]
    assert info.front["test_score"].tolist() == [0.5]
    assert info.dominated["trial_id"].tolist() == ["B"]
    study = optuna_study(trials_frame(records))
    assert [t.user_attrs["trial_id"] for t in study.best_trials] == ["A"]
    for objective in ("test_score", "test"):
        with pytest.raises(ConfigError, match="chosen on dev"):
            pareto_front(trials_frame(records), y=objective)
    with pytest.raises(ConfigError, match="chosen on dev"):
        optuna_study(trials_frame(records), (("test_score", "max"),))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=25))
def test_dominated_mask_agrees_with_brute_force(pairs):
    points = np.array(pairs, dtype=float)
    mask = dominated_mask(points, ("min", "max"))
    for i, (x, y) in enumerate(pairs):
        beaten = any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in pairs)
        assert mask[i] == beaten
    assert not mask.all()  # a non-empty set always has a front
