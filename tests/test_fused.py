"""Fused LoRA trials (trainables/fused/): K trials trained as one model get what each gets alone.

The trials differ in rank, alpha and the knobs each may set (lr, weight decay, clipping, seed);
dropout is off so that the only difference left is float rounding. The reference is the
product's own loop (``trainables.training.loop.fit``) on each trial alone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from search_spaces.row_groups import group_template
from tests.test_loop import DEV, TRAIN, synthetic
from trainables.backbones import load_backbone
from trainables.fused import (
    IGNORE_INDEX,
    FusedLoRA,
    RowAdamW,
    evaluate_fused,
    fit_fused,
    fused_batches,
    fused_losses,
)
from trainables.methods import build_model
from trainables.train_config import TrainConfig
from trainables.training.loop import fit

BASE = TrainConfig(lr=3e-3, batch_size=32, epochs=2, evals=2, eval_batch_size=64, warmup_ratio=0.1)
# 384 rows / 32 = 12 full batches; TRAIN_ODD (390 rows) ends each epoch on a short batch of 6
TRAIN_ODD = synthetic(390, seed=3)


def member(rank: int, alpha: int, *, seed: int, num_labels: int = 2) -> nn.Module:
    torch.manual_seed(0)  # the same random tiny backbone for every member
    backbone = load_backbone("tiny-bert")
    torch.manual_seed(seed)  # the member's own LoRA and head initialisation
    model = build_model(
        MethodConfig(method="lora", rank=rank, alpha=alpha, num_labels=num_labels),
        backbone,
    )  # fmt: skip
    return no_dropout(model)


def no_dropout(model: nn.Module) -> nn.Module:
    """Dropout off, in training mode too (SDPA attention keeps its rate as a float)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


def trained_alone(models, configs, train, *, task_kind="classification", metric="accuracy"):
    out = []
    for model, config in zip(models, configs, strict=True):
        alone = copy.deepcopy(model)
        result = fit(alone, train, DEV, config, task_kind=task_kind, metric=metric, device="cpu")
        out.append((alone, result))
    return out


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("train", [TRAIN, TRAIN_ODD], ids=["full-batches", "short-last-batch"])
def test_fused_trials_train_as_each_alone(train):
    models = [member(4, 8, seed=1), member(8, 16, seed=2), member(2, 2, seed=3)]
    # each its own head rate: the rate itself, 10x it, 3x it capped at 1.2e-2 by head_lr_max
    configs = [BASE.replace(head_lr_scale=1.0), BASE.replace(lr=1e-3, seed=5, weight_decay=0.1),
               BASE.replace(lr=5e-3, seed=9, grad_clip=0.0, head_lr_scale=3.0,
                            head_lr_max=1.2e-2)]  # fmt: skip
    alone = trained_alone(models, configs, train)
    fused = no_dropout(FusedLoRA(models))
    evals = []
    results = fit_fused(fused, train, DEV, configs, task_kind="classification", metric="accuracy",
                        device="cpu", on_eval=lambda step, r: evals.append((step, r)))  # fmt: skip
    assert [step for step, _ in evals] == list(BASE.eval_steps(BASE.total_steps(len(train))))
    for k, ((reference, ref_result), result) in enumerate(zip(alone, results, strict=True)):
        ours, theirs = trainable(models[k]), trainable(reference)  # written back into the member
        assert ours.keys() == theirs.keys()
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], atol=2e-5, rtol=1e-4, msg=name)
        assert result.best_dev_score == ref_result.best_dev_score
        assert result.dev_metrics == pytest.approx(ref_result.dev_metrics, abs=1e-6)
        assert (result.samples_seen, result.tokens_seen) == (
            ref_result.samples_seen, ref_result.tokens_seen)  # fmt: skip
        assert result.steps == ref_result.steps
    # the trials really differ (else matching trials could be mixed up unnoticed)
    assert len({float(trainable(m)["classifier.weight"].sum()) for m in models}) == 3


def test_trials_on_other_linears_train_as_each_alone_over_a_union_template():
    # placements differ (attention's query/value, the FFN, every linear) and so do ranks: the rows
    # live in a template with LoRA on every linear at the largest rank, zero where a trial has none
    methods = [MethodConfig(method="lora", rank=4, alpha=8, placement="attn_qv", num_labels=2),
               MethodConfig(method="lora", rank=2, alpha=4, placement="ffn", num_labels=2),
               MethodConfig(method="lora", rank=8, alpha=8, placement="all", num_labels=2)]  # fmt: skip

    def build(method, seed):
        torch.manual_seed(0)
        backbone = load_backbone("tiny-bert")
        torch.manual_seed(seed)
        return no_dropout(build_model(method, backbone))

    models = [build(m, seed) for seed, m in enumerate(methods, start=1)]
    configs = [BASE, BASE.replace(lr=1e-3, seed=5), BASE.replace(lr=5e-3, seed=9)]
    alone = trained_alone(models, configs, TRAIN)
    template = build(group_template(methods), 0)
    with pytest.raises(ConfigError, match="other linears"):
        FusedLoRA(models)
    fused = no_dropout(FusedLoRA.over(template, models))
    results = fit_fused(fused, TRAIN, DEV, configs, task_kind="classification",
                        metric="accuracy", device="cpu")  # fmt: skip
    for k, ((reference, ref_result), result) in enumerate(zip(alone, results, strict=True)):
        ours, theirs = trainable(models[k]), trainable(reference)
        assert ours.keys() == theirs.keys()
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], atol=2e-5, rtol=1e-4, msg=name)
        assert result.best_dev_score == ref_result.best_dev_score
    lora = [[n for n in trainable(m) if "lora_" in n] for m in models]
    assert any(".query." in n for n in lora[0]) and not any(".query." in n for n in lora[1])
    assert len(lora[2]) > max(len(lora[0]), len(lora[1]))  # "all" holds more linears than either


def test_fused_regression_matches_alone():
    # 200 rows in batches of 16 end on a short batch at another step for each seed: NaN dummy rows
    train, dev = synthetic(200, seed=4, regression=True), synthetic(64, seed=5, regression=True)
    models = [member(4, 8, seed=1, num_labels=1), member(2, 4, seed=2, num_labels=1)]
    configs = [BASE.replace(batch_size=16), BASE.replace(batch_size=16, seed=3, lr=1e-3)]
    alone = []
    for model, config in zip(models, configs, strict=True):
        copy_ = copy.deepcopy(model)
        alone.append(fit(copy_, train, dev, config, task_kind="regression", metric="pearson_spearman",
                         device="cpu"))  # fmt: skip
    results = fit_fused(no_dropout(FusedLoRA(models)), train, dev, configs, task_kind="regression",
                        metric="pearson_spearman", device="cpu")  # fmt: skip
    for result, reference in zip(results, alone, strict=True):
        assert result.dev_metrics == pytest.approx(reference.dev_metrics, abs=1e-4)


def test_evaluating_some_rows_gives_what_evaluating_all_gives_them():
    fused = no_dropout(
        FusedLoRA([member(4, 8, seed=1), member(8, 16, seed=2), member(2, 2, seed=3)])
    )
    kwargs = {"task_kind": "classification", "metric": "accuracy", "batch_size": 64}
    every = evaluate_fused(fused, DEV, **kwargs)
    some = evaluate_fused(fused, DEV, rows=[2, 0], **kwargs)
    for (loss, metrics), k in zip(some, [2, 0], strict=True):
        assert loss == pytest.approx(every[k][0], rel=1e-5)
        assert metrics == pytest.approx(every[k][1], rel=1e-5)
    assert every[0][0] != every[2][0]  # the rows differ, so a mix-up would show


def test_padding_rows_and_columns_stay_zero():
    models = [member(2, 4, seed=1), member(8, 16, seed=2)]
    fused = no_dropout(FusedLoRA(models))
    fit_fused(fused, TRAIN, DEV, [BASE, BASE], task_kind="classification", metric="accuracy",
              device="cpu")  # fmt: skip
    # trial 0 has rank 2 in slots of rank 8: its A columns and B rows past 2 are padding
    views = fused._views(0)
    lora = views[:-2]
    for a, b in zip(lora[::2], lora[1::2], strict=True):
        assert a.shape[1] == b.shape[0] == 8
        assert not a[:, 2:].any() and not b[2:, :].any()
        assert a[:, :2].all() and b[:2, :].any()  # trained where it is real
    assert sum(int(v.count_nonzero()) for v in views) <= models[0].trainable_params()


def test_a_fused_step_leaves_nothing_of_its_autograd_graph_alive():
    """What a step keeps past its end stays for the run; under graph capture, per graph (each
    row count and batch width its own), in the graph pool. FusedLoRA's forward left each
    linear's factors (views of [K, P], with their autograd graph) on the module until the next."""
    import gc

    from trainables.fused.train import prepare_fused

    def nonleaf() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects()
                if issubclass(type(o), torch.Tensor) and o.grad_fn is not None}  # fmt: skip

    fused = no_dropout(FusedLoRA([member(2, 4, seed=1), member(8, 16, seed=2)]))
    _, stepper = prepare_fused(fused, len(TRAIN), [BASE, BASE], task_kind="classification",
                               metric="accuracy", device="cpu")  # fmt: skip
    batch, _ = next(iter(fused_batches(TRAIN, [BASE, BASE], epoch=0, pack=stepper.pack)))
    before = nonleaf()
    stepper(batch)
    assert nonleaf() <= before


def test_row_adamw_is_adamw_per_row_with_its_heads_own_group():
    torch.manual_seed(0)
    rows = torch.randn(3, 10)
    grads = [torch.randn(3, 10) for _ in range(4)]
    lrs, wds, heads = [1e-2, 3e-3, 1e-3], [0.0, 0.01, 0.1], [10.0, 1.0, 3.0]
    theta = nn.Parameter(rows.clone())
    lr = torch.tensor(lrs)
    head = torch.tensor([0.0] * 6 + [1.0] * 4)  # the last 4 numbers of a row: its head
    scale = 1 + (torch.tensor(heads)[:, None] - 1) * head
    ours = RowAdamW(theta, lr=lr, lr_scale=scale, decay=torch.tensor(wds)[:, None].expand(3, 10))
    refs = [
        (nn.Parameter(rows[k, :6].clone()), nn.Parameter(rows[k, 6:].clone())) for k in range(3)
    ]
    theirs = [torch.optim.AdamW([{"params": [body]}, {"params": [top], "lr": lrs[k] * heads[k]}],
                                lr=lrs[k], weight_decay=wds[k])
              for k, (body, top) in enumerate(refs)]  # fmt: skip
    for g in grads:
        theta.grad = g.clone()
        ours.step()
        for k in range(3):
            refs[k][0].grad, refs[k][1].grad = g[k, :6].clone(), g[k, 6:].clone()
            theirs[k].step()
    for k in range(3):
        torch.testing.assert_close(theta.detach()[k], torch.cat([p.detach() for p in refs[k]]))


@pytest.mark.parametrize(
    ("active", "graphed", "rows"),
    [([11, 2, 9], True, [0, 2, 9, 11]), ([11, 2, 9], False, [2, 9, 11]), ([5], True, [5]),
     (list(range(9)), True, list(range(16))), ([0, 1, 2, 3], True, [0, 1, 2, 3])],
)  # fmt: skip
def test_a_graphed_step_computes_its_trials_rows_padded_to_a_power_of_two(active, graphed, rows):
    """A pool's group of 16 rows holding 3 trials computes 4 rows, not 16; eager, the 3."""
    from trainables.fused.step import row_buckets, rows_to_compute

    assert row_buckets(16) == (1, 2, 4, 8, 16) and row_buckets(3) == (1, 2, 3)
    assert rows_to_compute(active, 16, graphed=graphed) == rows


def test_losses_skip_dummy_rows():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([1, 2, IGNORE_INDEX, 0, 3, 1])
    losses = fused_losses(logits, labels, "classification")
    expected0 = nn.functional.cross_entropy(logits[0, :2], labels[:2])
    expected1 = nn.functional.cross_entropy(logits[1], labels[3:])
    torch.testing.assert_close(losses, torch.stack([expected0, expected1]))


def test_fused_batches_keep_each_trials_order_and_count_real_rows():
    configs = [BASE, BASE.replace(seed=7)]
    batches = list(fused_batches(TRAIN_ODD, configs, epoch=0))
    assert len(batches) == 13  # 12 full batches and a short one of 6 per trial
    seen = [0, 0]
    for batch, counts in batches:
        assert batch.size == 2 * max(c[0] for c in counts)
        real = (batch.labels != IGNORE_INDEX).view(2, -1).sum(dim=1).tolist()
        assert real == [c[0] for c in counts]
        seen = [s + c[0] for s, c in zip(seen, counts, strict=True)]
    assert seen == [len(TRAIN_ODD)] * 2


def test_refuses_what_cannot_be_fused():
    torch.manual_seed(0)
    bitfit = build_model(MethodConfig(method="bitfit", num_labels=2), load_backbone("tiny-bert"))
    with pytest.raises(ConfigError, match="method='bitfit'.*fusable"):
        FusedLoRA([member(4, 8, seed=1), bitfit])
    other = member(4, 8, seed=1)
    with torch.no_grad():
        other.encoder.get_base_model().embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(ConfigError, match="backbone weights differ"):
        FusedLoRA([member(4, 8, seed=1), other])
    fused = FusedLoRA([member(4, 8, seed=1), member(4, 8, seed=2)])
    with pytest.raises(ConfigError, match="batch_size=16 but trial 0 has batch_size=32"):
        fit_fused(fused, TRAIN, DEV, [BASE, BASE.replace(batch_size=16)],
                  task_kind="classification", metric="accuracy", device="cpu")  # fmt: skip
    with pytest.raises(ConfigError, match="1 training configs for 2"):
        fit_fused(fused, TRAIN, DEV, [BASE], task_kind="classification", metric="accuracy",
                  device="cpu")  # fmt: skip


def test_a_bf16_backbone_runs_without_autocast_and_trains_fp32_rows():
    fused = no_dropout(FusedLoRA([member(4, 8, seed=1), member(8, 16, seed=2)]))
    with torch.no_grad():
        fused.theta.normal_(std=0.1)  # non-zero LoRA factors, so that every path counts
    batch, _ = next(fused_batches(TRAIN, [BASE, BASE], epoch=0))
    inputs = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    reference = fused(*inputs)
    fused.backbone_to(torch.bfloat16)
    assert fused.backbone_dtype == torch.bfloat16
    assert fused.bert.embeddings.LayerNorm.weight.dtype == torch.bfloat16  # all of it, not linears
    assert fused.theta.dtype == torch.float32  # the trials' rows stay fp32 (AdamW's master copy)
    logits = fused(*inputs)
    assert logits.dtype == torch.float32  # the heads run in fp32
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.05)  # bf16 rounding only
    fused.theta.grad = None
    logits.sum().backward()
    assert fused.theta.grad is not None and fused.theta.grad.dtype == torch.float32
    assert bool(fused.theta.grad.abs().sum(dim=1).gt(0).all())  # every trial's row gets gradient
    # fit_fused stores the backbone in bf16 where precision is bf16 and trains every trial
    fused = no_dropout(FusedLoRA([member(4, 8, seed=1), member(8, 16, seed=2)]))
    configs = [BASE.replace(precision="bf16"), BASE.replace(precision="bf16", lr=1e-3)]
    results = fit_fused(fused, TRAIN, DEV, configs, task_kind="classification",
                        metric="accuracy", device="cpu")  # fmt: skip
    assert fused.backbone_dtype == torch.bfloat16
    assert all(r.best_dev_score is not None and r.steps == 24 for r in results)


def test_member_shapes_round_trip():
    models = [member(4, 8, seed=1), member(8, 16, seed=2)]
    before = [trainable(m) for m in models]
    fused = FusedLoRA(models)
    with torch.no_grad():
        fused.theta.mul_(2.0)
    fused.write_back()
    for model, old in zip(models, before, strict=True):
        for name, value in trainable(model).items():
            torch.testing.assert_close(value, 2.0 * old[name])
    assert np.isclose(float(fused.decay_mask.sum()), fused.theta.shape[1] - 2)
    head = fused.head_mask.bool()  # the classifier's weight and bias, the last slots of a row
    assert int(head.sum()) == (models[0].shape.hidden + 1) * fused.num_labels
    assert head[-int(head.sum()) :].all()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
def test_fused_steps_replay_from_graphs_and_match_alone_on_cuda():
    models = [member(4, 8, seed=1), member(8, 16, seed=2)]
    configs = [BASE, BASE.replace(lr=1e-3, seed=5)]
    alone = [
        fit(copy.deepcopy(m), TRAIN_ODD, DEV, c, task_kind="classification", metric="accuracy",
            device="cuda")
        for m, c in zip(models, configs, strict=True)
    ]  # fmt: skip
    fused = no_dropout(FusedLoRA(models))
    results = fit_fused(fused, TRAIN_ODD, DEV, configs, task_kind="classification",
                        metric="accuracy", device="cuda")  # fmt: skip
    for result, reference in zip(results, alone, strict=True):
        assert result.graphs_off is None and result.cuda_graphs >= 1
        assert reference.cuda_graphs >= 1  # the reference ran graphed too
        # bf16 autocast: the same run up to rounding, not to the bit
        assert result.best_dev_score == pytest.approx(reference.best_dev_score, abs=0.03)
        assert result.samples_seen == reference.samples_seen
