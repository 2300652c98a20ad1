"""LoRA and AdaLoRA through peft.

peft rather than adapters for plain LoRA: peft adapts any linear by name (adapters' LoRA cannot
reach ``attention.output``, needed by placements ``attn_all`` and ``all``), takes per-layer ranks as
data (``rank_pattern``) and merges exactly. The LoRA of the composed methods (unipelt,
lora_fusion) lives in adapters, where the composition happens.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn

from search_spaces.accounting import method_layers
from search_spaces.method_config import PLACEMENTS, MethodConfig
from trainables.methods.adalora_step import RankStep
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
# AdaLoRA's schedule in the proportions of the authors' GLUE scripts (Zhang et al., ICLR 2023,
# github.com/QingruZhang/AdaLoRA, NLU/scripts: init_warmup ~10-18 % of the steps, final_warmup
# ~45-50 %, mask_interval every ~1 % or less, reg_orth_coef 0.1-0.3), taken from the trial's
# own step count: warm up at the initial rank, prune towards the target, then fine-tune at the
# final ranks. (peft's defaults, tinit = tfinal = 0, give no warm-up and no final phase.)
ADALORA_TINIT_FRACTION = 0.15
ADALORA_TFINAL_FRACTION = 0.45  # the final fine-tuning phase, at the pruned ranks
ADALORA_DELTA_T_FRACTION = 0.01  # steps between two rank reallocations
ADALORA_ORTH_REG_WEIGHT = 0.1


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
    peft_config = AdaLoraConfig(
        init_r=config.init_rank,
        target_r=config.rank,
        lora_alpha=config.adalora_scale * config.init_rank,  # peft scales by alpha / init_r
        target_modules=target_modules(config.placement, layers),
        **adalora_schedule(context.total_steps),
        orth_reg_weight=ADALORA_ORTH_REG_WEIGHT,
        lora_dropout=0.0,
    )
    model = get_peft_model(bert, peft_config)
    # On a 4-bit base (quantize=nf4) peft 0.21 casts each adapter tensor to the base's compute
    # dtype and back, and re-registers ``ranknum`` (the rank the update is divided by) as a new,
    # trainable Parameter: the optimiser would move AdaLoRA's scale. Frozen, as on a fp32 base.
    for name, param in model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return model, MethodHooks(
        merge=model.merge_adapter,
        step=RankStep(model.base_model),  # peft's update_and_allocate, as foreach kernels
        step_between_graphs=True,  # reads p.grad, masks lora_E in place: after each replay
        regularization=lambda: ADALORA_ORTH_REG_WEIGHT * orthogonality_penalty(model),
        metrics=lambda: adalora_rank_metrics(model),
        state=lambda: adalora_state(model),
        load_state=lambda state: load_adalora_state(model, state),
    )


ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft's RankAllocator: per-tensor EMAs


def adalora_state(model: nn.Module) -> dict[str, Any]:
    """The rank pattern peft fixes when pruning ends (the final phase masks with it every step:
    a trial resumed there without it fails) and the importance averages pruning ranks by."""
    allocator = model.base_model.rankallocator
    state = {name: {k: v.detach().cpu() for k, v in getattr(allocator, name).items()}
             for name in ALLOCATOR_STATE}  # fmt: skip
    return {"rank_pattern": model.peft_config["default"].rank_pattern, **state}


def load_adalora_state(model: nn.Module, state: dict[str, Any]) -> None:
    device = next(model.parameters()).device
    model.peft_config["default"].rank_pattern = state["rank_pattern"]
    allocator = model.base_model.rankallocator
    for name in ALLOCATOR_STATE:
        setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """peft's ``total_step``, ``tinit``, ``tfinal`` and ``deltaT`` for a run of ``total_steps``."""
    return {"total_step": total_steps, "tinit": int(total_steps * ADALORA_TINIT_FRACTION),
            "tfinal": int(total_steps * ADALORA_TFINAL_FRACTION),
            "deltaT": max(1, int(total_steps * ADALORA_DELTA_T_FRACTION))}  # fmt: skip


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
