"""CUDA graphs of the training step (trainables/training/graphs.py): the same run as eager, faster; a
failed capture falls back to eager; graphed states resume anywhere. The graph tests need a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from tests.test_loop import DEV, FAST, TRAIN, VOCAB, TinyClassifier, run
from tests.test_methods_contract import METHOD_NAMES, build, config_for
from trainables.training.loop import fit
from trainables.training.state import portable

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class GraphableClassifier(nn.Module):
    """TinyClassifier without dropout (so eager and graphed runs see the same numbers) and with the
    [B, 1, T] mask PeftClassifier passes (a [B, T] mask syncs with the host, which capture refuses)."""

    graph_safe = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask[:, None, :], token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def test_graphs_are_off_on_cpu():
    reports = []
    result = run(FAST.replace(evals=2), on_eval=reports.append)
    assert result.cuda_graphs == 0 and result.graphs_off is None
    assert [r.graphed_steps for r in reports] == [0, 0]


def test_portable_state_turns_tensor_learning_rates_into_floats():
    param = nn.Parameter(torch.zeros(2))
    group = {"params": [param], "lr": torch.tensor(0.5)}
    optimizer = torch.optim.AdamW([group], lr=0.5, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    opt_state, sched_state = portable(optimizer.state_dict()), portable(scheduler.state_dict())
    assert (
        opt_state["param_groups"][0]["lr"] == 0.25
        and type(opt_state["param_groups"][0]["lr"]) is float
    )
    assert sched_state["base_lrs"] == [0.5] and sched_state["_last_lr"] == [0.25]
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)  # the live one is untouched


@CUDA
def test_graphed_run_matches_eager_and_captures_each_shape():
    config = FAST.replace(lr=3e-3)
    eager = fit(GraphableClassifier(), TRAIN, DEV, config.replace(cuda_graphs=False),
                task_kind="classification", metric="accuracy", device="cuda")  # fmt: skip
    reports = []
    graphed = fit(GraphableClassifier(), TRAIN, DEV, config, on_eval=reports.append,
                  task_kind="classification", metric="accuracy", device="cuda")  # fmt: skip
    assert eager.cuda_graphs == 0 and graphed.graphs_off is None
    assert 1 <= graphed.cuda_graphs <= 40 // 8 + 1  # one per padded width of a full batch
    assert graphed.steps == eager.steps and graphed.best_dev_score > 0.8
    assert graphed.best_dev_score == pytest.approx(eager.best_dev_score, abs=0.02)
    assert reports[-1].train_loss < 0.7 * reports[0].train_loss
    # every step replays (a shape's first batch right after its capture): 384 rows = 12 full
    # batches an epoch, no short last batch to run eager
    assert reports[-1].graphed_steps == graphed.steps


@CUDA
def test_step_that_syncs_with_the_host_runs_eager_with_dropout_intact():
    model = TinyClassifier()  # dropout on; BertModel asks torch.all(mask == 1) of a [B, T] mask
    result = fit(model, TRAIN, DEV, FAST, task_kind="classification", metric="accuracy",
                 device="cuda")  # fmt: skip
    assert result.cuda_graphs == 0 and "waits for the host" in (result.graphs_off or "")
    assert result.status == "completed" and result.best_dev_score > 0.8


@CUDA
def test_graphed_state_resumes_eager_on_cpu():
    states = []

    def keep_first(report):
        if report.evaluation == 2:
            states.append(report.state())
        return report.evaluation == 2

    model = GraphableClassifier()
    first = fit(model, TRAIN, DEV, FAST, on_eval=keep_first, task_kind="classification",
                metric="accuracy", device="cuda")  # fmt: skip
    assert first.status == "stopped" and first.cuda_graphs >= 1
    state = states[0]
    assert type(state["optimizer"]["param_groups"][0]["lr"]) is float
    model.to("cpu")
    rest = fit(model, TRAIN, DEV, FAST.replace(cuda_graphs=False), state=state,
               task_kind="classification", metric="accuracy", device="cpu")  # fmt: skip
    assert rest.status == "completed" and rest.steps == FAST.total_steps(len(TRAIN))
    assert rest.best_dev_score > 0.8


@CUDA
def test_models_with_per_step_hooks_are_not_graphed():
    model = TinyClassifier()
    model.graph_safe = False  # what AdaLoRA and lora_grow report
    result = run(FAST.replace(evals=2), model=model, device="cuda")
    assert result.cuda_graphs == 0 and result.graphs_off is None


@CUDA
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_graph_safe_method_trains_from_graphs(method: str):
    """A graph-safe method's step captures (no host wait, no failed capture) and every full batch
    replays; the others run eager without trying."""
    model = build(config_for(method))
    reports = []
    result = fit(model, TRAIN, DEV, FAST.replace(evals=2, epochs=2), on_eval=reports.append,
                 task_kind="classification", metric="accuracy", device="cuda")  # fmt: skip
    assert result.status == "completed" and result.graphs_off is None, result.graphs_off
    if model.graph_safe:
        assert result.cuda_graphs >= 1 and reports[-1].graphed_steps == result.steps
    else:
        assert result.cuda_graphs == 0 and reports[-1].graphed_steps == 0


@CUDA
def test_graphed_adalora_reallocates_ranks_as_eager_does():
    """AdaLoRA's step hook (importance averages from the step's gradients, rank masks in place)
    runs after each replayed step: the same rank pattern and weights as the eager run."""
    from tests.test_fused import no_dropout

    config = FAST.replace(evals=2, epochs=3)
    runs = []
    for graphs in (False, True):
        steps = config.total_steps(len(TRAIN))  # its schedule reaches the final phase
        model = no_dropout(build(config_for("adalora"), total_steps=steps))
        result = fit(model, TRAIN, DEV, config.replace(cuda_graphs=graphs),
                     task_kind="classification", metric="accuracy", device="cuda")  # fmt: skip
        runs.append((model, result))
    (eager, eager_result), (graphed, graphed_result) = runs
    assert eager_result.cuda_graphs == 0 and graphed_result.cuda_graphs >= 1
    assert graphed_result.graphs_off is None, graphed_result.graphs_off
    patterns = [m.encoder.peft_config["default"].rank_pattern for m in (eager, graphed)]
    assert patterns[0] and patterns[0] == patterns[1]
    weights = [{n: p for n, p in m.named_parameters() if p.requires_grad} for m in (eager, graphed)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-4, rtol=1e-3, msg=name)


@CUDA
def test_graphs_of_two_runs_stepping_in_turn_share_one_memory_pool_and_train_as_alone():
    """A fused pool's groups step in turn, each from its own graphs: they share the process's one
    graph memory pool (one per run held 47-54 GiB for seven groups on an H100), and each still
    trains as it would alone."""
    from trainables.training.batching import Batch
    from trainables.training.graphs import StepGraphs, capturable_optimizer

    def graph_pool_bytes() -> dict[tuple[int, int], int]:
        sizes: dict[tuple[int, int], int] = {}
        for segment in torch.cuda.memory_snapshot():
            pool = tuple(segment.get("segment_pool_id", (0, 0)))
            if pool != (0, 0):  # a graph's private pool
                sizes[pool] = sizes.get(pool, 0) + segment["total_size"]
        return sizes

    torch.manual_seed(3)
    ids = torch.randint(1, VOCAB, (64, 40))
    batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=None,
                  labels=ids[:, 0] % 2, num_tokens=int(ids.numel()))  # fmt: skip

    def stepper(graphed: bool):
        model = GraphableClassifier().cuda()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = capturable_optimizer([{"params": params, "lr": 1e-3}], torch.device("cuda"))

        def body(b: Batch) -> torch.Tensor:
            loss = nn.functional.cross_entropy(model(b.input_ids, b.attention_mask), b.labels)
            loss.backward()
            optimizer.step()
            return loss.detach()

        graphs = StepGraphs(body, optimizer, params, batch_sizes=None, device=torch.device("cuda"))
        return model, (graphs.step if graphed else graphs._eager), graphs

    alone = []
    for _ in range(2):
        model, step, _ = stepper(graphed=False)
        for _ in range(4):
            step(batch.to(torch.device("cuda")))
        alone.append([p.detach().clone() for p in model.parameters()])
    (model_a, step_a, graphs_a), (model_b, step_b, graphs_b) = stepper(True), stepper(True)
    step_a(batch)
    after_one = graph_pool_bytes()
    for i in range(7):  # in turn, as the pool's groups: four steps each (a capture replays too)
        (step_b if i % 2 == 0 else step_a)(batch)
    sizes = graph_pool_bytes()
    assert graphs_a.captured == graphs_b.captured == 1 and graphs_a.replays == graphs_b.replays == 4
    assert len(sizes) == 1 and sum(sizes.values()) < 1.25 * sum(after_one.values()), sizes
    for model, reference in zip((model_a, model_b), alone, strict=True):
        for value, expected in zip(model.parameters(), reference, strict=True):
            torch.testing.assert_close(value.detach(), expected, atol=1e-5, rtol=1e-4)
