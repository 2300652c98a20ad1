"""The classifier every method builds: a (modified) BERT encoder plus a pooling head.

The training loop relies on ``forward``, ``parameters()``, ``train()``/``eval()``,
``save_method_weights``/``load_method_weights``, ``step_hook``, ``regularization_loss`` and
``plateau_hook``; the recipe may add ``method_metrics()`` to a trial's final metrics.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces.errors import ConfigError
from search_spaces.memory import MIB
from search_spaces.method_config import MethodConfig
from search_spaces.shapes import BackboneShape
from trainables.quantize import logical_numel, stored_bytes

CONFIG_KEY = "method_config"  # safetensors metadata key holding the MethodConfig as JSON
# transformers 4.x's BertModel expands a [B, 1, T] mask to the same additive mask as a [B, T] one,
# but first asks the GPU whether a [B, T] mask is all ones: a host sync every forward, which also
# makes a training step impossible to capture in a CUDA graph. transformers 5 takes [B, T] only
# (its steps then run eager: trainables/graphs.py falls back).
MASK_3D = int(transformers.__version__.split(".")[0]) < 5


def encoder_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The mask to hand a BertModel: ``[B, 1, T]`` under transformers 4 (see :data:`MASK_3D`)."""
    return attention_mask[:, None, :] if MASK_3D else attention_mask


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, T, d]`` over each row's real tokens -> ``[B, d]`` (the mean head)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass(frozen=True)
class MethodHooks:
    """Method-specific behaviour a builder hands to :class:`PeftClassifier` (all optional)."""

    merge: Callable[[], None] | None = None  # folds the method into the backbone weights
    step: Callable[[int], None] | None = None  # called after each optimiser step
    # the step hook only reads the step's gradients and edits parameters in place (AdaLoRA's
    # importance averages and masks): it may run after a step replayed from a CUDA graph, whose
    # gradients stay in place until the next step zeroes them
    step_between_graphs: bool = False
    regularization: Callable[[], torch.Tensor | None] | None = None  # extra loss term
    stored_adjustment: Callable[[], int] = lambda: 0  # served size minus built size (prefix)
    plateau: Callable[[float], bool] | None = None  # sees each dev loss; True: the model grew
    metrics: Callable[[], dict[str, float]] | None = None  # method-specific trial metrics
    # what the method keeps outside its parameters and a checkpoint must carry (AdaLoRA's rank
    # pattern and importance averages): read, and written back on resume
    state: Callable[[], dict[str, Any]] | None = None
    load_state: Callable[[dict[str, Any]], None] | None = None
    # the library makes tensors on the host in its forward and copies them over (adapters' prefix
    # tuning: position ids and the prefix mask, every step): a wait for the host that a CUDA graph
    # cannot hold. The forward then runs with the inputs' device as the default device.
    host_tensors: bool = False
    # sees each batch's [B, T] token mask before the encoder runs (UniPELT's gates average over a
    # row's real tokens: trainables/methods/gates.py)
    token_mask: Callable[[torch.Tensor], None] | None = None


class PeftClassifier(nn.Module):
    """``encoder`` (a ``BertModel``, possibly wrapped by peft) + head -> logits ``[B, num_labels]``.

    ``head="mean"``: masked mean of the last hidden states -> dropout -> ``Linear(d, num_labels)``.
    ``head="cls"``: BERT's pooler ([CLS] -> dense -> tanh, trainable) -> dropout -> the linear.
    ``num_labels=1`` is regression. ``backbone_ids`` are the ``id()`` of the backbone's own
    parameters (pooler excluded): everything else is what the method added.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        bert: nn.Module,
        config: MethodConfig,
        shape: BackboneShape,
        backbone_ids: frozenset[int],
        hooks: MethodHooks,
        library: str,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.shape = shape
        self.library = library
        self._bert = [bert]  # a list: not registered twice as a submodule
        self._backbone_ids = backbone_ids
        self._hooks = hooks
        self._merged = False
        device = next(bert.parameters()).device
        self.dropout = nn.Dropout(bert.config.hidden_dropout_prob)
        self.classifier = nn.Linear(shape.hidden, config.num_labels, device=device)
        if config.head == "cls":
            for param in bert.pooler.parameters():
                param.requires_grad = True

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, num_labels]`` for a padded batch (``attention_mask`` 1 on real tokens)."""
        if self._hooks.token_mask is not None:
            self._hooks.token_mask(attention_mask)
        on_device = self._hooks.host_tensors and input_ids.device.type != "cpu"
        with torch.device(input_ids.device) if on_device else contextlib.nullcontext():
            out = self.encoder(
                input_ids=input_ids,
                attention_mask=encoder_mask(attention_mask),
                token_type_ids=token_type_ids,
            )
        if self.config.head == "cls":
            pooled = out.pooler_output
        else:
            pooled = masked_mean(out.last_hidden_state, attention_mask)
        # the head's dtype: fp32 rows over a bf16 backbone (FusedRows) run their heads in fp32
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))

    # --- accounting ------------------------------------------------------------------------------

    # Counts are of elements as the model uses them: a 4-bit packed weight (quantize=nf4) counts
    # its original shape, never its bytes, so a quantised model counts as the unquantised one.

    def trainable_params(self) -> int:
        """What the optimiser updates: parameters with ``requires_grad``, head included."""
        return sum(logical_numel(p) for p in self.parameters() if p.requires_grad)

    def added_params(self) -> int:
        """Parameters beyond the backbone's, as served (prefix tuning: its flattened prefix)."""
        built = sum(logical_numel(p) for p in self.parameters() if id(p) not in self._backbone_ids)
        return built + self._hooks.stored_adjustment()

    def backbone_params(self) -> int:
        return sum(logical_numel(p) for p in self.parameters() if id(p) in self._backbone_ids)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the frozen base (the backbone's own parameters: 4-bit weights with their
        quantisation state) and by the method's weights (:meth:`method_state`), as measured on
        the model; ``search_spaces.memory`` predicts both from the shape."""
        params = list(self.parameters())
        base = [p for p in params if id(p) in self._backbone_ids]
        method = [p for p in params if p.requires_grad or id(p) not in self._backbone_ids]
        return {
            "base_bytes": sum(stored_bytes(p) for p in base),
            "adapter_bytes": sum(stored_bytes(p) for p in method),
        }

    def memory_metrics(self) -> dict[str, float]:
        """:meth:`memory_bytes` in MiB, as trial metrics: ``base_mib``, ``adapter_mib``."""
        return {k.replace("_bytes", "_mib"): v / MIB for k, v in self.memory_bytes().items()}

    def describe(self) -> str:
        """One line: method, knobs that matter, backbone shape and both parameter figures."""
        c, s = self.config, self.shape
        return (
            f"{c.method} ({self.library}) head={c.head} num_labels={c.num_labels} on "
            f"{s.num_layers}x{s.hidden}: trainable_params={self.trainable_params():,} "
            f"added_params={self.added_params():,} backbone_params={self.backbone_params():,}"
        )

    # --- method hooks ----------------------------------------------------------------------------

    @property
    def graph_safe(self) -> bool:
        """Whether a training step may be captured in a CUDA graph and replayed: not when the method
        runs Python between steps that changes what a step computes (lora_grow's rank growth);
        a step hook that only reads gradients and edits parameters in place runs after each
        replay (AdaLoRA's rank reallocation)."""
        hooks = self._hooks
        return hooks.plateau is None and (hooks.step is None or hooks.step_between_graphs)

    def step_hook(self, global_step: int) -> None:
        """Call after ``optimizer.step()`` and before ``zero_grad()`` (AdaLoRA reads the gradients
        to reallocate ranks); a no-op for the other methods."""
        if self._hooks.step is not None:
            self._hooks.step(global_step)

    def regularization_loss(self) -> torch.Tensor | None:
        """An extra loss term the loop adds to the task loss, or ``None``: AdaLoRA's orthogonality
        penalty, dynamic fusion's pull of its value matrix towards the identity."""
        if self._hooks.regularization is None:
            return None
        return self._hooks.regularization()

    def plateau_hook(self, dev_loss: float) -> bool:
        """Call after each dev evaluation with its mean loss. Returns True when the method changed
        the model in response (lora_grow raised its rank because the loss stopped improving): the
        loop should then rebuild its optimizer over the parameters with ``requires_grad``. False
        (and a no-op) for the other methods."""
        if self._hooks.plateau is None:
            return False
        return bool(self._hooks.plateau(float(dev_loss)))

    def method_metrics(self) -> dict[str, float]:
        """Method-specific figures worth a trial metric, e.g. AdaLoRA's final rank per module
        (``rank_L3_query``), lora_grow's ``active_rank``, the fusion entropy of each layer; empty
        for methods without any."""
        if self._hooks.metrics is None:
            return {}
        return dict(self._hooks.metrics())

    @property
    def mergeable(self) -> bool:
        return self._hooks.merge is not None

    def merge(self) -> None:
        """Fold the method's low-rank updates into the backbone weights (inference only)."""
        if self._hooks.merge is None:
            raise ConfigError(
                f"method={self.config.method!r} cannot be merged; mergeable: lora, adalora"
            )
        if self._merged:
            return
        self._hooks.merge()
        self._merged = True

    def method_extra_state(self) -> dict[str, Any]:
        """What the method keeps beside its weights (empty for most methods); checkpointed."""
        return {} if self._hooks.state is None else self._hooks.state()

    def load_method_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`method_extra_state` (a checkpoint's), before training resumes."""
        if state and self._hooks.load_state is None:
            raise ConfigError(
                f"method={self.config.method!r} keeps no state to load: {sorted(state)}"
            )
        if self._hooks.load_state is not None:
            self._hooks.load_state(state)

    # --- method weights --------------------------------------------------------------------------

    def method_state(self) -> dict[str, torch.Tensor]:
        """Every parameter the backbone does not hold as loaded: trainable or added, head included."""
        return {
            name: p.detach()
            for name, p in self.named_parameters()
            if p.requires_grad or id(p) not in self._backbone_ids
        }

    def save_method_weights(self, path: str | Path) -> Path:
        """Write :meth:`method_state` and the config to one safetensors file; returns the path."""
        if self._merged:
            raise ConfigError("a merged model cannot save method weights: save before merge()")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous().cpu() for k, v in self.method_state().items()}
        save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(self.config.to_dict())})
        return path

    def load_method_weights(self, path: str | Path) -> None:
        """Load weights saved by :meth:`save_method_weights` from a model of the same config.

        Raises ``ConfigError`` if the file was saved for another config or lacks a tensor.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ConfigError(f"method weights {str(path)!r} must be a .safetensors file")
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if CONFIG_KEY not in metadata:
            raise ConfigError(
                f"{str(path)!r} has no {CONFIG_KEY}: not saved by save_method_weights"
            )
        saved = MethodConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
        if saved != self.config:
            diff = {k: v for k, v in saved.to_dict().items() if self.config.to_dict()[k] != v}
            raise ConfigError(f"method weights {str(path)!r} were saved for another config: {diff}")
        expected = set(self.method_state())
        mismatched = sorted(expected ^ set(tensors))
        if mismatched:
            raise ConfigError(
                f"method weights {str(path)!r} do not match this model: {len(mismatched)} tensors "
                f"differ, e.g. {mismatched[0]}"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name in expected:
                params[name].copy_(tensors[name])


__all__ = ["MethodHooks", "PeftClassifier", "encoder_mask", "masked_mean"]
