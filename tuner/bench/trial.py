"""The per-trial benchmark: our loop against the usual way (Hugging Face ``Trainer`` with
``DataCollatorWithPadding``), same backbone, method, data, batch size, epochs and seed.

Both runners take the same :class:`PreparedData` (one tokenisation) and return a :class:`TrialRow`
of figures; :func:`finish_rows` then adds what needs every row (the common dev target, the time
to reach it, the speed-up over the baseline). Settings are data: a dict of named
:class:`TrialSetting` filled by :func:`register_setting`.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from search_spaces.errors import ConfigError
from search_spaces.registry import Registry
from trainables.backbones import BACKBONES, TINY_SEED, bert_config, load_backbone
from trainables.flops import device_peak_flops, mfu
from trainables.inference import evaluate
from trainables.methods import build_model
from trainables.prepared import PreparedData
from trainables.recipe import split_config
from trainables.training.loop import fit

RUNNERS = ("ours", "trainer")
BASELINE = "trainer-bs32"  # the reference: the usual way at the default batch size
EVALS = 4  # dev evaluations per run, on both sides
MIB = 2**20


@dataclass(frozen=True)
class TrialSetting:
    """One side of the comparison. Ours only: ``bf16_frozen`` stores the frozen backbone in bf16, so
    autocast stops re-casting it at every forward; ``cuda_graphs`` replays each batch shape's step
    (trainables/graphs.py); ``head`` is our classifier head (the Trainer's model is [CLS] + pooler)."""

    name: str
    runner: str
    batch_size: int = 32
    lr: float = 1e-3
    bf16_frozen: bool = False
    compile: bool = False
    cuda_graphs: bool = True
    head: str = "mean"

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ConfigError(f"runner={self.runner!r} must be one of {', '.join(RUNNERS)}")
        ours_only = self.bf16_frozen or self.compile or self.head != "mean"
        if self.runner == "trainer" and ours_only:
            raise ConfigError(f"setting {self.name!r}: bf16_frozen/compile/head are ours-only")


SETTINGS: Registry[TrialSetting] = Registry("bench setting")


def register_setting(setting: TrialSetting) -> TrialSetting:
    return SETTINGS.register(setting.name, setting)


register_setting(TrialSetting("trainer-bs32", "trainer"))
register_setting(TrialSetting("ours-bs32", "ours"))
register_setting(TrialSetting("ours-bs32-bf16w", "ours", bf16_frozen=True))
# lr 2e-3 at batch 128: the best rate measured there (docs/BENCHMARKS.md, defaults section)
register_setting(TrialSetting("trainer-bs128", "trainer", batch_size=128, lr=2e-3))
register_setting(TrialSetting("ours-bs128", "ours", batch_size=128, lr=2e-3))
register_setting(
    TrialSetting("ours-bs128-bf16w", "ours", batch_size=128, lr=2e-3, bf16_frozen=True)
)
register_setting(TrialSetting("ours-bs32-compile", "ours", compile=True))
# the loop before CUDA graphs: every kernel of the step launched from Python
register_setting(TrialSetting("ours-bs32-eager", "ours", cuda_graphs=False))
register_setting(
    TrialSetting("ours-bs128-eager", "ours", batch_size=128, lr=2e-3, cuda_graphs=False)
)
# the Trainer's head ([CLS] + pooler) on our side, for the accuracy comparison
register_setting(TrialSetting("ours-bs32-cls", "ours", head="cls"))


@dataclass(frozen=True)
class Workload:
    """What both sides train: task data, backbone, method (LoRA r=8, alpha 16, query/value)."""

    data: PreparedData
    backbone: str
    epochs: float = 1.0
    seed: int = 0
    rank: int = 8
    alpha: float = 16.0
    device: str = "cpu"


@dataclass
class TrialRow:
    setting: str
    runner: str
    batch_size: int
    lr: float
    train_samples_per_s: float  # samples / training time, evaluations excluded
    train_s: float
    wall_s: float  # model on device -> last evaluation done
    dev_score: float  # final
    best_dev_score: float
    test_score: float
    peak_mem_mib: float | None
    mfu: float | None
    samples: int
    tokens: int
    history: list[tuple[float, float]] = field(default_factory=list)  # (wall_s, dev_score)
    extra: dict[str, Any] = field(default_factory=dict)
    time_to_target_s: float | None = None
    speedup: float | None = None  # train samples/s over the baseline's (mean over its seeds)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_setting(setting: TrialSetting, work: Workload) -> TrialRow:
    """Train ``setting`` on ``work``; CUDA memory is released afterwards, and what the run left
    allocated is recorded (``extra["retained_mib"]``: a later row's peak would include it)."""
    cuda = work.device.startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else 0
    try:
        row = run_ours(setting, work) if setting.runner == "ours" else run_trainer(setting, work)
    finally:
        if cuda:
            gc.collect()  # a model kept alive by a reference cycle holds its memory until then
            torch.cuda.empty_cache()
    if cuda:
        row.extra["retained_mib"] = (torch.cuda.memory_allocated() - before) / MIB
    return row


def run_ours(setting: TrialSetting, work: Workload) -> TrialRow:
    data = work.data
    config = {"method": "lora", "rank": work.rank, "alpha": work.alpha, "epochs": work.epochs,
              "batch_size": setting.batch_size, "lr": setting.lr, "seed": work.seed,
              "evals": EVALS, "compile": setting.compile, "cuda_graphs": setting.cuda_graphs,
              "head": setting.head,
              "head_lr_scale": 1.0,  # the Trainer's recipe: one rate for every parameter
              # bf16 weights need bf16 autocast, also on CPU where "auto" means fp32
              "precision": "bf16" if setting.bf16_frozen else "auto"}  # fmt: skip
    method_config, train_config = split_config(config, num_labels=data.num_labels)
    torch.manual_seed(work.seed)
    backbone = load_backbone(work.backbone)
    model = build_model(
        method_config, backbone, total_steps=train_config.total_steps(len(data.train))
    ).to(work.device)
    if setting.bf16_frozen:
        store_frozen_in_bf16(model)
    history: list[tuple[float, float]] = []
    result = fit(
        model, data.train, data.dev, train_config, task_kind=data.task_kind, metric=data.metric,
        on_eval=lambda ev: history.append((ev.wall_s, ev.dev_score)), device=work.device,
    )  # fmt: skip
    if result.status != "completed":
        raise RuntimeError(f"{setting.name}: the run ended {result.status}")
    _, test = evaluate(model, data.test, task_kind=data.task_kind, metric=data.metric,
                       batch_size=train_config.eval_batch_size, device=work.device,
                       precision=train_config.precision)  # fmt: skip
    train_s = result.samples_seen / result.train_samples_per_s
    return TrialRow(
        setting=setting.name, runner="ours", batch_size=setting.batch_size, lr=setting.lr,
        train_samples_per_s=result.train_samples_per_s, train_s=train_s, wall_s=result.wall_s,
        dev_score=history[-1][1], best_dev_score=max(s for _, s in history),
        test_score=test["score"], peak_mem_mib=result.peak_mem_mib,
        mfu=mfu(backbone.shape, tokens=result.tokens_seen, samples=result.samples_seen,
                seconds=train_s, peak_flops=device_peak_flops(work.device)),
        samples=result.samples_seen, tokens=result.tokens_seen, history=history,
        extra={"padded_tokens": result.padded_tokens_seen, "steps": result.steps,
               "cuda_graphs": result.cuda_graphs, "graphs_off": result.graphs_off},
    )  # fmt: skip


def store_frozen_in_bf16(model: Any) -> int:
    """Cast every frozen floating-point parameter to bf16 in place; returns how many. Under bf16
    autocast the frozen weights are re-cast at every forward otherwise (autocast caches only
    casts of weights that require grad)."""
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.dtype.is_floating_point:
            param.data = param.data.to(torch.bfloat16)
            cast += 1
    return cast


def run_trainer(setting: TrialSetting, work: Workload) -> TrialRow:
    """The usual way, as the Hugging Face and peft docs show it: a sequence-classification model,
    ``get_peft_model``, ``Trainer`` with ``DataCollatorWithPadding``, bf16 on CUDA."""
    data, cuda = work.data, work.device.startswith("cuda")
    torch.manual_seed(work.seed)
    model = get_peft_model(
        hf_classifier(work.backbone, data.num_labels),
        LoraConfig(task_type="SEQ_CLS", r=work.rank, lora_alpha=work.alpha, lora_dropout=0.0,
                   target_modules=["query", "value"]),
    )  # fmt: skip
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = usual_trainer(setting, work, model, clock, output_dir=tmp)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        output = trainer.train()
        if not clock.history or clock.history[-1][0] < clock.since_begin() - 1e-3:
            trainer.evaluate()  # the last step is rarely a multiple of eval_steps
        peak = torch.cuda.max_memory_allocated() / MIB if cuda else None
        wall_s = clock.since_begin()
        test = trainer.predict(features(data.test)).metrics["test_accuracy"]
    train_s = wall_s - clock.eval_s
    samples = round(len(data.train) * work.epochs)
    tokens = round(int(data.train.lengths.sum()) * work.epochs)
    shape = load_backbone(work.backbone, meta=True).shape
    return TrialRow(
        setting=setting.name, runner="trainer", batch_size=setting.batch_size, lr=setting.lr,
        train_samples_per_s=samples / train_s, train_s=train_s, wall_s=wall_s,
        dev_score=clock.history[-1][1], best_dev_score=max(s for _, s in clock.history),
        test_score=float(test), peak_mem_mib=peak,
        mfu=mfu(shape, tokens=tokens, samples=samples, seconds=train_s,
                peak_flops=device_peak_flops(work.device)),
        samples=samples, tokens=tokens, history=clock.history,
        extra={"trainer_samples_per_s": output.metrics.get("train_samples_per_second"),
               "steps": output.global_step},
    )  # fmt: skip


def usual_trainer(
    setting: TrialSetting, work: Workload, model: Any, clock: _Clock, *, output_dir: str
) -> Trainer:
    """The docs' ``Trainer`` for ``model``: ``DataCollatorWithPadding``, warm-up 6 %, weight decay
    0.01, bf16 on CUDA, ``EVALS`` dev evaluations timed by ``clock``."""
    data, cuda = work.data, work.device.startswith("cuda")
    tokenizer = load_backbone(work.backbone, meta=True).tokenizer
    steps = math.ceil(work.epochs * math.ceil(len(data.train) / setting.batch_size))
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=setting.batch_size,
        per_device_eval_batch_size=128, learning_rate=setting.lr, num_train_epochs=work.epochs,
        warmup_ratio=0.06, weight_decay=0.01, bf16=cuda, eval_strategy="steps",
        eval_steps=max(1, steps // EVALS), save_strategy="no", report_to="none",
        seed=work.seed, use_cpu=not cuda, disable_tqdm=True,
    )  # fmt: skip
    return Trainer(
        model=model, args=args, train_dataset=features(data.train),
        eval_dataset=features(data.dev), data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy, callbacks=[_ClockCallback(clock)],
    )  # fmt: skip


class _ClockCallback(TrainerCallback):
    """Trainer's training start and evaluations, told to a :class:`_Clock` (Trainer takes
    ``TrainerCallback`` subclasses)."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.clock.begin()

    def on_evaluate(self, *args: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self.clock.evaluated(metrics or {})


class _Clock:
    """Wall time since training began, the dev accuracy at each evaluation, time spent evaluating."""

    def __init__(self) -> None:
        self.start = 0.0
        self.eval_s = 0.0
        self.history: list[tuple[float, float]] = []

    def begin(self) -> None:
        self.start = time.perf_counter()

    def since_begin(self) -> float:
        return time.perf_counter() - self.start

    def evaluated(self, metrics: dict[str, float]) -> None:
        if "eval_accuracy" not in metrics:
            return
        self.eval_s += float(metrics.get("eval_runtime", 0.0))
        self.history.append((self.since_begin(), float(metrics["eval_accuracy"])))


def _accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def features(encoded: Any) -> list[dict[str, Any]]:
    """Rows as the tokenizer returns them (``dataset.map(tokenize)`` in the docs): the same ids
    our loop trains on, unpadded; the collator pads each batch."""
    rows = []
    for i in range(len(encoded)):
        ids = encoded.row(i).tolist()
        row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(encoded.labels[i])}
        if encoded.token_type_ids is not None:
            start, end = encoded.offsets[i], encoded.offsets[i + 1]
            row["token_type_ids"] = encoded.token_type_ids[start:end].tolist()
        rows.append(row)
    return rows


def hf_classifier(backbone: str, num_labels: int) -> Any:
    """``AutoModelForSequenceClassification`` of a registered backbone or folder; the random test
    backbones are built from their shape with the same seed as ``load_backbone``."""
    if backbone not in BACKBONES:
        return AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels)
    spec = BACKBONES.get(backbone)
    if spec.folder is not None:
        return AutoModelForSequenceClassification.from_pretrained(
            str(spec.folder()), num_labels=num_labels
        )
    config = bert_config(spec.shape)  # type: ignore[arg-type]
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return BertForSequenceClassification(config)


# --- what needs every row --------------------------------------------------------------------------


def time_to_target(history: list[tuple[float, float]], target: float) -> float | None:
    """Wall seconds of the first evaluation whose dev score reaches ``target``; None if none."""
    return next((t for t, score in history if score >= target - 1e-12), None)


def finish_rows(rows: list[TrialRow], *, baseline: str = BASELINE) -> dict[str, Any]:
    """Fill ``time_to_target_s`` (target: the lowest final dev score of all rows, so every row
    can reach it) and ``speedup`` over ``baseline``'s mean throughput when it ran; returns the
    summary, with each setting's means over its seeds and its test gap to the baseline's mean
    ("equal accuracy" is judged on these means: one seed's test score moves by ~1 point)."""
    if not rows:
        return {}
    target = min(r.dev_score for r in rows)
    means = setting_means(rows)
    base = means.get(baseline)
    for r in rows:
        r.time_to_target_s = time_to_target(r.history, target)
        if base is not None and base["train_samples_per_s"] > 0:
            r.speedup = r.train_samples_per_s / base["train_samples_per_s"]
    if base is not None:
        for m in means.values():
            m["speedup"] = m["train_samples_per_s"] / base["train_samples_per_s"]
            m["test_gap_points"] = 100 * (m["test_score"] - base["test_score"])
    return {"dev_target": target, "baseline": baseline if base else None, "means": means}


def setting_means(rows: list[TrialRow]) -> dict[str, dict[str, float]]:
    """Per setting: the mean train samples/s, final dev and test score over its seeds."""
    groups: dict[str, list[TrialRow]] = {}
    for r in rows:
        groups.setdefault(r.setting, []).append(r)
    return {
        name: {"seeds": len(g),
               "train_samples_per_s": sum(r.train_samples_per_s for r in g) / len(g),
               "dev_score": sum(r.dev_score for r in g) / len(g),
               "test_score": sum(r.test_score for r in g) / len(g)}
        for name, g in groups.items()
    }  # fmt: skip


def with_settings(names: list[str]) -> list[TrialSetting]:
    return [SETTINGS.get(n) for n in names]


def replace_setting(setting: TrialSetting, **changes: Any) -> TrialSetting:
    return replace(setting, **changes)
