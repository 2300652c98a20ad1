"""``tuner.run NAME --fuse K`` (tuner/fusing.py): studies trained in one fused pool. The plan
and the refusals in process; then (-m slow) the placement study's smoke preset as a real process
on a local Ray, its trials through the pool, recorded as any study's are."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from tuner.cli import run_cli
from tuner.experiments import get_experiment
from tuner.fusing import Pools, default_plan, fuse_plan, pooling
from tuner.overrides import apply_sets, parse_sets
from tuner.run import main
from tuner.space import build_space
from tuner.study import StudyFiles, record_fuse

ROOT = Path(__file__).resolve().parent.parent


def test_a_study_of_several_placements_gets_rows_over_every_linear():
    exp = get_experiment("placement").with_preset("smoke")
    plan = fuse_plan(exp, build_space(exp), 4, num_labels=2)
    assert (plan.slots, plan.of("lora").rank, plan.of("lora").placement) == (4, 8, "all")


def test_a_study_of_one_placement_keeps_it():
    exp = get_experiment("placement").with_preset("smoke")
    one = [a for a in exp.search.configs if a["placement"] == "ffn"]
    exp = replace(exp, search=replace(exp.search, configs=tuple(one)), num_samples=len(one))
    assert fuse_plan(exp, build_space(exp), 2, num_labels=2).of("lora").placement is None


def test_a_study_that_tries_unfusable_methods_is_refused():
    exp = get_experiment("adalora_sst2").with_preset("smoke")
    with pytest.raises(
        ConfigError,
        match="--fuse trains trials of bitfit, .* tries method=.adalora.* run it without --fuse",
    ):
        fuse_plan(exp, build_space(exp), 4, num_labels=2)


def test_a_study_of_lora_and_fusion_gets_one_group_per_row_signature():
    exp = get_experiment("e4_budget").with_preset("smoke")
    plan = fuse_plan(exp, build_space(exp), 2, num_labels=3)
    groups = dict(plan.groups)
    assert set(groups) <= {"lora", "fusion", "lora_fusion"} and groups.get("lora", 1) == 1
    assert sum(groups.values()) <= exp.num_samples and plan.of("lora").rank >= 1
    assert plan.describe_groups().startswith(f"{sum(groups.values())} fused group")


def test_e4_budgets_trials_share_one_group_per_method():
    """Its LoRA+AdapterFusion trials sit on attn_qv or ffn (rows on both), its fusion trials are
    static or dynamic (dynamic rows, a static one's value fixed to the identity): one group per
    method (7 groups in all, then 5 with both placements in one, now 3). Each method's rows hold
    its own trials' largest sizes (LoRA+fusion rows rank 33, not plain LoRA's 65), and learn
    their fusion at the layers its trials do, the top one or two, not at every layer (a fusion
    row cost 2.25x its trial's FLOPs a step at every layer, 1.45x at the union)."""
    exp = get_experiment("e4_budget")
    plan = fuse_plan(exp, build_space(exp), 16, num_labels=3)
    assert dict(plan.groups) == {"fusion": 1, "lora": 1, "lora_fusion": 1}
    lora, fusion, hybrid = plan.of("lora"), plan.of("fusion"), plan.of("lora_fusion")
    assert (lora.rank, lora.placement) == (65, "all")
    assert (hybrid.rank, hybrid.placement, hybrid.target_bottleneck) == (33, "attn_qv_ffn", 16)
    assert (fusion.target_bottleneck, fusion.fusion, fusion.fusion_layers) == (
        65,
        "dynamic",
        (4, 5),
    )
    assert (hybrid.fusion, hybrid.fusion_layers) == ("dynamic", (4, 5))
    line = Pools(plan, ("p",), ((0,),), router=None, name="n").describe()
    assert line == (
        "fused pool: 3 fused groups (fusion 1, lora 1, lora_fusion 1) of 16 rows each on one GPU; "
        "fusion: target_bottleneck 65, static fusion as dynamic, fusion at layers 4,5; "
        "lora: LoRA rank 65 on every linear; lora_fusion: LoRA rank 33 on attn_qv_ffn, "
        "target_bottleneck 16, static fusion as dynamic, fusion at layers 4,5"
    ), line
    for placement, kind in (("attn_qv", "static"), ("ffn", "dynamic")):
        trial = MethodConfig(method="lora_fusion", placement=placement, sources=("imdb",),
                             fusion=kind, fusion_layers=(5,))  # fmt: skip
        hybrid.refuse(trial)
        template = hybrid.template(trial)
        assert (template.placement, template.fusion, template.fusion_layers, template.rank) == (
            "attn_qv_ffn", "dynamic", (4, 5), 33)  # fmt: skip
    for layers, named in (((3, 4, 5), "3,4,5"), (None, "every layer")):
        with pytest.raises(
            ConfigError, match=f"rows fuse at layers 4,5, not fusion_layers={named}$"
        ):
            hybrid.refuse(trial.replace(fusion_layers=layers))
    with pytest.raises(ConfigError, match="takes LoRA trials of rank <= 33, not .* rank=34"):
        hybrid.refuse(trial.replace(rank=34))
    similar = trial.replace(fusion_init="similarity", fusion_layers=None)
    hybrid.refuse(similar)  # its layers are its group's (in its signature), not the limits'
    assert hybrid.template(similar).fusion_layers is None


def lora_only(name: str = "e4_budget", *extra: str):
    """A registered study narrowed to LoRA trials (``--set method=lora``), smoke preset."""
    exp = get_experiment(name).with_preset("smoke")
    return apply_sets(exp, parse_sets(["method=lora", *extra]))


def test_a_lora_study_pools_by_default_and_a_study_of_slower_rows_does_not():
    exp = lora_only()
    plan, line = default_plan(exp, build_space(exp), num_labels=3)
    assert (plan.slots, plan.of("lora").placement) == (16, "all")
    assert dict(plan.groups) == {"lora": 1}
    assert line.startswith("pooling: on, up to 16 trials at once per GPU") and "--fuse 0" in line
    for exp, needle in [
        (get_experiment("e4_budget").with_preset("smoke"), "tries method='lora_fusion'"),  # slower rows
        (get_experiment("adalora_sst2").with_preset("smoke"), "tries method='adalora'"),  # no rows
        (lora_only("e1_single_task", "quantize=nf4"), "quantize='nf4'"),  # one fp32 base
    ]:  # fmt: skip
        plan, line = default_plan(exp, build_space(exp), num_labels=3)
        assert plan is None and line.startswith("pooling: off (") and needle in line, line
        assert "pooled by default: lora); --fuse K pools any of bitfit," in line
    # LoRA only, but its trials' training time is its result: pooled, they would share steps
    exp = get_experiment("placement").with_preset("smoke")
    assert exp.timed and default_plan(exp, build_space(exp), num_labels=2) == (
        None, "pooling: off (placement measures its trials' training time, which pooled trials "
        "share); --fuse K pools it anyway")  # fmt: skip
    assert fuse_plan(exp, build_space(exp), 4, num_labels=2).slots == 4


def pooling_args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"fuse": None, "gpus_per_trial": None, "resume": False, **given})


def test_pooling_by_default_needs_a_gpu_and_no_gpu_share_per_trial_and_no_fuse_0(tmp_path):
    exp = lora_only()
    space, files = build_space(exp), StudyFiles(str(tmp_path), "e4_budget-smoke")
    plan, line = pooling(None, exp, space, pooling_args(), files, cluster_gpus=1)
    assert plan.slots == 16 and line.startswith("pooling: on")
    assert pooling(None, exp, space, pooling_args(), files, cluster_gpus=0) == (None, None)
    assert pooling(None, exp, space, pooling_args(gpus_per_trial=0.25), files,
                   cluster_gpus=1) == (None, None)  # fmt: skip
    assert pooling(None, exp, space, pooling_args(fuse=0), files, cluster_gpus=1) == (None, None)
    # resumed: the study's first choice, whatever the cluster now
    files.write_json("experiment.json", {"fuse": 16})
    plan, line = pooling(None, exp, space, pooling_args(resume=True), files, cluster_gpus=0)
    assert plan.slots == 16 and line == "pooling: 16 rows per fused group, as the study started"
    files.write_json("experiment.json", {"fuse": 0})
    resumed = pooling(None, exp, space, pooling_args(resume=True), files, cluster_gpus=1)
    assert resumed == (None, None)


@pytest.mark.parametrize(
    ("started", "fuse", "line"),
    [(16, "0", "error: --resume --fuse 0: the study started with --fuse 16 and Tune restores its "
               "trials as they started: drop --fuse, or give another --fuse K >= 1"),
     (0, "8", "error: --resume --fuse 8: the study started without a pool (--fuse 0) and Tune "
              "restores its trials as they started: drop --fuse")],
)  # fmt: skip
def test_resuming_pooled_trials_as_processes_or_the_reverse_exits_2(
    started, fuse, line, tmp_path, capfd
):
    storage = tmp_path / "results"
    StudyFiles(str(storage), "placement-smoke").write_json("experiment.json", {"fuse": started})
    (storage / "placement-smoke" / "tuner.pkl").write_bytes(b"a study started here")
    before = sorted(storage.rglob("*"))
    args = ["placement", "--preset", "smoke", "--storage", str(storage), "--resume", "--fuse", fuse,
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    assert run_cli(main, args) == 2
    assert capfd.readouterr().err.strip().splitlines() == [line]
    assert sorted(storage.rglob("*")) == before and not (tmp_path / "mlflow.db").exists()


def test_a_pooled_study_resumes_with_other_rows_per_group_and_keeps_them(tmp_path):
    """A pool out of GPU memory: the study resumes with smaller groups (Tune restores pooled
    trials as pooled ones, whatever the rows), and later resumes keep the new size."""
    exp = lora_only()
    space, files = build_space(exp), StudyFiles(str(tmp_path), "e4_budget-smoke")
    files.write_json("experiment.json", {"fuse": 16, "git_commit": "0123abc"})
    smaller = fuse_plan(exp, space, 8, num_labels=2)
    plan, line = pooling(smaller, exp, space, pooling_args(resume=True, fuse=8), files,
                         cluster_gpus=1)  # fmt: skip
    assert plan.slots == 8
    assert line == "pooling: 8 rows per fused group from now on (the study started with 16)"
    assert files.read_json("experiment.json") == {"fuse": 16, "git_commit": "0123abc"}  # planned
    record_fuse(files, plan.slots)  # the launcher's record, for later resumes
    assert files.read_json("experiment.json") == {"fuse": 8, "git_commit": "0123abc"}
    plan, line = pooling(None, exp, space, pooling_args(resume=True), files, cluster_gpus=1)
    assert plan.slots == 8 and line == "pooling: 8 rows per fused group, as the study started"


def test_pools_gone_out_of_memory_say_to_resume_with_smaller_groups():
    from tuner.pools_gone import pools_gone_line

    oom = pools_gone_line("pool 0 (GPU 0): OutOfMemoryError('CUDA out of memory')", 16)
    assert oom.endswith("the study stopped; --resume --fuse 8 continues it with smaller groups")
    assert "out of GPU memory at 16 rows per group" in oom
    lost = pools_gone_line("pool 0 (GPU 0): fused pool 0 is gone", 16)
    assert lost.endswith("--resume continues it once the GPUs are back")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["adalora_sst2", "--fuse", "4"], "run it without --fuse"),  # it tries AdaLoRA
        (["placement", "--fuse", "-1"], "--fuse=-1 must be >= 1"),
        (["placement", "--fuse", "2", "--gpus-per-trial", "0.5"], "exclude each other"),
    ],
)
def test_bad_fuse_exits_2_with_one_line_and_nothing_written(argv, needle, tmp_path, capfd):
    storage = tmp_path / "results"
    args = [*argv, "--preset", "smoke", "--storage", str(storage),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    assert run_cli(main, args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not storage.exists() and not (tmp_path / "mlflow.db").exists()


def run_smoke_fused(
    tmp_path: Path, data_dir: Path, name: str, fuse: int, *, timeout: int
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``tuner.run NAME --preset smoke --fuse K`` as a real process on a local Ray (its own
    token cache and storage under ``tmp_path``); the finished process and the storage folder."""
    env = {**os.environ, "PEFT_TUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "PEFT_TUNE_CACHE_DIR": str(tmp_path / "tokens")}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.run", name, "--preset", "smoke", "--fuse", str(fuse),
         "--storage", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, results


@pytest.mark.slow
def test_a_fused_study_records_every_trial_as_a_study_does(tmp_path, data_dir):
    proc, results = run_smoke_fused(tmp_path, data_dir, "placement", 4, timeout=600)
    where = "one GPU" if torch.cuda.is_available() else "a CPU"  # the pool takes the GPU if any
    assert f"fused pool: 4 rows of LoRA rank 8 on {where}, every linear" in proc.stderr
    assert "up to 4 at once" in proc.stderr
    summary = json.loads((results / "placement-smoke" / "summary.json").read_text())
    assert summary["status_counts"] == {"completed": 5}
    trials = list((results / "placement-smoke").glob("trial_*"))
    assert len(trials) == 5
    for folder in trials:
        reports = [json.loads(line) for line in (folder / "result.json").open()]
        assert [r["evaluation"] for r in reports] == [1, 2]
        assert reports[-1]["fused_slots"] == 4 and reports[-1]["test_score"] > 0
        assert list(folder.glob("checkpoint_*/method.safetensors"))  # the trained weights
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("placement").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 5 and all(c.data.tags["status"] == "completed" for c in children)


@pytest.mark.slow
def test_a_study_of_lora_and_fusion_trials_runs_fused(tmp_path, data_dir):
    """e4_budget (LoRA, AdapterFusion and LoRA+AdapterFusion trials) through one pool of fused
    groups on a CPU, its seeds phase too."""
    proc, results = run_smoke_fused(tmp_path, data_dir, "e4_budget", 2, timeout=900)
    assert "fused group" in proc.stderr and "of 2 rows each" in proc.stderr
    summary = json.loads((results / "e4_budget-smoke" / "summary.json").read_text())
    assert sum(summary["status_counts"].values()) == 4 and summary["status_counts"]["completed"]
    methods = set()
    for folder in (results / "e4_budget-smoke").glob("trial_*"):
        reports = [json.loads(line) for line in (folder / "result.json").open()]
        assert reports[-1]["fused_slots"] == 2
        methods.add(reports[-1]["config"]["method"])
    assert {"fusion", "lora_fusion"} <= methods  # AdapterFusion trials trained as rows
