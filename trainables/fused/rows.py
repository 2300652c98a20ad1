"""K trials of any row method (:data:`search_spaces.row_groups.ROW_METHODS`) as one model: one
frozen backbone and frozen source adapters, each trial's trainable tensors a row of ``theta``.

The forward runs the template trial's own module once per row under ``torch.func.vmap`` over
``torch.func.functional_call``: each row's trainable tensors are views of its row of ``theta``
(times its row of :attr:`scale`), every frozen tensor is the template's, shared, unbatched. A
trial smaller than the template (a lower LoRA rank, a narrower adapter) fills the corner of each
slot; its :attr:`scale` is zero over the rest, so the padded entries are zero in the forward, get
zero gradient and stay zero (which knobs pad exactly: :mod:`search_spaces.row_groups`). LoRA's
``alpha / rank`` is a row's scale over its B factors (the template's own scale set to 1), as in
:class:`~trainables.fused.model.FusedLoRA`. A dynamic fusion template's value matrix that a row
lacks (a static trial's, or one outside the trial's fusion layers) is the identity, fixed: the
row's :attr:`shift`, added where its scale is zero.

Differences from :class:`~trainables.fused.model.FusedLoRA`: no packed batches (``slots``). As
there, :meth:`FusedRows.backbone_to` stores the frozen backbone and source adapters in bf16 on a
GPU, to run without autocast: each row's weights are cast from its fp32 row of ``theta`` (AdamW's
master copy) every forward, the head's excepted, which runs in fp32 as a trial's under autocast.
Steps replay from CUDA graphs where the training core can capture them (a capture that fails
turns graphs off for the run, with the reason in the trial's ``graphs_off``). Attention runs as
transformers' eager attention (matmuls and a softmax, which vmap batches over the rows): PyTorch
has no vmap batching rule for ``scaled_dot_product_attention``, whose fallback runs the rows one
by one, and on CUDA its memory-efficient kernel's backward fails under vmap (H200, 2026-12-04:
"LSE is not correctly aligned"). A trial alone keeps SDPA: the same function, up to float
rounding. Linears whose weights are rows flatten their input to 2-d (:class:`_RowLinear`): vmap
broadcasts a batched weight over the leading dims of a wider input, a weight per token for
AdapterFusion's key and value.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from adapters.models.bert.modeling_bert import (
    BertSdpaSelfAttentionWithAdapters,
    BertSelfAttentionWithAdapters,
)
from torch import nn
from torch.func import functional_call, vmap
from transformers.models.bert import modeling_bert

from search_spaces.errors import ConfigError
from search_spaces.row_groups import pads, row_signature
from trainables.fused.model import Slot, slot_mask
from trainables.fused.rows_fusion import fusion_name, mask_fusion, presence, rename
from trainables.model import PeftClassifier

REGULARIZATION = 0.01  # dynamic fusion's identity pull (trainables.methods.fusion.identity_pull)
HEAD = "classifier"  # PeftClassifier's head: fp32 under a bf16 backbone, as under autocast


class FusedRows(nn.Module):
    """K trials (``members``, built by ``build_model``) as rows of one model built from
    ``template`` (default: the first member), whose trainable tensors are at least as large as
    every member's. Interface of :class:`~trainables.fused.model.FusedLoRA`."""

    decay_mask: torch.Tensor
    head_mask: torch.Tensor
    scale: torch.Tensor
    present: torch.Tensor
    shift: torch.Tensor | None
    packs = False  # takes padded batches only (no ``slots``)
    # no per-step hooks (check_rows refuses members with them): the step may replay from graphs
    graph_safe = True

    def __init__(
        self, members: Sequence[PeftClassifier], *, template: PeftClassifier | None = None
    ) -> None:
        super().__init__()
        template = members[0] if template is None else template
        check_rows(template, members)
        self.members = list(members)  # a plain list: not registered as submodules
        self.trials = k = len(members)
        self.net = copy.deepcopy(template)
        trained = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in trained]
        self._slots = [Slot(p.numel(), tuple(p.shape), p.ndim >= 2, head=n.startswith(f"{HEAD}."))
                       for n, p in trained]  # fmt: skip
        _unit_lora_scales(self.net)
        _eager_attention(self.net)
        _flat_row_linears(self.net)
        self._fusion = fusion_name(self.net)
        self._masks = mask_fusion(self.net, self._fusion)  # a row fuses its own sources only
        for p in self.net.parameters():
            p.requires_grad_(False)
        device = trained[0][1].device
        self.theta = nn.Parameter(torch.zeros(k, sum(s.size for s in self._slots), device=device))
        self.register_buffer("decay_mask", slot_mask(self._slots, "decay", device))
        self.register_buffer("head_mask", slot_mask(self._slots, "head", device))
        self.register_buffer("scale", torch.zeros_like(self.theta))
        adapters = len(presence(self._fusion, self._fusion))
        self.register_buffer("present", torch.zeros(k, adapters, device=device))
        self._pulled = _pulled_slots(template, self._names)
        # dynamic fusion's value matrices a row lacks (a static trial's; a layer outside its
        # fusion_layers): the identity, fixed, where its scale is zero (search_spaces.row_groups)
        shift = torch.zeros_like(self.theta) if self._pulled else None
        self.register_buffer("shift", shift)
        self._dtype = torch.float32  # the shared copy's, until backbone_to
        with torch.no_grad():
            for row, member in enumerate(members):
                self.load_row(row, member)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        slots: int | None = None,
        rows: list[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[K, B, num_labels]`` of a padded batch whose rows ``k*B..(k+1)*B`` are trial
        ``k``'s; ``rows``: of those trials only (``K = len(rows)``)."""
        if slots is not None:
            raise ConfigError("FusedRows takes padded batches, not packed ones (slots=None)")
        weights = self._weights(rows)
        k = len(weights)
        sizes = [s.size for s in self._slots]
        chunks = weights.split(sizes, dim=1)
        low = None if torch.is_autocast_enabled(input_ids.device.type) else self.backbone_dtype
        if low is not None and low != weights.dtype:  # one cast for all rows; heads stay fp32
            cast = weights.to(low).split(sizes, dim=1)
            chunks = tuple(c if n.startswith(HEAD) else b
                           for n, c, b in zip(self._names, chunks, cast, strict=True))  # fmt: skip
        stacked = {n: c.view(k, *s.shape) for n, c, s in zip(self._names, chunks, self._slots,
                                                              strict=True)}  # fmt: skip
        present = self.present if rows is None else self.present[rows]
        stacked.update({name: present for name in self._masks})

        def one(params: dict[str, torch.Tensor], *inputs: Any) -> torch.Tensor:
            # tie_weights=False: the names are named_parameters()' own, and a module reachable by
            # several paths (adapters' prefix pool) holds each tensor in one slot, swapped once;
            # torch's tying swaps that slot once a path and restores it to the row's tensor
            return functional_call(self.net, params, inputs, strict=False, tie_weights=False)

        inputs = [t.view(k, -1, t.shape[-1]) for t in (input_ids, attention_mask)]
        if token_type_ids is None:
            return vmap(one, in_dims=(0, 0, 0), randomness="different")(stacked, *inputs)
        types = token_type_ids.view(k, -1, token_type_ids.shape[-1])
        return vmap(one, randomness="different")(stacked, *inputs, types)

    def row_regularization(
        self, rows: list[int] | torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Each row's (or each of ``rows``') extra loss ``[K]`` (dynamic fusion's pull of its value
        matrices towards the identity, as the trial alone adds it), or None when it has none."""
        if not self._pulled:
            return None
        weights = self._weights(rows)
        offsets = torch.tensor([0, *(s.size for s in self._slots)]).cumsum(0).tolist()
        total = torch.zeros(len(weights), device=weights.device)
        for i in self._pulled:
            shape = self._slots[i].shape
            value = weights[:, offsets[i] : offsets[i + 1]].view(-1, *shape)
            eye = torch.eye(shape[0], device=value.device, dtype=value.dtype)
            total = total + REGULARIZATION * (eye - value).pow(2).sum(dim=(1, 2))
        return total

    def backbone_to(self, dtype: torch.dtype) -> None:
        """Store every frozen tensor of the shared copy (backbone, source adapters, frozen
        fusion parts) in ``dtype``, to run without autocast; the rows stay fp32 in ``theta``."""
        self.net.to(dtype)
        self.net.get_submodule(HEAD).float()  # the head's frozen slot values are never read
        self._dtype = dtype

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self._dtype

    def autocast_precision(self, precision: str) -> str:
        """``precision`` for the autocast around this model: none ("fp32") once its backbone is
        bf16, which then runs in bf16 end to end but for the heads."""
        return precision if self.backbone_dtype == torch.float32 else "fp32"

    def write_back(self) -> None:
        """Copy each trial's trained row into its member."""
        for row, member in enumerate(self.members):
            self.store_row(row, member)

    def load_row(self, row: int, member: PeftClassifier) -> None:
        """Make row ``row`` ``member``'s: its trainable tensors, its LoRA scales, its mask."""
        check_rows(self.net, [member], copied=True)
        with torch.no_grad():
            self.theta[row].zero_()
            self.scale[row].zero_()
            self.present[row] = presence(self._fusion, fusion_name(member))
            scales = self.scale.detach()[row].split([s.size for s in self._slots])
            own = set()
            for (part, value), (i, _) in zip(self._pairs(row, member), _indexed(self, member),
                                             strict=True):  # fmt: skip
                part.copy_(value)
                corner = scales[i].view(self._slots[i].shape)[_corner(value)]
                corner.fill_(_lora_scale(member, self._names[i]))
                own.add(i)
            if self.shift is not None:
                self.shift[row].zero_()
                shifts = self.shift[row].split([s.size for s in self._slots])
                for i in set(self._pulled) - own:
                    shifts[i].view(self._slots[i].shape).copy_(torch.eye(self._slots[i].shape[0]))

    def store_row(self, row: int, member: PeftClassifier) -> None:
        """Copy row ``row``'s trained weights into ``member`` (the trial that row holds)."""
        with torch.no_grad():
            for part, value in self._pairs(row, member):
                value.copy_(part)

    def _weights(self, rows: list[int] | torch.Tensor | None) -> torch.Tensor:
        theta = self.theta if rows is None else self.theta[rows]
        scale = self.scale if rows is None else self.scale[rows]
        if self.shift is None:
            return theta * scale
        # one fused kernel, the same values: where shift is non-zero scale is zero, elsewhere the
        # shift adds an exact zero
        return torch.addcmul(self.shift if rows is None else self.shift[rows], theta, scale)

    def _pairs(self, row: int, member: PeftClassifier) -> Iterator[tuple[torch.Tensor, Any]]:
        """(corner of the slot in row ``row``, the member's tensor) for each trainable tensor."""
        chunks = self.theta.detach()[row].split([s.size for s in self._slots])
        for i, value in _indexed(self, member):
            yield chunks[i].view(self._slots[i].shape)[_corner(value)], value


def check_rows(template: nn.Module, members: Sequence[nn.Module], *, copied: bool = False) -> None:
    """Refuse members that cannot be rows of a model built from ``template``, naming why:
    another row signature (:func:`search_spaces.row_groups.row_signature`), per-step hooks, a
    trainable tensor the template lacks or holds smaller, other frozen weights. ``copied``: the
    template is the fused model's own copy (its LoRA scales already set to 1)."""
    if not members:
        raise ConfigError("fusing needs at least one trial")
    ours, fusion = row_signature(_config(template)), fusion_name(template)
    frozen = {n: p for n, p in template.named_parameters() if not p.requires_grad or copied}
    slots = {n: p.shape for n, p in template.named_parameters() if p.requires_grad or copied}
    for k, member in enumerate(members):
        config = _config(member)
        if config.head != "mean" or config.quantize != "none":
            raise ConfigError(f"trial {k}: head={config.head!r} quantize={config.quantize!r} "
                              "cannot be fused; fusable: head='mean', quantize='none'")  # fmt: skip
        if pads(config, "fusion") and config.fusion == "dynamic" != _config(template).fusion:
            raise ConfigError(f"trial {k}: dynamic fusion does not fit a template of static "
                              "fusion (a group holding both is built dynamic: "
                              "search_spaces.row_groups.group_template)")  # fmt: skip
        if row_signature(config) != ours:
            raise ConfigError(f"trial {k}: method={config.method!r} differs from the template's "
                              "beyond the sizes that pad (search_spaces.row_groups)")  # fmt: skip
        hooks = member._hooks  # noqa: SLF001 - the fused model runs the member's forward
        # host_tensors (prefix tuning) is no obstacle: the member's forward makes them on the
        # inputs' device (a step that still waits for the host turns graphs off, not the run)
        if hooks.step or hooks.plateau:
            raise ConfigError(f"trial {k}: its method runs per-step hooks, which rows do not")
        theirs = fusion_name(member)
        for name, p in member.named_parameters():
            name = rename(name, theirs, fusion)
            if p.requires_grad:
                _check_slot(k, name, p.shape, slots)
            elif name not in frozen or not _same(frozen[name], p):
                raise ConfigError(f"trial {k}: its frozen {name} differs from the template's "
                                  "(another backbone, or other source adapters)")  # fmt: skip


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """The same frozen tensor, in the shared copy's dtype (bf16 once :meth:`FusedRows.backbone_to`
    ran: a pool's later trials arrive fp32)."""
    return torch.equal(ours.detach().cpu(), theirs.detach().to(ours.dtype).cpu())


def _check_slot(k: int, name: str, shape: torch.Size, slots: dict[str, torch.Size]) -> None:
    if name not in slots:
        raise ConfigError(f"trial {k}: trains {name}, which the template lacks")
    if len(shape) != len(slots[name]) or any(
        a > b for a, b in zip(shape, slots[name], strict=True)
    ):
        raise ConfigError(f"trial {k}: {name} of shape {tuple(shape)} does not fit the "
                          f"template's {tuple(slots[name])}")  # fmt: skip


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "method"):
        raise ConfigError(f"{type(model).__name__} is not a method's model (build_model)")
    return config


def _indexed(fused: FusedRows, member: nn.Module) -> Iterator[tuple[int, torch.Tensor]]:
    """(slot index, the member's trainable tensor) in the member's order."""
    index = {n: i for i, n in enumerate(fused._names)}  # noqa: SLF001
    theirs = fusion_name(member)
    for name, p in member.named_parameters():
        if p.requires_grad:
            yield index[rename(name, theirs, fused._fusion)], p.detach()  # noqa: SLF001


def _corner(value: torch.Tensor) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in value.shape)


def _lora_owner(model: nn.Module, name: str) -> tuple[Any, str | None] | None:
    """(the module holding the LoRA scale of B factor ``name``, peft's adapter key or None)."""
    if ".lora_B." in name:  # peft: <linear>.lora_B.<adapter>.weight, linear.scaling[adapter]
        owner, _, rest = name.partition(".lora_B.")
        return model.get_submodule(owner), rest.split(".")[0]
    if name.endswith(".lora_B"):  # adapters: <lora module>.lora_B, lora.scaling
        return model.get_submodule(name.rpartition(".")[0]), None
    return None


def _lora_scale(model: nn.Module, name: str) -> float:
    """The member's scale on tensor ``name``: its alpha / rank on a LoRA B factor, else 1."""
    found = _lora_owner(model, name)
    if found is None:
        return 1.0
    owner, key = found
    return float(owner.scaling if key is None else owner.scaling[key])


def _unit_lora_scales(model: nn.Module) -> None:
    """Set every LoRA scale of the fused model's copy to 1: the rows carry their own."""
    for name, p in model.named_parameters():
        found = _lora_owner(model, name) if p.requires_grad else None
        if found is None:
            continue
        owner, key = found
        if key is None:
            owner.scaling = 1.0
        else:
            owner.scaling[key] = 1.0


def _pulled_slots(template: nn.Module, names: list[str]) -> list[int]:
    """The slots that dynamic fusion pulls towards the identity: its fusion layers' values."""
    config = _config(template)
    if config.method not in ("fusion", "lora_fusion") or config.fusion != "dynamic":
        return []
    return [i for i, n in enumerate(names)
            if ".adapter_fusion_layer." in n and n.endswith(".value.weight")]  # fmt: skip


class _RowLinear(nn.Linear):
    """A linear whose weight is a row (trainable): its input flattened to 2-d around the call.
    Under vmap, a batched weight times an input of more than 3 dims broadcasts the weight over
    the input's leading dims, a [K, B, T, out, in] copy (AdapterFusion's key and value read
    [B, T, adapters, H]: 10 GiB at 16 rows of MiniLM, and each token's own weight gradient);
    on a 2-d input it is one batched matmul per row. The same function either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)


def _flat_row_linears(net: nn.Module) -> None:
    """Make ``net``'s linears whose weights are rows :class:`_RowLinear` (the weights stay)."""
    for module in net.modules():
        if type(module) is nn.Linear and module.weight.requires_grad:
            module.__class__ = _RowLinear


def _eager_attention(net: nn.Module) -> None:
    """Make ``net``'s SDPA self-attention modules (transformers 4's BERT, adapters' mixins) the
    eager classes they subclass, and its encoders build eager masks; the weights stay shared."""
    eager = {BertSdpaSelfAttentionWithAdapters: BertSelfAttentionWithAdapters}
    if sdpa := getattr(modeling_bert, "BertSdpaSelfAttention", None):  # transformers 4
        eager[sdpa] = modeling_bert.BertSelfAttention
    for module in net.modules():
        if type(module) in eager:
            module.__class__ = eager[type(module)]
        if getattr(module, "attn_implementation", None) == "sdpa":
            module.attn_implementation = "eager"


__all__ = ["FusedRows", "check_rows"]
