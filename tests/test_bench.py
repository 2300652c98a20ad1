"""tuner.bench and trainables.flops: the pure figures on fakes, then each suite end to end on CPU
with the tiny random BERT and a 200-row folder task (seconds, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from search_spaces.shapes import BERT_BASE, MINILM_L6
from trainables.flops import (
    forward_flops_per_token,
    mfu,
    peak_bf16_flops,
    train_flops,
    trial_mfu,
)
from tuner.bench.cli import main
from tuner.bench.packing import (
    PackingRow,
    aggregate,
    best_gpus_per_trial,
    fused_lrs,
    with_speedups,
)
from tuner.bench.record import markdown_table
from tuner.bench.search import compare_studies, same_best
from tuner.bench.trial import SETTINGS, TrialRow, TrialSetting, finish_rows, time_to_target
from tuner.cli import run_cli

# --- flops ---------------------------------------------------------------------------------------


def test_forward_flops_per_token_is_twice_the_matmul_weights_plus_attention():
    d, i, layers = MINILM_L6.hidden, MINILM_L6.intermediate, MINILM_L6.num_layers
    expected = layers * (2 * (4 * d * d + 2 * d * i) + 4 * 16 * d)
    assert forward_flops_per_token(MINILM_L6, seq_len=16) == expected
    # BERT-base at T=128: 2 x its 85M matmul weights per token (170M), plus 4.7M of attention
    assert forward_flops_per_token(BERT_BASE, seq_len=128) == pytest.approx(1.746e8, rel=0.001)


def test_train_flops_counts_weight_gradients_only_for_a_trained_backbone():
    frozen = train_flops(MINILM_L6, tokens=1000, samples=100, frozen_backbone=True)
    full = train_flops(MINILM_L6, tokens=1000, samples=100, frozen_backbone=False)
    forward = 1000 * forward_flops_per_token(MINILM_L6, seq_len=10)
    assert forward * 2 < frozen < forward * 3 == pytest.approx(full, rel=0.01)
    assert train_flops(MINILM_L6, tokens=0, samples=0) == 0.0
    with pytest.raises(ValueError, match="tokens=-1"):
        train_flops(MINILM_L6, tokens=-1, samples=1)


def test_mfu_is_flops_per_second_over_the_peak_and_none_without_a_peak():
    flops = train_flops(MINILM_L6, tokens=10_000, samples=1000)
    assert mfu(MINILM_L6, tokens=10_000, samples=1000, seconds=2.0, peak_flops=1e12) == (
        pytest.approx(flops / 2.0 / 1e12)
    )
    assert mfu(MINILM_L6, tokens=10, samples=1, seconds=1.0, peak_flops=None) is None
    assert mfu(MINILM_L6, tokens=10, samples=1, seconds=0.0, peak_flops=1e12) is None


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
     ("NVIDIA H200", 989.4e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("Unknown GPU", None),
     (None, None)],
)  # fmt: skip
def test_peak_bf16_flops_by_device_name(name, peak):
    assert peak_bf16_flops(name) == peak


def test_trial_mfu_reads_the_loop_report_and_is_none_on_cpu():
    model = SimpleNamespace(
        shape=MINILM_L6, trainable_params=lambda: 10, backbone_params=lambda: 100
    )
    report = SimpleNamespace(tokens_seen=1000, samples_seen=100, train_s=1.0)
    assert trial_mfu(model, report, "cpu") is None


# --- trial suite: pure parts ---------------------------------------------------------------------


def _row(name: str, speed: float, history: list[tuple[float, float]]) -> TrialRow:
    return TrialRow(
        setting=name, runner="ours", batch_size=32, lr=1e-3, train_samples_per_s=speed,
        train_s=1.0, wall_s=history[-1][0], dev_score=history[-1][1],
        best_dev_score=max(s for _, s in history), test_score=0.5, peak_mem_mib=None, mfu=None,
        samples=100, tokens=1000, history=history,
    )  # fmt: skip


def test_time_to_target_is_the_first_evaluation_reaching_it():
    history = [(1.0, 0.80), (2.0, 0.90), (3.0, 0.85)]
    assert time_to_target(history, 0.9) == 2.0
    assert time_to_target(history, 0.95) is None


def test_finish_rows_targets_the_lowest_final_score_and_divides_by_the_baseline():
    rows = [_row("trainer-bs32", 100.0, [(5.0, 0.85), (10.0, 0.88)]),
            _row("ours-bs32", 300.0, [(1.0, 0.89), (3.0, 0.90)])]  # fmt: skip
    summary = finish_rows(rows)
    assert summary["dev_target"] == 0.88 and summary["baseline"] == "trainer-bs32"
    assert [r.time_to_target_s for r in rows] == [10.0, 1.0]
    assert [r.speedup for r in rows] == [1.0, 3.0]


def test_finish_rows_compares_means_over_seeds_with_the_baselines_mean():
    rows = [_row("trainer-bs32", 100.0, [(5.0, 0.88)]), _row("trainer-bs32", 300.0, [(5.0, 0.9)]),
            _row("ours-bs32", 800.0, [(1.0, 0.9)])]  # fmt: skip
    means = finish_rows(rows)["means"]
    assert means["trainer-bs32"]["seeds"] == 2
    assert means["trainer-bs32"]["train_samples_per_s"] == 200.0
    assert [r.speedup for r in rows] == [0.5, 1.5, 4.0]
    assert means["ours-bs32"]["speedup"] == 4.0
    assert means["ours-bs32"]["test_gap_points"] == pytest.approx(
        100 * (means["ours-bs32"]["test_score"] - means["trainer-bs32"]["test_score"])
    )


def test_settings_are_valid_and_trainer_settings_refuse_our_knobs():
    assert "trainer-bs32" in SETTINGS and "ours-bs32" in SETTINGS
    for name in SETTINGS:
        assert SETTINGS.get(name).name == name
    with pytest.raises(Exception, match="ours-only"):
        TrialSetting("x", "trainer", bf16_frozen=True)
    with pytest.raises(Exception, match="runner='hf'"):
        TrialSetting("x", "hf")


def test_markdown_table_formats_and_shows_missing_values_as_dashes():
    table = markdown_table([{"a": "x", "b": 1234.5}, {"a": "y", "b": None}],
                           [("a", "A", ""), ("b", "B", ",.0f")])  # fmt: skip
    assert table.splitlines() == ["| A | B |", "|---|---:|", "| x | 1,234 |", "| y | - |"]


# --- packing: pure parts -------------------------------------------------------------------------


def test_aggregate_divides_all_samples_by_the_common_window():
    trials = [{"start": 10.0, "train_s": 2.0, "samples": 100},
              {"start": 11.0, "train_s": 3.0, "samples": 100}]  # fmt: skip
    total, per_trial = aggregate(trials)
    assert total == pytest.approx(200 / 4.0)
    assert per_trial == pytest.approx((50 + 100 / 3) / 2)
    assert aggregate([]) == (0.0, 0.0)


def _packing(n: int, agg: float, *, mps: bool = False, failed: int = 0) -> PackingRow:
    return PackingRow(n, 1 / n, agg, agg / n, None, None, None, 0.9, failed, mps)


def test_best_gpus_per_trial_is_the_fewest_trials_near_the_best_aggregate():
    rows = [_packing(1, 100), _packing(2, 190), _packing(4, 300), _packing(8, 320)]
    assert best_gpus_per_trial(rows) == 0.25  # 300 >= 0.9 * 320
    assert best_gpus_per_trial(rows + [_packing(16, 1000, failed=1)]) == 0.25  # failures never win
    assert best_gpus_per_trial([]) is None
    assert [r.speedup for r in with_speedups(rows)] == [1.0, 1.9, 3.0, 3.2]


# --- search: from Tune result files --------------------------------------------------------------


def _study(
    folder: Path, trials: list[tuple[str, list[float], str, float]], **configs: dict
) -> Path:
    """Trials as (id, dev scores per report, final status, start time), written as Tune does:
    every report says "running"; a trial the scheduler stopped ends below full fidelity.
    ``configs[id]``: that trial's searched knobs."""
    for trial_id, scores, status, start in trials:
        config = {"budget_deviation": 0.01, "tolerance": 0.05, **configs.get(trial_id, {})}
        lines = []
        planned = len(scores) if status == "completed" else len(scores) + 1
        for k, score in enumerate(scores, start=1):
            lines.append({"trial_id": trial_id, "dev_score": score, "timestamp": start + 10 * k,
                          "time_total_s": 10.0 * k, "status": "running", "fidelity": k / planned,
                          "config": config})  # fmt: skip
        (folder / trial_id).mkdir(parents=True)
        (folder / trial_id / "result.json").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


def test_compare_studies_times_the_first_completed_trial_near_the_best(tmp_path):
    asha = _study(tmp_path / "asha", [("a", [0.80, 0.896], "completed", 0.0),
                                      ("b", [0.70], "stopped", 0.0)])  # fmt: skip
    fifo = _study(tmp_path / "fifo", [("c", [0.7, 0.8], "completed", 0.0),
                                      ("d", [0.85, 0.90], "completed", 20.0)])  # fmt: skip
    rows = {r.study: r for r in compare_studies({"asha": asha, "fifo": fifo}, gpus=1.0)}
    assert rows["asha"].time_to_near_best_s == 20.0  # 0.896 is within 0.5 points of 0.90
    assert rows["fifo"].time_to_near_best_s == 40.0
    assert (rows["asha"].completed, rows["asha"].stopped, rows["asha"].outside_budget) == (1, 1, 0)
    assert rows["fifo"].trials_per_gpu_hour == pytest.approx(2 / (40 / 3600))
    # the completed trial that trained longest (the stopped one does not count): rerun it alone
    assert (Path(rows["asha"].slowest_trial).name, rows["asha"].slowest_trial_s) == ("a", 20.0)


def test_each_study_names_its_best_configuration_per_method_on_dev(tmp_path):
    lora = {"method": "lora", "lr": 1e-3, "rank": 8}
    fusion = {"method": "fusion", "lr": 5e-5, "rank": None}
    pooled = _study(tmp_path / "pooled", [("a", [0.80], "completed", 0.0),
                                          ("b", [0.85], "completed", 0.0),
                                          ("c", [0.95], "stopped", 0.0)],
                    a=lora, b={**lora, "lr": 2e-3}, c={**lora, "lr": 3e-3})  # fmt: skip
    alone = _study(tmp_path / "alone", [("d", [0.84], "completed", 0.0),
                                        ("e", [0.70], "completed", 0.0),
                                        ("f", [0.60], "completed", 0.0)],
                   d={**lora, "lr": 2e-3}, e=lora, f=fusion)  # fmt: skip
    rows = compare_studies({"pooled": pooled, "alone": alone}, gpus=1.0)
    # the best final dev score of a completed trial: the stopped trial's better one does not count
    assert rows[0].best_by_method == {"lora": "lr=0.002 rank=8 dev 0.8500"}
    assert rows[1].best_by_method == {"fusion": "lr=5e-05 rank=None dev 0.6000",
                                      "lora": "lr=0.002 rank=8 dev 0.8400"}  # fmt: skip
    assert same_best(rows) == {
        "fusion": "pooled: none completed; alone: lr=5e-05 rank=None dev 0.6000",
        "lora": "same: lr=0.002 rank=8 (dev pooled 0.8500, alone 0.8400)",
    }


# --- end to end on CPU ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_task")
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [{"text": f"{words[i % 6]} film number {i}", "label": int(i % 6 in (0, 2, 4))}
            for i in range(200)]  # fmt: skip
    pd.DataFrame(rows[:160]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows[160:]).to_csv(folder / "validation.csv", index=False)
    return folder


def _bench(tiny_task: Path, out: Path, *extra: str) -> dict:
    argv = ["--device", "cpu", "--backbone", "tiny-bert", "--task", str(tiny_task),
            "--max-length", "16", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    return argv


def test_trial_suite_runs_ours_and_the_trainer_on_the_same_data(tiny_task, tmp_path):
    _bench(tiny_task, tmp_path, "--suite", "trial", "--settings", "ours-bs32,trainer-bs32",
           "--seeds", "0,1")  # fmt: skip
    doc = json.loads((tmp_path / "bench-trial.json").read_text())
    assert [(r["setting"], r["seed"]) for r in doc["rows"]] == [
        ("ours-bs32", 0),
        ("trainer-bs32", 0),
        ("ours-bs32", 1),
        ("trainer-bs32", 1),
    ]
    assert doc["summary"]["means"]["ours-bs32"]["seeds"] == 2
    rows = {r["setting"]: r for r in doc["rows"] if r["seed"] == 1}
    assert (
        rows["ours-bs32"]["samples"] == rows["trainer-bs32"]["samples"] == doc["summary"]["train"]
    )
    assert rows["ours-bs32"]["tokens"] == rows["trainer-bs32"]["tokens"]
    for row in rows.values():
        assert 0 <= row["test_score"] <= 1 and row["train_samples_per_s"] > 0
        assert len(row["history"]) >= 4 and row["mfu"] is None  # CPU: no peak
    assert doc["command"].startswith("python -m tuner.bench") and doc["device"].startswith("cpu")
    markdown = (tmp_path / "bench-trial.md").read_text()
    assert "| ours-bs32 | 1 |" in markdown and "Means over seeds" in markdown


def test_packing_suite_runs_workers_from_one_tokenisation(tiny_task, tmp_path):
    _bench(tiny_task, tmp_path, "--suite", "packing", "--levels", "1")
    doc = json.loads((tmp_path / "bench-packing.json").read_text())
    (row,) = doc["rows"]
    assert row["failed"] == 0 and row["aggregate_samples_per_s"] > 0 and row["speedup"] == 1.0
    # train, dev and test encoded once each on the driver (or read from the token cache)
    summary = doc["summary"]
    assert summary["tokenisations"] + summary["tokenisation_cache_hits"] == 3
    assert summary["best_gpus_per_trial"] == 1.0


def test_packing_suite_fuses_trials_into_one_worker(tiny_task, tmp_path):
    _bench(tiny_task, tmp_path, "--suite", "packing", "--levels", "2", "--via", "fused",
           "--fused-seeds", "distinct", "--profile-steps", "2")  # fmt: skip
    doc = json.loads((tmp_path / "bench-packing.json").read_text())
    alone, fused = doc["rows"]
    # the fused level profiled 2 steps after its timed run: the ops' own host time (CPU), by kind
    profile = fused["profile"]
    assert (profile["steps"], profile["clock"], alone["profile"]) == (2, "host", None)
    assert profile["ms_per_step"] > 0 and profile["timed_step_ms"] > 0
    assert sum(profile["shares"].values()) == pytest.approx(1, abs=1e-3)
    assert profile["shares"]["matmul"] > 0 and "aten::bmm" in profile["top_ms_per_step"]
    assert "profile at 2" in (tmp_path / "bench-packing.md").read_text()
    assert all("profile" not in t for t in fused["trials"])
    assert (alone["via"], alone["concurrent"], fused["via"], fused["concurrent"]) == (
        "processes", 1, "fused", 2)  # fmt: skip
    assert fused["failed"] == 0 and fused["overlap"] == 2
    assert fused["speedup"] == pytest.approx(
        fused["aggregate_samples_per_s"] / alone["aggregate_samples_per_s"])  # fmt: skip
    trials = fused["trials"]
    assert [t["seed"] for t in trials] == [0, 1] and trials[0]["lr"] < trials[1]["lr"]
    assert all(t["samples"] == alone["trials"][0]["samples"] for t in trials)
    assert doc["summary"]["best_gpus_per_trial"] == 1.0  # from the process rows only


def test_packing_suite_fuses_trials_in_several_processes(tiny_task, tmp_path):
    _bench(tiny_task, tmp_path, "--suite", "packing", "--levels", "2", "--via", "fused",
           "--fused-per-process", "1")  # fmt: skip
    doc = json.loads((tmp_path / "bench-packing.json").read_text())
    fused = doc["rows"][-1]
    assert (fused["via"], fused["concurrent"], fused["processes"], fused["failed"]) == (
        "fused", 2, 2, 0)  # fmt: skip


def test_packing_suite_fuses_trials_of_mixed_ranks_and_placements(tiny_task, tmp_path):
    _bench(tiny_task, tmp_path, "--suite", "packing", "--levels", "3", "--via", "fused",
           "--fused-mix", "both")  # fmt: skip
    doc = json.loads((tmp_path / "bench-packing.json").read_text())
    fused = doc["rows"][-1]
    assert (fused["via"], fused["concurrent"], fused["failed"]) == ("fused", 3, 0)
    trials = fused["trials"]
    assert [(t["rank"], t["placement"]) for t in trials] == [
        (4, "attn_qv"), (8, "ffn"), (16, "all")]  # fmt: skip
    assert doc["rows"][0]["trials"][0]["rank"] == 8  # the baseline alone: r=8 on query/value


@pytest.mark.parametrize("option", [["--fused-mix", "ranks"], ["--profile-steps", "4"]])
def test_fused_options_are_refused_outside_fused(tmp_path, option):
    argv = ["--suite", "packing", "--via", "processes", *option]
    assert run_cli(main, [*argv, "--out", str(tmp_path)]) == 2


def test_fused_bench_trials_spread_their_learning_rates():
    assert fused_lrs(1e-3, 1) == [1e-3]
    assert fused_lrs(1e-3, 3) == pytest.approx([5e-4, 1e-3, 2e-3])


def test_bad_input_exits_2_naming_the_value(tmp_path, capsys):
    assert run_cli(main, ["--settings", "nope", "--out", str(tmp_path)]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert run_cli(main, ["--suite", "search", "--out", str(tmp_path)]) == 2
    assert run_cli(main, ["--suite", "packing", "--levels", "0", "--out", str(tmp_path)]) == 2
    fused = ["--suite", "packing", "--via", "fused", "--levels", "2,6", "--fused-per-process", "4"]
    assert run_cli(main, [*fused, "--out", str(tmp_path)]) == 2
    assert "--fused-per-process=4" in capsys.readouterr().err
    plain = ["--suite", "packing", "--fused-seeds", "distinct", "--out", str(tmp_path)]
    assert run_cli(main, plain) == 2
    assert "apply to --via fused, not --via processes" in capsys.readouterr().err
    assert run_cli(main, ["--seeds", "x", "--out", str(tmp_path)]) == 2
