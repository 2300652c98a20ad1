"""QLoRA (issue #24): ``quantize=nf4`` is validated, counts exactly as the unquantised model, is
refused with one line on a host without CUDA before anything is loaded (tuner.train, tuner.run,
the trial), its memory arithmetic matches the built model, and the qlora study's report has its
accuracy table, memory table and rank maps.

Three tiers: plain CPU tests (no bitsandbytes needed); CPU tests of the real 4-bit model where
bitsandbytes is importable (0.50 has a CPU path for NF4, which the product refuses: it cannot
train after an evaluation, nor quantise tiny-bert, and older releases lack it; here it lets a CPU
check structure, counts, bytes and one backward step); ``gpu`` tests on CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.qlora import accuracy_table, memory_table
from analysis.study_sections import qlora as qlora_section
from analysis.synthetic import trial
from analysis.trials import make_study
from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError
from search_spaces.memory import MIB, base_bytes, linear_weight_sizes, memory_figures, nf4_bytes
from search_spaces.method_config import MethodConfig
from search_spaces.shapes import MINILM_L6, TINY_BERT
from trainables.backbones import load_backbone
from trainables.methods import build_model
from tuner.cli import run_cli
from tuner.experiments import get_experiment, get_family

ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the refusal is for CUDA-less hosts"
)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- configuration ------------------------------------------------------------------------------


def test_quantize_is_a_validated_method_key_that_round_trips():
    config = MethodConfig.from_dict({"method": "adalora", "quantize": "nf4"})
    assert config.quantize == "nf4" and MethodConfig(method="lora").quantize == "none"
    assert MethodConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for word in ("none", "None"):  # the --set word for "as loaded", not an empty value
        assert MethodConfig.from_dict({"method": "lora", "quantize": word}).quantize == "none"
    with pytest.raises(ConfigError, match=r"quantize='int4' is not one of: none, nf4"):
        MethodConfig(method="lora", quantize="int4")
    with pytest.raises(
        ConfigError, match=r"quantize='nf4' needs .*\(lora, adalora\), got method='full'"
    ):
        MethodConfig(method="full", quantize="nf4")


def test_params_counts_a_quantised_config_exactly_as_the_unquantised_one(capsys):
    from tuner.params import main

    argv = ["--method", "lora", "--set", "rank=8", "placement=attn_qv"]
    assert run_cli(main, [*argv, "--set", "quantize=nf4", "--json"]) == 0
    quantised = json.loads(capsys.readouterr().out)
    assert run_cli(main, [*argv, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert quantised["trainable_params"] == plain["trainable_params"] == 74_498
    assert quantised["added_params"] == plain["added_params"]
    assert quantised["config"]["quantize"] == "nf4"


def test_a_quantised_trial_keeps_quantize_in_its_params_and_mlflow_logs_it():
    from tuner.space import build_space, first_configs
    from tuner.tracking import trial_params

    exp = get_experiment("qlora_sst2")
    configs = first_configs(exp, build_space(exp), n=exp.num_samples)
    by_arm = {(c["method"], c["budget_params"], c["quantize"]): c for c in configs}
    assert {q for _, _, q in by_arm} == {"none", "nf4"}
    for (method, budget, q), config in by_arm.items():
        twin = by_arm[(method, budget, "none")]
        assert config["trainable_params"] == twin["trainable_params"]  # same arm, same count
        assert trial_params(config)["quantize"] == q


def test_the_qlora_family_runs_four_arms_at_two_budgets_on_sst2_and_cola():
    assert get_family("qlora") == ("qlora_sst2", "qlora_cola")
    exp = get_experiment("qlora_cola")
    arms = {(a["method"], a["quantize"], a["budget_params"]) for a in exp.search.configs}
    assert len(arms) == len(exp.search.configs) == 8
    assert {(m, q) for m, q, _ in arms} == {(m, q) for m in ("lora", "adalora")
                                           for q in ("none", "nf4")}  # fmt: skip


# --- refusal -------------------------------------------------------------------------------------


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


@CPU_ONLY
def test_train_refuses_a_quantised_config_on_cpu_before_loading_anything(tmp_path):
    # a data dir that does not exist: loading data would fail with another message
    proc = _cli("tuner.train", "--task", "glue/sst2", "--method", "lora", "--set", "quantize=nf4",
                "--data-dir", str(tmp_path / "absent"))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "quantize='nf4'" in proc.stderr and "needs a CUDA GPU" in proc.stderr


@CPU_ONLY
def test_a_quantised_study_is_refused_on_cpu_before_data_or_ray(tmp_path):
    proc = _cli("tuner.run", "qlora_sst2", "--preset", "smoke", "--storage", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing recorded, Ray never started
    dry = _cli("tuner.run", "qlora_sst2", "--dry-run")  # planning needs no GPU
    assert dry.returncode == 0 and "quantize=nf4" in dry.stdout


def test_study_refusals_that_hold_on_any_host(monkeypatch):
    from tuner.run import main

    with pytest.raises(ConfigError, match="--fuse trains unquantised LoRA rows only"):
        main(["qlora_cola", "--preset", "smoke", "--fuse", "4"])
    with pytest.raises(ConfigError, match="--gpus-per-trial 0.0 runs qlora_cola's"):
        main(["qlora_cola", "--preset", "smoke", "--gpus-per-trial", "0"])
    with pytest.raises(ConfigError, match="needs a method that keeps the backbone's linears"):
        main(["glue_curve", "--preset", "smoke", "--set", "quantize=nf4"])


def test_a_study_submitted_to_a_cluster_leaves_the_check_to_its_trials(monkeypatch):
    """The driver of a Ray job may sit on a CPU head node: its trials run on the GPU workers."""
    from types import SimpleNamespace

    from tuner.run import refuse_unrunnable_quantize

    exp = get_experiment("qlora_sst2")
    args = SimpleNamespace(fuse=None, gpus_per_trial=None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    refuse_unrunnable_quantize(exp, args)  # no error
    unquantised = get_experiment("adalora_sst2")
    monkeypatch.delenv("RAY_ADDRESS")
    refuse_unrunnable_quantize(unquantised, args)


@CPU_ONLY
def test_the_trainable_refuses_too_without_bitsandbytes_being_needed():
    config = MethodConfig(method="lora", quantize="nf4")
    imported_before = "bitsandbytes" in sys.modules
    with pytest.raises(ConfigError, match="needs a CUDA GPU; this host has none"):
        build_model(config, load_backbone("tiny-bert"))
    assert imported_before or "bitsandbytes" not in sys.modules  # refused before importing it
    from trainables.quantize import require_cuda

    with pytest.raises(ConfigError, match=r"quantize='fp4' is not one of: none, nf4"):
        require_cuda("fp4")
    require_cuda("none")  # nothing to refuse


# --- memory arithmetic ---------------------------------------------------------------------------


def test_nf4_bytes_are_what_bitsandbytes_stores():
    # measured on bitsandbytes 0.50.2 (Params4bit, nf4, compress_statistics): packed weight +
    # uint8 absmax + fp32 second-level absmax + fp32 offset, for these weight shapes
    assert nf4_bytes(384 * 384) == 76_072
    assert nf4_bytes(1536 * 384) == 304_276
    assert nf4_bytes(32 * 64) == 1_064
    assert nf4_bytes(100 * 30) == 1_555
    bits = 8 * nf4_bytes(1536 * 384) / (1536 * 384)
    assert 4.12 < bits < 4.13  # the paper's 4 + 8/64 + 32/(64*256) bits a weight


def test_base_bytes_quantise_only_the_encoder_linears():
    assert base_bytes(MINILM_L6, "none") == MINILM_L6.backbone_params * 4
    linears = sum(linear_weight_sizes(MINILM_L6))
    assert linears == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    saved = base_bytes(MINILM_L6, "none") - base_bytes(MINILM_L6, "nf4")
    assert saved == linears * 4 - sum(nf4_bytes(n) for n in linear_weight_sizes(MINILM_L6))
    # MiniLM's embeddings (11.9M of 22.6M) stay fp32: the base shrinks 1.7x, not 8x
    assert 86 < base_bytes(MINILM_L6, "none") / MIB < 86.1
    assert 50.7 < base_bytes(MINILM_L6, "nf4") / MIB < 50.9
    with pytest.raises(ConfigError, match="quantize='q4' is not one of"):
        base_bytes(TINY_BERT, "q4")


@pytest.mark.parametrize("method", ["lora", "adalora", "houlsby"])
@pytest.mark.parametrize("head", ["mean", "cls"])
def test_measured_bytes_of_a_built_model_equal_the_arithmetic(method, head):
    config = MethodConfig(method=method, head=head, placement="all", rank=2)
    model = build_model(config, load_backbone("tiny-bert"))
    shape = model.shape  # the registered tiny-bert: its tokenizer's vocabulary
    figures = memory_figures(shape, "none", count_params(config, shape).added_params)
    assert model.memory_bytes() == {"base_bytes": figures.base_bytes,
                                    "adapter_bytes": figures.adapter_bytes}  # fmt: skip
    assert model.memory_metrics()["base_mib"] == pytest.approx(figures.base_mib)


# --- the real 4-bit model on CPU (where bitsandbytes is importable) -----------------------------


@pytest.fixture()
def four_bit_on_cpu(monkeypatch):
    pytest.importorskip("bitsandbytes")
    import trainables.quantize as quantize

    monkeypatch.setattr(quantize, "cuda_available", lambda: True)  # bitsandbytes' CPU path


@pytest.mark.parametrize("method", ["lora", "adalora"])
@pytest.mark.parametrize("head", ["mean", "cls"])
def test_a_4bit_model_counts_and_trains_like_the_full_precision_one(four_bit_on_cpu, method, head,
                                                                    tmp_path):  # fmt: skip
    import bitsandbytes as bnb

    config = MethodConfig(method=method, head=head, placement="all", rank=2)
    plain = build_model(config, load_backbone("minilm-l6"))
    model = build_model(config.replace(quantize="nf4"), load_backbone("minilm-l6")).to("cpu")
    assert model.trainable_params() == plain.trainable_params()
    assert model.added_params() == plain.added_params()
    assert model.backbone_params() == plain.backbone_params() == MINILM_L6.backbone_params
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 6 * MINILM_L6.num_layers
    assert all(m.weight.dtype == torch.uint8 and not m.weight.requires_grad for m in four_bit)
    # the trap: head and pooler stay full-precision torch linears, trainable
    assert (
        type(model.classifier) is torch.nn.Linear and model.classifier.weight.dtype == torch.float32
    )
    bert = model.encoder.get_base_model()  # the BertModel inside peft's wrapper
    if head == "cls":
        assert type(bert.pooler.dense) is torch.nn.Linear and bert.pooler.dense.weight.requires_grad
    assert bert.embeddings.word_embeddings.weight.dtype == torch.float32
    figures = memory_figures(MINILM_L6, "nf4", count_params(config, MINILM_L6).added_params)
    assert model.memory_bytes() == {"base_bytes": figures.base_bytes,
                                    "adapter_bytes": figures.adapter_bytes}  # fmt: skip
    # one step: only trainable parameters get a gradient, the head among them
    ids = torch.randint(1000, 2000, (4, 12))
    logits = model.train()(ids, torch.ones_like(ids))
    logits.sum().backward()
    graded = {id(p) for p in model.parameters() if p.grad is not None}
    assert graded == {id(p) for p in model.parameters() if p.requires_grad}
    assert model.classifier.weight.grad is not None
    path = model.save_method_weights(tmp_path / "w.safetensors")
    fresh = build_model(config.replace(quantize="nf4"), load_backbone("minilm-l6")).to("cpu")
    fresh.load_method_weights(path)
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)


# --- the report section --------------------------------------------------------------------------


def _synthetic_qlora():
    records = []
    for seed in range(3):
        for method in ("lora", "adalora"):
            for q, shift, speed, base in (
                ("none", 0.0, 400.0, 86.06),
                ("nf4", -0.003, 320.0, 50.8),
            ):
                params = {"method": method, "quantize": q, "seed": seed, "task": "glue/sst2",
                          "budget_params": 85_000, "trainable_params": 83_714, "lr": 5.5e-4}  # fmt: skip
                final = {"base_mib": base, "adapter_mib": 0.32, "peak_mem_mib": 900.0,
                         "train_samples_per_s": speed}  # fmt: skip
                if method == "adalora":
                    final.update({"rank_L0_query": 2.0 + seed, "rank_L1_query": 1.0})
                score = 0.90 + shift + 0.001 * seed
                records.append(trial(f"{method}-{q}-{seed}", params=params, dev=score, test=score,
                                     final=final))  # fmt: skip
    return make_study("qlora_sst2", records, get_experiment("qlora_sst2").to_dict(), "synthetic")


def test_the_report_compares_each_4bit_arm_with_its_twin_and_tables_memory(tmp_path):
    study = _synthetic_qlora()
    table = accuracy_table(study.trials, score="test_score").data.set_index(["method", "quantize"])
    assert table.loc[("lora", "nf4"), "delta"] == pytest.approx(-0.3)
    assert table.loc[("lora", "nf4"), "within_target"] == True  # noqa: E712 (numpy bool)
    assert pd.isna(table.loc[("lora", "none"), "delta"])
    memory = memory_table(study.trials).set_index(["method", "quantize"])
    assert memory.loc[("adalora", "nf4"), "slowdown"] == pytest.approx(1.25)
    assert memory.loc[("adalora", "nf4"), "base_mib"] == pytest.approx(50.8)
    lines = "\n".join(qlora_section(study, tmp_path, "test_score"))
    assert "### Memory: base / adapter (MiB)" in lines and "| 50.80 |" in lines
    assert "glue/sst2 (nf4) at 85000" in lines and "glue/sst2 (none) at 85000" in lines
    assert (tmp_path / "qlora_ranks.png").stat().st_size > 1000


def test_a_study_without_quantize_reads_as_unquantised(tmp_path):
    records = [trial(f"t{s}", params={"method": "lora", "seed": s, "task": "glue/cola",
                                      "budget_params": 85_000}, dev=0.5, test=0.5)
               for s in range(2)]  # fmt: skip
    study = make_study("qlora_cola", records, get_experiment("qlora_cola").to_dict(), "synthetic")
    assert set(accuracy_table(study.trials, score="test_score").data["quantize"]) == {"none"}
    assert "No completed AdaLoRA trial" in "\n".join(qlora_section(study, tmp_path, "test_score"))


# --- packaging -----------------------------------------------------------------------------------


def test_bitsandbytes_is_an_optional_extra_the_bundle_documents():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["qlora"] == ["bitsandbytes>=0.45"]
    assert not any(d.startswith("bitsandbytes") for d in project["dependencies"])
    from cluster import bundle

    assert "'.[qlora]'" in bundle.__doc__


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_a_4bit_trial_trains_on_cuda_and_reports_its_memory(method, tmp_path, capsys):
    from tuner.train import main

    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [{"text": f"{words[i % 6]} film number {i}", "label": int(i % 6 in (0, 2, 4))}
            for i in range(400)]  # fmt: skip
    pd.DataFrame(rows[:320]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[320:]).to_csv(tmp_path / "validation.csv", index=False)
    finals = {}
    for q in ("none", "nf4"):
        argv = ["--task", str(tmp_path), "--method", method, "--epochs", "8", "--json",
                "--set", "evals=2", "max_length=16", "lr=2e-3", "placement=all", f"quantize={q}"]  # fmt: skip
        assert main(argv) == 0
        finals[q] = json.loads(capsys.readouterr().out)
    plain, four_bit = finals["none"], finals["nf4"]
    assert four_bit["status"] == "completed"
    assert four_bit["trainable_params"] == plain["trainable_params"]
    config = MethodConfig(method=method, placement="all")
    expected = memory_figures(MINILM_L6, "nf4", count_params(config, MINILM_L6).added_params)
    # measured on an H200 (bitsandbytes 0.50.2): the CUDA layers hold 41,472 bytes fewer than this
    # arithmetic on MiniLM (a quarter of a byte per 64-weight block, 0.08 %); not yet explained
    assert four_bit["base_mib"] == pytest.approx(expected.base_mib, rel=1e-3)
    assert four_bit["base_mib"] < 0.6 * plain["base_mib"]
    assert four_bit["peak_mem_mib"] > 0
    assert four_bit["dev_score"] > 0.6  # learned: not one class (the quantised-head trap)
