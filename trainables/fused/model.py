"""The fused model: K LoRA trials of one frozen backbone as one module (HFTA's horizontal fusion,
made exact by LoRA's frozen backbone; :mod:`trainables.fused` says why and what stays equal).
Plain LoRA only; the other fusable methods are rows of :class:`~trainables.fused.rows.FusedRows`.

Every trainable number of trial ``k`` lives in row ``k`` of one parameter ``theta [K, P]``; a
trial of a smaller rank than another at one linear is zero-padded there (the padded rows and
columns get zero gradients and stay zero). :func:`check_members` says what may fuse.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from search_spaces.catalog import FUSABLE_METHODS
from search_spaces.errors import ConfigError
from trainables.model import PeftClassifier, encoder_mask, masked_mean
from trainables.training import packed


class _FusedLoRALinear(nn.Module):
    """A frozen linear plus K LoRA updates, one per trial, on the K trials' rows (trial-major)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        # this forward's factors, set by FusedLoRA.forward from its theta: A [K, in, r] and
        # B [K, r, out], B already scaled by each trial's alpha / rank
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factors is None:
            raise RuntimeError("a fused LoRA linear runs inside FusedLoRA.forward only")
        a, b = self.factors
        k = len(a)
        out = self.base(x)
        rows = x.reshape(k, -1, x.shape[-1])  # [K, B*T, in]
        return torch.baddbmm(out.view(k, -1, out.shape[-1]), torch.bmm(rows, a), b).view_as(out)


@dataclass(frozen=True)
class Slot:
    """Where one tensor of a trial lives in a row of ``theta``, and its shape there."""

    size: int
    shape: tuple[int, ...]
    decay: bool  # AdamW weight decay applies (the loop decays 2-d tensors, not biases)
    head: bool = False  # the classifier head's: learns at TrainConfig.head_lr


def slot_mask(slots: Sequence[Slot], field: str, device: torch.device) -> torch.Tensor:
    """``[P]``: 1 over the slots whose ``field`` ("decay", "head") is set, 0 elsewhere."""
    return torch.cat([torch.full((s.size,), float(getattr(s, field)), device=device)
                      for s in slots])  # fmt: skip


class FusedLoRA(nn.Module):
    """K LoRA trials (``members``, built by ``build_model``) as one model over one frozen backbone.

    ``forward(input_ids [K*B, T], ...)`` -> logits ``[K, B, num_labels]``: rows ``k*B..(k+1)*B``
    are trial ``k``'s. Every trainable number of trial ``k`` is in row ``k`` of the one parameter
    ``theta [K, P]``; :meth:`write_back` copies the trained rows into the members, whose own
    evaluation, merging and saving then work as for a trial trained alone.
    """

    decay_mask: torch.Tensor
    head_mask: torch.Tensor
    scale: torch.Tensor

    def __init__(self, members: Sequence[PeftClassifier]) -> None:
        super().__init__()
        check_members(members)
        self.members = list(members)  # a plain list: not registered as submodules
        self.trials = k = len(members)
        first = members[0]
        self.num_labels = first.config.num_labels
        self.bert = copy.deepcopy(_bert_of(first))
        self.dropout = copy.deepcopy(first.dropout)  # the head's, as the members have it
        names = _lora_names(first)
        slots: list[Slot] = []
        self._lora: list[_FusedLoRALinear] = []
        for name in names:
            layers = [_bert_of(m).get_submodule(name) for m in members]
            base = self.bert.get_submodule(name).base_layer
            rank = max(_rank(layer) for layer in layers)
            fused = _FusedLoRALinear(base)
            parent, _, child = name.rpartition(".")
            setattr(self.bert.get_submodule(parent), child, fused)
            self._lora.append(fused)
            slots += [Slot(base.in_features * rank, (base.in_features, rank), True),
                      Slot(rank * base.out_features, (rank, base.out_features), True)]  # fmt: skip
        hidden = first.shape.hidden
        slots += [Slot(hidden * self.num_labels, (hidden, self.num_labels), True, head=True),
                  Slot(self.num_labels, (1, self.num_labels), False, head=True)]  # fmt: skip
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self._slots = slots
        device = next(self.bert.parameters()).device
        self.theta = nn.Parameter(torch.zeros(k, sum(s.size for s in slots), device=device))
        self.register_buffer("decay_mask", slot_mask(slots, "decay", device))
        self.register_buffer("head_mask", slot_mask(slots, "head", device))
        self._names = names
        # [K, the LoRA part of P]: each trial's alpha / rank over its B factors, 1 over its A's
        self.register_buffer("scale", torch.stack([self._scale_row(m) for m in members]).to(device))
        with torch.no_grad():
            for part, value in self._pairs():
                part.copy_(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        slots: int | None = None,
        rows: list[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[K, B, num_labels]``; with ``slots``, of a packed batch (:mod:`.packed`,
        ``attention_mask`` its segments): ``B = slots``, in its labels' order. ``rows``: of
        those trials only (``K = len(rows)``; the batch holds theirs alone)."""
        theta = self.theta if rows is None else self.theta[rows]
        scale = self.scale if rows is None else self.scale[rows]
        k = len(theta)
        lora = theta[:, : scale.shape[1]] * scale  # one kernel, not one a linear
        if not torch.is_autocast_enabled(input_ids.device.type):
            lora = lora.to(self.backbone_dtype)  # a bf16 backbone runs without autocast
        sizes = [s.size for s in self._slots]
        chunks = [*lora.split(sizes[:-2], dim=1),
                  *theta[:, lora.shape[1]:].split(sizes[-2:], dim=1)]  # fmt: skip
        views = [c.view(k, *s.shape) for c, s in zip(chunks, self._slots, strict=True)]
        for i, module in enumerate(self._lora):
            module.factors = (views[2 * i], views[2 * i + 1])
        try:
            if slots is None:
                out = self.bert(input_ids=input_ids, attention_mask=encoder_mask(attention_mask),
                                token_type_ids=token_type_ids)  # fmt: skip
                pooled = masked_mean(out.last_hidden_state, attention_mask).float()
            else:
                out = self.bert(input_ids=input_ids,
                                attention_mask=packed.block_mask(attention_mask),
                                token_type_ids=token_type_ids,
                                position_ids=packed.positions(attention_mask))  # fmt: skip
                pooled = packed.segment_mean(out.last_hidden_state, attention_mask,
                                             trials=k, slots=slots)  # fmt: skip
        finally:  # held past the forward, the factors kept [K, P] and its autograd graph alive:
            for module in self._lora:  # under graph capture, one more copy per graph
                module.factors = None
        pooled = self.dropout(pooled).view(k, -1, pooled.shape[-1])
        return torch.baddbmm(views[-1], pooled, views[-2])

    def backbone_to(self, dtype: torch.dtype) -> None:
        """Store the whole frozen backbone in ``dtype`` (embeddings and layer norms too), to run
        it without autocast: activations in ``dtype`` end to end."""
        self.bert.to(dtype)

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.bert.embeddings.word_embeddings.weight.dtype

    def autocast_precision(self, precision: str) -> str:
        """``precision`` for the autocast around this model: none ("fp32") once its backbone is
        bf16, which then runs in bf16 end to end."""
        return precision if self.backbone_dtype == torch.float32 else "fp32"

    @classmethod
    def over(cls, template: PeftClassifier, members: Sequence[PeftClassifier]) -> FusedLoRA:
        """``members`` on other linears (placements, layers) as rows of ``template``'s, whose
        LoRA covers them all at their largest rank (``group_template``): each row holds its
        member, zero at the linears it lacks (zero factors get zero gradients and stay zero), as
        a fused pool's rows do; :meth:`write_back` writes into ``members``."""
        fused = cls([template] * len(members))
        for row, member in enumerate(members):
            check_members([template, member], subset=True)
            fused.load_row(row, member)
        fused.members = list(members)
        return fused

    def write_back(self) -> None:
        """Copy each trial's trained row into its member (LoRA factors and head)."""
        with torch.no_grad():
            for part, value in self._pairs():
                value.copy_(part)

    def load_row(self, row: int, member: PeftClassifier) -> None:
        """Make row ``row`` another trial's: ``member``'s LoRA factors, head and LoRA scales
        (its slots zero where its rank is smaller, and at every linear it has no LoRA on: both
        factors zero get zero gradients and stay zero). ``member`` must fit
        (``check_members(..., subset=True)``), of a rank no larger than the rows'."""
        with torch.no_grad():
            self.theta[row].zero_()
            for part, value in self._pairs(row, member):
                part.copy_(value)
            self.scale[row] = self._scale_row(member)

    def store_row(self, row: int, member: PeftClassifier) -> None:
        """Copy row ``row``'s trained weights into ``member`` (the trial that row holds)."""
        with torch.no_grad():
            for part, value in self._pairs(row, member):
                value.copy_(part)

    def _scale_row(self, member: PeftClassifier) -> torch.Tensor:
        """``member``'s row of :attr:`scale`: 1 over each A slot, its alpha / rank over each B."""
        parts = []
        present = set(_lora_names(member))
        for i, name in enumerate(self._names):
            a, b = self._slots[2 * i], self._slots[2 * i + 1]
            layer = _bert_of(member).get_submodule(name) if name in present else None
            scaling = 0.0 if layer is None else float(layer.scaling["default"])
            parts += [torch.ones(a.size), torch.full((b.size,), scaling)]
        return torch.cat(parts)

    def _pairs(
        self, row: int | None = None, member: PeftClassifier | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(part of ``theta``, the member's tensor it holds) for every tensor of every trial
        (or of ``member`` at ``row``), both views: a smaller rank fills the corner of its
        zero-padded slot."""
        pairs = enumerate(self.members) if member is None else [(row, member)]
        for r, m in pairs:
            present = set(_lora_names(m))
            names = [n for n in self._names if n in present]
            views = self._views(cast(int, r))
            # the views of its linears (two each, in module order), then the head's two
            mine = [v for i, n in enumerate(self._names) if n in present
                    for v in views[2 * i : 2 * i + 2]] + views[-2:]  # fmt: skip
            for view, value in zip(mine, _member_tensors(m, names), strict=True):
                yield view[tuple(slice(0, n) for n in value.shape)], value

    def _views(self, row: int) -> list[torch.Tensor]:
        """Row ``row`` of ``theta`` cut into its slots, each in the slot's shape (views)."""
        chunks = self.theta.detach()[row].split([s.size for s in self._slots])
        return [c.view(s.shape) for c, s in zip(chunks, self._slots, strict=True)]


def fuse_lora(
    members: Sequence[PeftClassifier], template: Callable[[], PeftClassifier]
) -> FusedLoRA:
    """``members`` as one :class:`FusedLoRA`: directly when LoRA sits on the same linears in
    each, else as rows of ``template()``, built with LoRA on the union of their linears at their
    largest rank (``search_spaces.row_groups.group_template``; :meth:`FusedLoRA.over`)."""
    if len({tuple(_lora_names(m)) for m in members}) == 1:
        return FusedLoRA(members)
    return FusedLoRA.over(template(), members)


def check_members(members: Sequence[PeftClassifier], *, subset: bool = False) -> None:
    """Refuse members that cannot fuse with the first, naming why; ``subset``: a member may
    have LoRA on fewer linears than the first (a fused pool's rows cover a union)."""
    if not members:
        raise ConfigError("fusing needs at least one trial")
    first = members[0]
    names = _lora_names(first)
    for k, member in enumerate(members):
        config = member.config
        if config.method != "lora" or config.head != "mean":
            raise ConfigError(
                f"trial {k}: method={config.method!r} head={config.head!r} cannot be fused as "
                f"LoRA rows; fusable: method='lora' with head='mean' here, the other methods of "
                f"{list(FUSABLE_METHODS)} as FusedRows"
            )
        if config.num_labels != first.config.num_labels or member.shape != first.shape:
            raise ConfigError(f"trial {k}: another task or backbone than trial 0's")
        linears = _lora_names(member)
        if (not set(linears) <= set(names)) if subset else linears != names:
            raise ConfigError(
                f"trial {k}: LoRA on other linears than trial 0's (placement, layers)"
            )
        extra = [n for n, p in member.named_parameters()
                 if p.requires_grad and "lora_" not in n and not n.startswith("classifier.")]  # fmt: skip
        if extra:
            raise ConfigError(f"trial {k}: trains {extra[0]}, which fusing does not carry")
        ours, theirs = (_bert_of(m).embeddings.word_embeddings.weight
                        for m in (first, member))  # fmt: skip
        if not torch.equal(ours, theirs):
            raise ConfigError(f"trial {k}: its backbone weights differ from trial 0's")


def _lora_names(member: PeftClassifier) -> list[str]:
    """Module names (in the BertModel) of the linears LoRA adapts, in module order."""
    return [n for n, m in _bert_of(member).named_modules() if isinstance(m, LoraLayer)]


def _bert_of(member: PeftClassifier) -> Any:
    """The member's BertModel, its LoRA layers in place (peft's base model)."""
    return cast(Any, member.encoder).get_base_model()


def _rank(layer: Any) -> int:
    return int(layer.lora_A["default"].weight.shape[0])


def _member_tensors(member: PeftClassifier, names: list[str]) -> list[torch.Tensor]:
    """The member's trainable tensors in slot layout (views that share its storage): per LoRA
    linear A^T [in, r] and B^T [r, out], then the head's W^T [hidden, C] and bias [1, C]."""
    bert = _bert_of(member)
    out: list[torch.Tensor] = []
    for name in names:
        layer = bert.get_submodule(name)
        out += [
            layer.lora_A["default"].weight.detach().T,
            layer.lora_B["default"].weight.detach().T,
        ]
    head = member.classifier
    return [*out, head.weight.detach().T, head.bias.detach()[None, :]]


__all__ = ["FUSABLE_METHODS", "FusedLoRA", "Slot", "check_members"]
