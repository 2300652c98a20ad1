"""UniPELT's gates over a row's real tokens (trainables/methods/gates.py): adapters' mean over every
position of the hooked logits is the masked mean, value and gradient; the built model's gates are
all hooked; a row scores alone as padded (tests/test_methods_contract.py's padding test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_methods_contract import batch, build, config_for
from trainables.methods.gates import gate_layers, masked_gates


class Gated(nn.Module):
    """What adapters' gated modules do with their gate: mean over positions of sigmoid(gate(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.use_gating = True
        self.gate = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(torch.sigmoid(self.gate(x)), dim=1)


def masked_mean_gate(model: Gated, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.unsqueeze(-1).to(x.dtype)
    return (torch.sigmoid(model.gate(x)) * weight).sum(1) / weight.sum(1)


def test_the_library_mean_of_hooked_logits_is_the_masked_mean_with_its_gradient():
    torch.manual_seed(0)
    model, x = Gated(), torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = masked_mean_gate(model, x, mask)
    grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    plain = model(x)
    assert not torch.allclose(plain[1:], expected[1:], atol=1e-3)  # the library's mean differs
    masked_gates(model)(mask)
    got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for g, e in zip(torch.autograd.grad(got.sum(), list(model.parameters())), grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


def test_saturated_gates_in_bf16_stay_finite_value_and_gradient():
    model, x = Gated().to(torch.bfloat16), torch.randn(2, 4, 6, dtype=torch.bfloat16)
    with torch.no_grad():
        model.gate.bias.fill_(40.0)  # sigmoid rounds to 1 in bf16
    masked_gates(model)(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    out = model(x)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_a_mask_of_another_shape_leaves_the_logits_as_they_are():
    model, x = Gated(), torch.randn(2, 4, 6)
    before = model(x)
    masked_gates(model)(torch.ones(2, 7))
    torch.testing.assert_close(model(x), before)


def test_every_unipelt_gate_is_hooked_and_a_model_without_gates_is_refused():
    model = build(config_for("unipelt"))
    layers = gate_layers(model)
    # per layer: LoRA's on query and value, the bottleneck adapter's, prefix tuning's
    assert len(layers) == 4 * model.shape.num_layers
    assert all(layer._forward_hooks for layer in layers)
    with pytest.raises(ValueError, match="no adapters gates"):
        masked_gates(build(config_for("pfeiffer")))


def test_unipelt_logits_of_a_row_do_not_depend_on_the_batch_padding_it_trains_with():
    torch.manual_seed(0)
    model = build(config_for("unipelt")).eval()  # no dropout: the two passes comparable
    ids, mask, types = batch()
    loss = model(ids, mask, types)[1].sum()
    padded = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                 allow_unused=True)  # fmt: skip
    alone_loss = model(ids[1:2, :6], mask[1:2, :6], types[1:2, :6])[0].sum()
    alone = torch.autograd.grad(alone_loss, [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)  # fmt: skip
    for a, b in zip(padded, alone, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
