"""The training loop on a tiny random BERT and a learnable synthetic task: learning, evaluation
cadence, early stop, exact resume, regression, out-of-memory status; and TrainConfig."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from trainables.backbones import load_backbone
from trainables.data.encoded import Encoded
from trainables.inference import evaluate, measure_latency, predict
from trainables.methods import build_model
from trainables.train_config import TrainConfig
from trainables.training.loop import FitResult, fit

VOCAB = 40
MARKER = 7  # class 1 rows carry this token; the regression label is its share of the row


class TinyClassifier(nn.Module):
    """The PeftClassifier contract on a 2-layer, hidden-32 random BERT with a masked-mean head."""

    def __init__(self, num_labels: int = 2, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        )  # fmt: skip
        self.bert = BertModel(config, add_pooling_layer=False)
        self.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # some frozen weights
        self.head = nn.Linear(32, num_labels)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def synthetic(n: int, *, seed: int, regression: bool = False) -> Encoded:
    """Rows of random tokens; about half carry MARKER tokens, which decide the label."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 40, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(MARKER + 1, VOCAB, size=offsets[-1]).astype(np.int32)
    positive = rng.random(n) < 0.5
    share = np.where(positive, rng.uniform(0.2, 0.8, size=n), 0.0)
    for i in np.flatnonzero(positive):
        row = ids[offsets[i] : offsets[i + 1]]
        row[rng.random(len(row)) < share[i]] = MARKER
    is_marker = ids == MARKER
    observed = np.add.reduceat(is_marker, offsets[:-1]) / lengths
    labels = (5 * observed).astype(np.float32) if regression else (observed > 0).astype(np.int64)
    return Encoded(ids, offsets, labels, None)


TRAIN, DEV = synthetic(384, seed=1), synthetic(128, seed=2)
FAST = TrainConfig(lr=3e-3, batch_size=32, epochs=4, evals=6, eval_batch_size=64)


def run(config=FAST, *, model=None, on_eval=None, state=None, **kwargs) -> FitResult:
    model = TinyClassifier() if model is None else model
    kwargs = {"task_kind": "classification", "metric": "accuracy", "device": "cpu", **kwargs}
    return fit(model, TRAIN, DEV, config, on_eval=on_eval, state=state, **kwargs)


def test_learns_and_reports_every_evaluation():
    reports = []
    result = run(on_eval=reports.append)
    assert result.status == "completed" and result.evaluations == FAST.evals
    total = FAST.total_steps(len(TRAIN))
    assert [r.evaluation for r in reports] == list(range(1, FAST.evals + 1))
    assert [r.step for r in reports] == list(FAST.eval_steps(total)) and reports[-1].step == total
    assert reports[-1].train_loss < 0.7 * reports[0].train_loss
    assert result.best_dev_score == max(r.dev_score for r in reports) > 0.8  # chance is ~0.5
    assert result.dev_metrics == reports[-1].dev_metrics
    assert result.samples_seen == reports[-1].samples_seen == FAST.epochs * len(TRAIN)
    assert result.tokens_seen == FAST.epochs * int(TRAIN.lengths.sum()) < result.padded_tokens_seen
    assert result.train_samples_per_s > 0 and result.peak_mem_mib is None


def test_early_stop_returns_stopped_with_what_was_reached():
    result = run(on_eval=lambda r: r.evaluation == 3)
    assert result.status == "stopped" and result.evaluations == 3
    assert result.steps == FAST.eval_steps(FAST.total_steps(len(TRAIN)))[2]
    # a stop asked for at the last evaluation cuts nothing: the run completed
    assert run(FAST.replace(evals=1, epochs=1), on_eval=lambda r: True).status == "completed"


@pytest.mark.parametrize("stop_at", [2, 3], ids=["mid-epoch", "epoch-end"])
def test_resume_reproduces_the_uninterrupted_run_exactly(stop_at):
    initial = TinyClassifier(seed=3).state_dict()
    uninterrupted = TinyClassifier()
    uninterrupted.load_state_dict(initial)
    full_reports = []
    full = run(model=uninterrupted, on_eval=full_reports.append)

    first = TinyClassifier()
    first.load_state_dict(initial)
    saved = io.BytesIO()
    head_reports = []

    def stop_early(report) -> bool:
        head_reports.append(report)
        if report.evaluation == stop_at:
            torch.save({"model": first.state_dict(), "loop": report.state()}, saved)
            return True
        return False

    assert run(model=first, on_eval=stop_early).status == "stopped"
    per_epoch = FAST.steps_per_epoch(len(TRAIN))
    assert (head_reports[-1].step % per_epoch == 0) == (stop_at == 3)  # both cases are covered
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)  # plain tensors and values only
    resumed = TinyClassifier(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    tail_reports = []
    tail = run(model=resumed, state=checkpoint["loop"], on_eval=tail_reports.append)

    assert tail.status == "completed"
    pairs = [(r.evaluation, r.step, r.samples_seen) for r in head_reports + tail_reports]
    assert pairs == [(r.evaluation, r.step, r.samples_seen) for r in full_reports]
    assert [r.dev_score for r in head_reports + tail_reports] == [r.dev_score for r in full_reports]
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert (tail.tokens_seen, tail.padded_tokens_seen) == (
        full.tokens_seen,
        full.padded_tokens_seen,
    )
    assert tail.best_dev_score == full.best_dev_score and tail.best_step == full.best_step


def test_resume_refuses_a_state_from_another_recipe_and_stale_state_calls():
    captured = []
    run(FAST.replace(evals=2, epochs=1), on_eval=captured.append)
    with pytest.raises(RuntimeError, match="called at step"):
        captured[0].state()  # the loop moved on after evaluation 1
    stopped = []
    run(FAST.replace(evals=2, epochs=1), on_eval=lambda r: stopped.append(r.state()) or True)
    with pytest.raises(ConfigError, match=r"cannot resume: lr=0\.001 but the state has lr=0\.003"):
        run(FAST.replace(evals=2, epochs=1, lr=1e-3), state=stopped[0])
    older = {**stopped[0], "config": dict(stopped[0]["config"])}
    del older["config"]["head_lr_scale"]  # a state saved before the knob existed
    with pytest.raises(
        ConfigError,
        match=r"the state predates head_lr_scale \(added in commit 8752f3f\).*git_commit",
    ):
        run(FAST.replace(evals=2, epochs=1), state=older)


def test_regression_trains_with_mse_and_scores_correlation():
    train, dev = synthetic(384, seed=1, regression=True), synthetic(128, seed=2, regression=True)
    reports = []
    result = fit(
        TinyClassifier(num_labels=1), train, dev, FAST, task_kind="regression",
        metric="pearson_spearman", on_eval=reports.append, device="cpu",
    )  # fmt: skip
    assert result.status == "completed"
    assert reports[-1].dev_loss < 0.5 * reports[0].dev_loss
    assert result.dev_metrics["pearson"] > 0.8 and result.best_dev_score > 0.8
    with pytest.raises(ConfigError, match="does not fit task_kind"):
        fit(
            TinyClassifier(),
            train,
            dev,
            FAST,
            task_kind="classification",
            metric="pearson_spearman",
        )


class HookedClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.hook_calls: list[tuple[int, bool]] = []

    def step_hook(self, global_step: int) -> None:
        self.hook_calls.append((global_step, self.head.weight.grad is not None))


def test_step_hook_runs_after_every_step_while_gradients_exist():
    model = HookedClassifier()
    result = run(FAST.replace(max_steps=10, evals=2), model=model)
    assert model.hook_calls == [(step, True) for step in range(10)] and result.steps == 10


class ExhaustsMemory(TinyClassifier):
    def __init__(self, after_calls: int) -> None:
        super().__init__()
        self.calls, self.after_calls = 0, after_calls

    def forward(self, *args):
        self.calls += 1
        if self.calls > self.after_calls:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test model)")
        return super().forward(*args)


def test_out_of_memory_is_a_status_not_a_crash():
    result = run(FAST.replace(evals=2), model=ExhaustsMemory(after_calls=5))
    assert result.status == "oom" and result.steps == 5 and result.evaluations == 0
    assert result.best_dev_score is None


def test_predict_returns_logits_in_the_original_order():
    model = TinyClassifier()
    batched = predict(model, DEV, batch_size=16)
    single = np.concatenate([predict(model, DEV.select([i]), batch_size=1) for i in range(20)])
    np.testing.assert_allclose(batched[:20], single, atol=1e-5)
    loss, metrics = evaluate(model, DEV, task_kind="classification", metric="f1", batch_size=16)
    assert loss > 0 and set(metrics) == {"score", "f1", "accuracy", "top_class_share"}
    assert model.training  # the model's mode is left as it was
    assert measure_latency(model, DEV, batch_size=4, n=5) > 0


def test_train_config_validates_and_round_trips():
    config = TrainConfig.from_dict({"lr": "3e-4", "epochs": "2", "compile": "false", "evals": "4"})
    assert config == TrainConfig(lr=3e-4, epochs=2.0, evals=4)
    assert TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match=r"train key='epoch' is not one of: batch_size, compile"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match=r"precision='fp16' is not one of: auto, bf16, fp32"):
        TrainConfig(precision="fp16")
    for bad, match in [
        ({"lr": 0}, r"lr=0 must be in \(0, 1.0\]"),
        ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"epochs": 0.0}, "epochs=0.0 must be > 0"),
        ({"grad_clip": -1.0}, "grad_clip=-1.0 must be >= 0"),
        ({"lr": "3e-4"}, "lr='3e-4' must be a number"),
        ({"head_lr_scale": 0.0}, "head_lr_scale=0.0 must be > 0"),
        ({"head_lr_scale": float("nan")}, "head_lr_scale=nan must be > 0"),
        ({"head_lr_max": 0.0}, r"head_lr_max=0.0 must be in \(0, 1.0\]"),
        ({"head_lr_max": "0.05"}, "head_lr_max='0.05' must be a number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)


@pytest.mark.parametrize(("lr", "head_lr_scale", "head_lr"), [
    (1e-3, 1.0, 1e-3), (1e-3, 10.0, 1e-2),
    (1e-2, 10.0, 0.05),  # capped at head_lr_max
    (0.08, 10.0, 0.08),  # never below lr
])  # fmt: skip
def test_the_head_learns_at_its_own_rate(lr, head_lr_scale, head_lr):
    """Adam's first step moves every weight with a gradient by its learning rate (no warm-up, no
    decay): the classifier by ``lr * head_lr_scale`` up to ``head_lr_max`` (0.05), the LoRA factors
    by ``lr``."""
    torch.manual_seed(0)
    model = build_model(MethodConfig(method="lora", rank=4, alpha=8), load_backbone("tiny-bert"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = FAST.replace(lr=lr, max_steps=1, evals=1, warmup_ratio=0.0, weight_decay=0.0,
                          head_lr_scale=head_lr_scale)  # fmt: skip
    assert config.head_lr == pytest.approx(head_lr)
    run(config, model=model)
    steps = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()
             if p.requires_grad}  # fmt: skip
    assert steps["classifier.weight"] == pytest.approx(head_lr, rel=1e-3)
    assert steps["classifier.bias"] == pytest.approx(head_lr, rel=1e-3)
    lora = [v for n, v in steps.items() if "lora_B" in n]
    assert lora and all(v == pytest.approx(lr, rel=1e-3) for v in lora)


def test_step_arithmetic():
    config = TrainConfig(batch_size=32, epochs=1.5, evals=8, warmup_ratio=0.1)
    assert config.steps_per_epoch(100) == 4 and config.total_steps(100) == 6
    assert config.replace(max_steps=50).total_steps(100) == 50
    steps = config.replace(max_steps=100).eval_steps(100)
    assert len(steps) == 8 and steps[-1] == 100 and len(set(steps)) == 8
    assert config.warmup_steps(100) == 10
    with pytest.raises(ConfigError, match="evals=8 exceeds the run's 6 steps"):
        config.eval_steps(6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_learns_with_fused_adamw_and_reports_memory():
    reports = []
    result = run(on_eval=reports.append, device="cuda")
    assert result.status == "completed" and result.best_dev_score > 0.8
    assert result.peak_mem_mib is not None and result.peak_mem_mib > 0
    state = reports[-1].state()
    assert state["cuda_rng"] is not None
    assert all(group["fused"] for group in state["optimizer"]["param_groups"])


class PlateauClassifier(TinyClassifier):
    """Records the loop's calls of the method hooks (lora_grow's plateau_hook, AdaLoRA's penalty)."""

    def __init__(self) -> None:
        super().__init__()
        self.plateau_losses: list[float] = []
        self.penalty_calls = 0

    def plateau_hook(self, dev_loss: float) -> bool:
        self.plateau_losses.append(dev_loss)
        return False

    def regularization_loss(self) -> torch.Tensor:
        self.penalty_calls += 1
        return sum(p.pow(2).sum() for p in self.head.parameters()) * 0.0


def test_method_hooks_are_called_after_each_evaluation_and_step():
    model = PlateauClassifier()
    reports = []
    result = run(model=model, on_eval=reports.append)
    assert model.plateau_losses == [r.dev_loss for r in reports]  # before on_eval, once each
    assert model.penalty_calls == result.steps
