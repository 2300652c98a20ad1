"""Full fine-tuning and BitFit: no modules added, a subset of the backbone trained."""

from __future__ import annotations

from torch import nn

from search_spaces.accounting import method_layers
from search_spaces.method_config import MethodConfig
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks


def build_full(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """Every backbone parameter trainable (the baseline every PEFT method is compared with), or,
    with ``layers`` set, every weight of those encoder layers only (top-k fine-tuning: embeddings
    and the other layers frozen)."""
    if config.layers is None:
        for param in bert.parameters():
            param.requires_grad = True
        return bert, MethodHooks()
    for param in bert.parameters():
        param.requires_grad = False
    for i in method_layers(config, context.shape.num_layers):
        for param in bert.encoder.layer[i].parameters():
            param.requires_grad = True
    return bert, MethodHooks()


def build_bitfit(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """Only bias terms trainable, LayerNorm biases included (as in the BitFit paper's code)."""
    for name, param in bert.named_parameters():
        param.requires_grad = name.endswith(".bias")
    return bert, MethodHooks()


register_method(
    "full",
    paper="https://arxiv.org/abs/1810.04805",
    library="torch",
    builder=build_full,
    summary="full fine-tuning of every backbone weight (BERT's recipe)",
)
register_method(
    "bitfit",
    paper="https://arxiv.org/abs/2106.10199",
    library="torch",
    builder=build_bitfit,
    summary="BitFit: train only the bias terms",
)
