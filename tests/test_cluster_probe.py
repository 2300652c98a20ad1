"""The probe's verdict, computed from synthetic trials and nodes (no Ray)."""

from __future__ import annotations

from cluster.probe import placement

NODES = [
    {"node_id": "head", "cpus": 2},
    {"node_id": "gpu1", "cpus": 4},
    {"node_id": "idle-0cpu", "cpus": 0},
]


def trial(trial_id: str, node: str | None, checkpoint_node: str | None = "same") -> dict:
    return {"trial_id": trial_id, "node_id": node,
            "checkpoint_node_id": node if checkpoint_node == "same" else checkpoint_node}  # fmt: skip


def test_every_node_with_cpus_used_is_ok() -> None:
    verdict = placement([trial("a", "head"), trial("b", "gpu1"), trial("c", "gpu1")], NODES)
    assert verdict["ok"]
    assert verdict["trials_per_node"] == {"head": 1, "gpu1": 2}
    assert verdict["idle_nodes"] == []  # a node without CPUs is not expected to run trials


def test_a_node_that_ran_nothing_fails_the_probe() -> None:
    verdict = placement([trial("a", "head"), trial("b", "head")], NODES)
    assert not verdict["ok"] and verdict["idle_nodes"] == ["gpu1"]


def test_an_unreadable_checkpoint_fails_the_probe() -> None:
    """A checkpoint the driver cannot read back means the storage is not shared."""
    trials = [trial("a", "head"), trial("b", "gpu1", checkpoint_node=None), trial("c", None)]
    verdict = placement(trials, NODES)
    assert not verdict["ok"] and verdict["unreadable_checkpoints"] == ["b", "c"]


def test_no_trials_is_not_ok() -> None:
    assert not placement([], NODES)["ok"]
