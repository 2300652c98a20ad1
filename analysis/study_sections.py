"""Report sections of the studies of issue 9 (placement, GLUE methods and curve, AdaLoRA and rank
growth, novelty knobs, AutoPEFT): each picks its tables and figures and writes markdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis import markdown as md
from analysis import render
from analysis.arms import arm_front, arm_table, paired_deltas
from analysis.artifacts import load_artifacts
from analysis.autopeft import autopeft_frame, autopeft_front, baseline_table
from analysis.novelty import novelty_deltas, novelty_frame, novelty_table, placement_records
from analysis.qlora import TARGET_POINTS, accuracy_table, memory_table, with_quantize
from analysis.rank_maps import growth_table, rank_maps
from analysis.render_studies import curve_png, rank_heatmaps_png
from analysis.selection import completed
from analysis.tables import method_task_table
from analysis.trials import Study

Section = Callable[[Study, Path, str], list[str]]
ARM_FORMATS = {
    "mean": ".2f",
    "std": ".2f",
    "lr": ".1e",
    "wall_s": ".1f",
    "train_samples_per_s": ".0f",
}
DELTA_FORMATS = {"delta": "+.2f", "ci_low": "+.2f", "ci_high": "+.2f"}
BY_BUDGET = ("task", "budget_params")


def _figure(path: Path, title: str) -> str:
    return f"![{title}]({path.name})"


def _front(table, x: str, out: Path, name: str) -> list[str]:
    info = arm_front(table, x=x)
    shown = info.front.rename(columns={"method": "arm", "dev_mean": "dev (chose)",
                                       "test_score": "reported score"})  # fmt: skip
    lines = [f"{len(info.front)} of {len(table.data)} arms on the front, chosen on mean dev score "
             f"(up) and {x} (down), each with its mean reported score beside it:",
             "", md.frame(shown[["arm", x, "dev (chose)", "reported score"]],
                          formats={"dev (chose)": ".2f", "reported score": ".2f"})]  # fmt: skip
    if not info.front.empty:
        lines += ["", _figure(render.pareto_png(info, out / name), f"front vs {x}")]
    return lines


def placement(study: Study, out: Path, score: str) -> list[str]:
    table = arm_table(study.trials, keys=("placement", "layers"), score=score)
    lines = ["## Placement: where LoRA sits", "",
             f"Per arm: mean ± std of {score} (points) over seeds, trainable parameters, wall time "
             "of the whole trial (s, evaluations included) and training throughput.", "",
             md.frame(table.data, formats=ARM_FORMATS), "", md.table_notes(table)]  # fmt: skip
    if table.data.empty:
        return lines
    lines += ["", "### Efficiency frontier: score vs trainable parameters", ""]
    lines += _front(table, "trainable_params", out, "placement_params.png")
    lines += ["", "### Efficiency frontier: score vs training time", ""]
    return lines + _front(table, "wall_s", out, "placement_time.png")


def glue_methods(study: Study, out: Path, score: str) -> list[str]:
    table = method_task_table(study.trials, score=score)
    return ["## GLUE: full fine-tuning vs adapters vs LoRA", "",
            f"Mean ± std of {score} (points; each task's own metric: CoLA MCC, MRPC F1, STS-B "
            "mean of Pearson and Spearman, SST-2 and RTE accuracy) over seeds of the size and "
            "learning rate chosen on dev per task and method; best per task in bold.", "",
            md.e1_matrix(table), "", md.table_notes(table)]  # fmt: skip


def glue_curve(study: Study, out: Path, score: str) -> list[str]:
    table = arm_table(study.trials, keys=("method", "bottleneck", "rank", "layers"), score=score)
    table = replace(table, data=table.data.sort_values(["method", "trainable_params"]))
    lines = ["## Score vs trainable parameters (adapter sizes, LoRA ranks, top-k layers)", "",
             md.frame(table.data, formats=ARM_FORMATS), "", md.table_notes(table)]  # fmt: skip
    if not table.data.empty:
        png = curve_png(table, out / "glue_curve.png", score=score)
        lines += ["", _figure(png, "score vs parameters")]
    return lines


def adalora(study: Study, out: Path, score: str) -> list[str]:
    table = arm_table(study.trials, keys=("task", "budget_params", "method"), score=score)
    artifacts = load_artifacts(study)
    maps = rank_maps(study.trials, artifacts)
    growth = growth_table(study.trials, artifacts)
    lines = ["## LoRA vs AdaLoRA vs rank growth, small and large budget", "",
             md.frame(table.data, formats=ARM_FORMATS), "", md.table_notes(table), "",
             f"Seed-paired {score} difference to LoRA at the same task and budget (points, 95% "
             "bootstrap interval over the seeds both completed; fewer than 3 pairs: no interval "
             "worth reading):", "", md.frame(adalora_deltas(study.trials, score=score),
                                               formats=DELTA_FORMATS), "",
             "### AdaLoRA's final rank per layer and module", ""]  # fmt: skip
    if maps:
        lines += ["Mean over seeds of the non-zero singular values each adapted linear kept.", "",
                  _figure(rank_heatmaps_png(maps, out / "adalora_ranks.png"), "AdaLoRA ranks")]  # fmt: skip
        for m in maps:
            lines += ["", f"{m.task} at {m.budget_params or '?'} (init rank {m.init_rank}):", "",
                      md.frame(m.values.reset_index())]  # fmt: skip
    else:
        lines.append("_No completed AdaLoRA trial with ranks (metrics or saved weights)._")
    lines += ["", "### Rank growth on plateau: final active rank", "", md.frame(growth),
              "", "_A final rank equal to start_rank means no plateau grew it (or the loop did "
              "not call plateau_hook)._"]  # fmt: skip
    return lines


def adalora_deltas(trials: pd.DataFrame, *, score: str) -> pd.DataFrame:
    """AdaLoRA and rank growth minus LoRA, each at its own task and budget, paired on seeds (each
    arm's configuration chosen on dev): one row per (task, budget, arm)."""
    done = completed(trials)
    if done.empty or any(k not in done for k in BY_BUDGET):
        return pd.DataFrame(columns=[*BY_BUDGET, "arm", "delta", "ci_low", "ci_high", "n_pairs"])
    parts = [paired_deltas(g, arm="method", control="lora", score=score, by=BY_BUDGET)
             for _, g in done.groupby(list(BY_BUDGET), sort=True)]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


QLORA_FORMATS = {**ARM_FORMATS, "delta": "+.2f", "trainable_params": ",.0f", "base_mib": ".2f",
                 "adapter_mib": ".3f", "peak_mem_mib": ",.0f", "slowdown": ".2f"}  # fmt: skip


def qlora(study: Study, out: Path, score: str) -> list[str]:
    table = accuracy_table(study.trials, score=score)
    memory = memory_table(study.trials)
    lines = ["## LoRA vs AdaLoRA on a full-precision and a 4-bit (NF4) base, two budgets", "",
             f"Per arm, of the configuration chosen on dev: mean ± std of {score} (points) over "
             f"seeds; `delta`: the 4-bit arm minus its full-precision twin (points); the target is "
             f"|delta| <= {TARGET_POINTS}.", "",
             md.frame(table.data, formats=QLORA_FORMATS), "", md.table_notes(table), "",
             "### Memory: base / adapter (MiB), peak GPU memory, speed", "",
             "`base_mib`: the frozen backbone as held (4-bit weights with their quantisation "
             "state; embeddings, biases and LayerNorms fp32), `adapter_mib`: the method's weights "
             "(fp32, head included; AdaLoRA stores its initial rank, pruned values as zeros), both "
             "measured on the trial's model; `peak_mem_mib`: CUDA "
             "peak over training and the final evaluations (empty on CPU); `slowdown`: the twin's "
             "training samples/s over the arm's.", "",
             md.frame(memory, formats=QLORA_FORMATS), "",
             "### AdaLoRA's final rank per layer and module, per base", ""]  # fmt: skip
    artifacts = load_artifacts(study)
    trials = with_quantize(study.trials)
    maps = [replace(m, task=f"{m.task} ({q})") for q in ("none", "nf4")
            for m in rank_maps(trials[trials["quantize"] == q], artifacts)]  # fmt: skip
    if not maps:
        return [*lines, "_No completed AdaLoRA trial with ranks (metrics or saved weights)._"]
    lines += ["Mean over seeds of the non-zero singular values each adapted linear kept.", "",
              _figure(rank_heatmaps_png(maps, out / "qlora_ranks.png"), "AdaLoRA ranks")]  # fmt: skip
    for m in maps:
        lines += ["", f"{m.task} at {m.budget_params or '?'} (init rank {m.init_rank}):", "",
                  md.frame(m.values.reset_index())]  # fmt: skip
    return lines


def novelty(study: Study, out: Path, score: str) -> list[str]:
    frame = novelty_frame(study.trials, load_artifacts(study))
    table = novelty_table(frame, score=score)
    deltas = novelty_deltas(frame, score=score)
    records = placement_records(frame, load_artifacts(study))
    return ["## Novelty knobs vs the plain hybrid (equal trainable parameters)", "",
            md.frame(table.data, formats=ARM_FORMATS), "", md.table_notes(table), "",
            f"Seed-paired {score} difference to the plain hybrid (points, 95% bootstrap interval; "
            "fewer than 3 pairs: no interval worth reading):", "",
            md.frame(deltas, formats=DELTA_FORMATS), "",
            "Layers chosen by fusion entropy (mean entropy of each fused layer's attention over "
            "the warm-up, nats):", "", md.frame(records)]  # fmt: skip


def autopeft(study: Study, out: Path, score: str) -> list[str]:
    frame = autopeft_frame(study.trials, load_artifacts(study))
    table = baseline_table(frame, score=score)
    info = autopeft_front(frame, score=score)
    lines = ["## AutoPEFT vs UniPELT and the best single method", "",
             "Baselines chosen on dev; `dominated_by_autopeft`: some searched configuration is at "
             "least as good in score and size and better in one. Scores in points.", "",
             md.frame(table.data, formats={"dev_score": ".2f", "score": ".2f"}), "",
             md.table_notes(table)]  # fmt: skip
    if not info.front.empty:
        lines += ["", _figure(render.pareto_png(info, out / "autopeft_front.png"), "front")]
    return lines


def study_sections() -> dict[str, Section]:
    """Experiment (or family) name -> its section; family members share the family's."""
    from tuner.experiments import get_family

    sections: dict[str, Section] = {"placement": placement, "glue_curve": glue_curve,
                                    "novelty": novelty, "autopeft": autopeft}  # fmt: skip
    for family, section in (("glue_methods", glue_methods), ("adalora", adalora),
                            ("qlora", qlora)):  # fmt: skip
        sections[family] = section
        sections.update(dict.fromkeys(get_family(family), section))
    return sections


__all__ = ["adalora", "adalora_deltas", "autopeft", "glue_curve", "glue_methods", "novelty",
           "placement", "qlora", "study_sections"]  # fmt: skip
