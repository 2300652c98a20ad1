"""One study over every GPU of a node (tuner/fusing.py): one fused pool per GPU, each trial placed
on the least loaded pool alive. The placement as pure functions first; then (-m slow) a real local
Ray that declares two GPUs on a machine without any (Ray's resources are what it is told: the
pools get distinct GPU ids and, seeing no CUDA, train on the CPU), running tiny LoRA studies
through Tune: both pools get trials, a killed pool's trials end in a known state and the rest
finish on the other pool, and with no pool alive the study stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.tune import Callback

from search_spaces.errors import ConfigError
from search_spaces.row_groups import RowLimits
from tuner.fusing import FusePlan, PoolRouter, Pools, choose_pool, pool_count


@pytest.mark.parametrize(
    ("loads", "chosen"),
    [
        ([0, 0], 0),  # equals: the lowest index
        ([1, 0], 1),
        ([2, 1, 1], 1),
        ([None, 3], 1),  # a pool that is gone takes nothing, however idle
        ([None, None], None),  # none alive: nowhere to go
        ([4, 5], 0),  # every pool full: the trial queues in the least loaded
    ],
)
def test_a_trial_goes_to_the_least_loaded_pool_alive(loads, chosen):
    assert choose_pool(loads, slots=4) == chosen


def test_bad_slots_are_refused_with_the_value():
    with pytest.raises(ConfigError, match="slots=0"):
        choose_pool([0], slots=0)


@pytest.mark.parametrize(("gpus", "pools"), [(0.0, 1), (0.5, 1), (1.0, 1), (2.0, 2), (8.0, 8)])
def test_one_pool_per_whole_gpu_and_one_on_a_cpu_without(gpus, pools):
    assert pool_count(gpus) == pools


def test_the_router_spreads_trials_over_pools_and_skips_a_lost_one():
    router = PoolRouter(["a", "b"], [(0,), (1,)], slots=2)
    assert [router.place() for _ in range(3)] == [(0, "a"), (1, "b"), (0, "a")]
    router.release(0)
    router.release(0)
    assert router.place() == (0, "a")  # pool 0 emptied: it is the least loaded again
    router.lost(1, "ActorDiedError")
    router.lost(1, "a later trial's reason")  # the first reason stays
    assert [router.place()[0] for _ in range(3)] == [0, 0, 0]  # b's rows are gone with it
    assert router.alive() == 1 and router.state()["placed"] == [6, 1]
    router.lost(0, "RuntimeError")
    assert router.place() is None and router.alive() == 0
    assert router.describe_gone() == "pool 0 (GPU 0): RuntimeError; pool 1 (GPU 1): ActorDiedError"


def test_the_log_line_names_one_pool_as_before_and_several_with_their_gpus():
    plan = FusePlan(slots=4, limits=(("lora", RowLimits(rank=8, placement="all")),))
    one = Pools(plan, ("p",), ((0,),), router=None, name="n")
    assert one.describe() == "fused pool: 4 rows of LoRA rank 8 on one GPU, every linear"
    on_cpu = Pools(
        FusePlan(2, (("lora", RowLimits(rank=4)),)), ("p",), ((),), router=None, name="n"
    )
    assert on_cpu.describe() == "fused pool: 2 rows of LoRA rank 4 on a CPU"
    two = Pools(plan, ("p", "q"), ((0,), (1,)), router=None, name="n")
    assert two.describe() == (
        "fused pools: 2 x 4 rows of LoRA rank 8, one per GPU (ids 0, 1), every linear"
    )


# --- a real local Ray with two declared GPUs ----------------------------------------------------


@pytest.fixture
def two_gpu_ray():
    """A local Ray told it has two GPUs (and four CPUs: two pools hold one each, their trials'
    relays a quarter each) on loopback only."""
    import ray

    from tuner.runner import single_machine

    with single_machine():
        ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


class KillPoolAtItsFirstReport(Callback):
    """Kills pool ``index`` once a trial in it has reported: it dies with trials training."""

    def __init__(self, pools: Pools, index: int) -> None:
        self.pools = pools
        self.index = index
        self.killed = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import ray

        if not self.killed and result.get("fused_pool") == self.index:
            ray.kill(self.pools.actors[self.index], no_restart=True)
            self.killed = True


def reports_of(result) -> list[dict]:
    """Every report of a trial, across its attempts (Tune appends a retry's to the same file)."""
    lines = (Path(result.path) / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_study(pools: Pools, tmp_path: Path, name: str, lrs: list[float], *, max_failures: int = 1,
              num_samples: int = 1, **run: object):  # fmt: skip
    from ray import tune

    from tests.test_fused_pool import BASE
    from trainables.relay import tune_placed_trial
    from tuner.pools_gone import PoolsGone
    from tuner.study import CLIENT_CPUS

    # four evaluations: a pool killed at its first report still has trials training
    space = {**BASE, "rank": 8, "alpha": 16, "seed": 0, "evals": 4,
             "lr": tune.grid_search(lrs)}  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_placed_trial, router=pools.router),
                            {"cpu": CLIENT_CPUS}),  # fmt: skip
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=2 * len(pools.actors),
                                    num_samples=num_samples,
                                    time_budget_s=400),  # a hang fails the test, not the suite
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                  callbacks=[PoolsGone(pools.name), *run.pop("callbacks", [])],
                                  failure_config=tune.FailureConfig(max_failures=max_failures), **run),
    )  # fmt: skip
    grid = tuner.fit()
    return [grid[i] for i in range(len(grid))]


@pytest.mark.slow
def test_two_pools_one_per_gpu_survive_a_dead_one_and_stop_when_none_is_left(two_gpu_ray, tmp_path):
    ray = two_gpu_ray
    from tests.test_fused_pool import DATA
    from tuner.fusing import start
    from tuner.launch import StudyTrials

    pools = start(FusePlan(slots=2, limits=(("lora", RowLimits(rank=8)),)), DATA, cluster_gpus=2,
                  name="pools")  # fmt: skip
    seen = ray.get([a.__ray_call__.remote(lambda pool: ray.get_gpu_ids()) for a in pools.actors])
    assert sorted(map(tuple, seen)) == [(0,), (1,)]  # each pool holds its own GPU
    assert sorted(pools.gpu_ids) == [(0,), (1,)]

    kill = KillPoolAtItsFirstReport(pools, 0)
    results = run_study(pools, tmp_path, "search", [1e-3, 2e-3, 3e-3, 4e-3],
                        callbacks=[kill])  # fmt: skip
    assert kill.killed
    runs = {r.config["lr"]: reports_of(r) for r in results}
    assert {rep["fused_pool"] for reps in runs.values() for rep in reps} == {0, 1}
    # every trial completed: those training in the killed pool after Tune retried them on pool 1
    for r in results:
        assert r.error is None, r.error
        assert r.metrics["status"] == "completed" and r.metrics["evaluation"] == 4
    retried = [reps for reps in runs.values() if [r["fused_pool"] for r in reps][:2] == [0, 1]]
    assert retried, {lr: [r["fused_pool"] for r in reps] for lr, reps in runs.items()}
    for reps in retried:  # pool 0's partial run, then the whole run again on pool 1
        assert [r["evaluation"] for r in reps if r["fused_pool"] == 1] == [1, 2, 3, 4]
    state = ray.get(pools.router.state.remote())
    assert list(state["gone"]) == [0] and "fused pool 0 is gone" in state["gone"][0]
    assert state["loads"] == [0, 0]

    # the last pool dies: trials fail as known errors and the study stops, its other trials unrun
    ray.kill(pools.actors[1], no_restart=True)
    results = run_study(pools, tmp_path, "after", [1e-3, 2e-3], max_failures=0, num_samples=20)
    # each trial failed with PoolLost, or was stopped with the study before its failure was
    # processed, or never ran: none trained, and the study did not start all 40
    assert all("PoolLost" in str(r.error) for r in results if r.error is not None)
    assert not [r for r in results if (r.metrics or {}).get("evaluation")]
    assert len(results) < 40
    gone = ray.get(pools.router.state.remote())["gone"]
    assert gone[1] == "fused pool 1 is gone (ActorDiedError)"  # a trial found it dead
    with pytest.raises(SystemExit) as stopped:
        StudyTrials(trainable=None, concurrent=4, pools=pools).check_pools()
    line = str(stopped.value)
    gpu = [ids[0] for ids in pools.gpu_ids]  # Ray hands the two GPUs out in either order
    head = f"error: every fused pool is gone (pool 0 (GPU {gpu[0]}): fused pool 0 is gone"
    assert line.startswith(head)
    assert f"pool 1 (GPU {gpu[1]}): fused pool 1 is gone" in line and "\n" not in line


@pytest.mark.slow
def test_a_lora_study_on_gpus_pools_by_itself_and_says_so(study_env, two_gpu_ray, tmp_path, capfd):
    """`python -m tuner.run e4_budget --set method=lora` on two GPUs with no --fuse: LoRA trials
    only, so the study pools 16 rows per GPU, says so before it trains, records it; its search
    and seeds phase train in the pools."""
    from tuner.cli import run_cli
    from tuner.run import main

    results = tmp_path / "results"
    assert run_cli(main, ["e4_budget", "--preset", "smoke", "--set", "method=lora",
                          "--storage", str(results)]) == 0  # fmt: skip
    err = capfd.readouterr().err
    said = err.index("pooling: on, up to 16 trials at once per GPU as rows of one fused model")
    assert said < err.index("fused pools: 2 x 16 rows of LoRA rank") < err.index("up to 32 at once")
    folder = results / "e4_budget-smoke"
    assert json.loads((folder / "experiment.json").read_text())["fuse"] == 16  # a resume keeps it
    for phase in (folder, results / "e4_budget-smoke-seeds"):
        reports = [
            json.loads(line) for f in phase.glob("trial_*") for line in (f / "result.json").open()
        ]
        assert reports and all(r["fused_slots"] == 16 for r in reports), phase


@pytest.fixture
def study_env(monkeypatch, tmp_path, data_dir):
    """What the study's Ray workers inherit (set before the local Ray starts)."""
    monkeypatch.setenv("PEFT_TUNE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PEFT_TUNE_CACHE_DIR", str(tmp_path / "tokens"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.slow
def test_the_study_command_puts_one_pool_on_each_gpu(study_env, two_gpu_ray, tmp_path, capfd):
    """`python -m tuner.run placement --fuse 2` on a cluster of two GPUs, in process: two pools,
    trials in both, every trial completed, one MLflow parent run with a child per trial."""
    from mlflow.tracking import MlflowClient

    from tuner.cli import run_cli
    from tuner.run import main

    results = tmp_path / "results"
    assert run_cli(main, ["placement", "--preset", "smoke", "--fuse", "2",
                          "--storage", str(results)]) == 0  # fmt: skip
    err = capfd.readouterr().err
    line = "fused pools: 2 x 2 rows of LoRA rank 8, one per GPU (ids {}), every linear"
    assert line.format("0, 1") in err or line.format("1, 0") in err  # pool i's GPU, in order
    assert "up to 4 at once" in err
    record = json.loads((results / "placement-smoke" / "experiment.json").read_text())
    assert record["fuse"] == 2  # a resume keeps it
    assert record["resources"] == {"cpus_per_trial": 0.25, "gpus_per_trial": 0.0,
                                   "gpus_per_pool": 1.0}  # what a pooled trial holds  # fmt: skip
    summary = json.loads((results / "placement-smoke" / "summary.json").read_text())
    assert summary["status_counts"] == {"completed": 5}
    pools = set()
    for folder in (results / "placement-smoke").glob("trial_*"):
        reports = [json.loads(line) for line in (folder / "result.json").open()]
        assert [r["evaluation"] for r in reports] == [1, 2]
        pools |= {r["fused_pool"] for r in reports}
    assert pools == {0, 1}
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("placement").experiment_id])
    assert [r.data.tags.get("role") for r in runs].count("study") == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 5 and all(c.data.metrics["fused_pool"] in (0, 1) for c in children)


def test_a_pickled_pools_gone_callback_keeps_its_router_name_and_checks_afresh():
    import pickle

    from tuner.pools_gone import PoolsGone

    callback = PoolsGone("peft-tune-pools/placement-full")
    callback._ended = True  # what an ended run held
    again = pickle.loads(pickle.dumps(callback))
    assert (again.name, again._ended) == ("peft-tune-pools/placement-full", False)
