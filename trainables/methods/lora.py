"""LoRA and AdaLoRA through peft.

peft rather than adapters for plain LoRA: peft adapts any linear by name (adapters' LoRA cannot
reach ``attention.output``, needed by placements ``attn_all`` and ``all``), takes per-layer ranks as
data (``rank_pattern``) and merges exactly. The LoRA of the composed methods (unipelt,
lora_fusion) lives in adapters, where the composition happens.
"""

from __future__ import annotations

import re

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn

from search_spaces.accounting import method_layers
from search_spaces.method_config import PLACEMENTS, MethodConfig
from trainables.methods.registry import BuildContext, register_method
from trainables.model import MethodHooks
from trainables.ranks import rank_metric, singular_value_ranks

# placement entry -> path of the nn.Linear inside ``encoder.layer.<i>`` of a transformers BertModel
MODULE_PATHS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention.output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
# AdaLoRA's schedule as fractions of total_steps: warm up at full rank, then prune, then fine-tune
# at the final ranks (the paper's GLUE runs spend roughly these shares; peft's defaults of 0 give
# no warm-up at all).
ADALORA_TINIT_FRACTION = 0.1
ADALORA_TFINAL_FRACTION = 0.2
ADALORA_ORTH_REG_WEIGHT = 0.5  # peft's default, the paper's value


def target_modules(placement: str, layers: tuple[int, ...]) -> list[str]:
    """Full names of the linears LoRA adapts, e.g. ``encoder.layer.0.attention.self.query``."""
    return [f"encoder.layer.{i}.{MODULE_PATHS[m]}" for i in layers for m in PLACEMENTS[placement]]


def build_lora(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """LoRA on the linears of ``placement`` in the layers with a non-zero rank."""
    ranks = config.lora_ranks(context.shape.num_layers)
    layers = tuple(i for i, r in enumerate(ranks) if r)
    # per-layer ranks as data: exact-name patterns, escaped so "layer.1." never matches "layer.11."
    rank_pattern = {
        re.escape(name): ranks[i]
        for i in layers
        if ranks[i] != config.rank
        for name in target_modules(config.placement, (i,))
    }
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=target_modules(config.placement, layers),
        rank_pattern=rank_pattern,
        lora_dropout=0.0,
        bias="none",
    )
    model = get_peft_model(bert, peft_config)
    return model, MethodHooks(merge=model.merge_adapter)


def build_adalora(
    bert: nn.Module, config: MethodConfig, context: BuildContext
) -> tuple[nn.Module, MethodHooks]:
    """AdaLoRA: SVD-form LoRA starting at ``init_rank``, pruned towards an average of ``rank``."""
    layers = method_layers(config, context.shape.num_layers)
    total = context.total_steps
    peft_config = AdaLoraConfig(
        init_r=config.init_rank,
        target_r=config.rank,
        lora_alpha=config.alpha,
        target_modules=target_modules(config.placement, layers),
        total_step=total,
        tinit=int(total * ADALORA_TINIT_FRACTION),
        tfinal=int(total * ADALORA_TFINAL_FRACTION),
        orth_reg_weight=ADALORA_ORTH_REG_WEIGHT,
        lora_dropout=0.0,
    )
    model = get_peft_model(bert, peft_config)
    return model, MethodHooks(
        merge=model.merge_adapter,
        step=model.base_model.update_and_allocate,
        regularization=lambda: ADALORA_ORTH_REG_WEIGHT * orthogonality_penalty(model),
        metrics=lambda: adalora_rank_metrics(model),
    )


def adalora_rank_metrics(model: nn.Module) -> dict[str, float]:
    """The current rank of every adapted linear (non-zero singular values), e.g. ``rank_L3_query``."""
    ranks = singular_value_ranks(model.named_parameters())
    return {rank_metric(layer, module): float(r) for (layer, module), r in ranks.items()}


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """AdaLoRA's ``mean ||P P^T - I||_F`` over its A and B factors (peft adds it only to a loss
    returned by the wrapped model; ours is computed outside, so the loop adds this term)."""
    terms = []
    for name, param in model.named_parameters():
        if not param.requires_grad or not ("lora_A" in name or "lora_B" in name):
            continue
        cov = param @ param.T if "lora_A" in name else param.T @ param
        terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device)))
    return torch.stack(terms).mean()


register_method(
    "lora",
    paper="https://arxiv.org/abs/2106.09685",
    library="peft",
    builder=build_lora,
    summary="LoRA: trainable low-rank update B·A on chosen linears (per-layer ranks allowed)",
)
register_method(
    "adalora",
    paper="https://arxiv.org/abs/2303.10512",
    library="peft",
    builder=build_adalora,
    summary="AdaLoRA: SVD-form LoRA whose ranks are reallocated by importance during training",
)
