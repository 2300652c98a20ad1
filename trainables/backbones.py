"""Backbones: a registry of named BERT encoders, plus any Hugging Face id or local folder.

``load_backbone(name)`` returns a fresh ``BertModel`` (SDPA attention, with its pooler: the
``head="cls"`` classifier uses it, ``head="mean"`` drops it), its tokenizer and its shape. Nothing
is downloaded unless the hub answers; with ``HF_HUB_OFFLINE=1`` a hub id fails with a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

from search_spaces.errors import ConfigError, did_you_mean
from search_spaces.shapes import BackboneShape
from trainables.backbone_registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    backbone_source,
    register_backbone,
)

ATTENTION = "sdpa"  # fused attention kernels in torch; same numbers as eager on CPU
TINY_SEED = 0  # the tiny random backbone is the same in every test and every process
SUPPORTED_MODEL_TYPES = ("bert",)  # the methods address BERT's module names


@dataclass
class Backbone:
    """A loaded encoder. ``model`` is owned by the caller: methods modify it in place."""

    model: BertModel
    tokenizer: Any
    shape: BackboneShape
    name: str
    pretrained: bool  # False for random weights (tiny-bert, bert-base) and for meta models


def bert_config(shape: BackboneShape) -> BertConfig:
    """A ``BertConfig`` with the layer sizes of ``shape``."""
    return BertConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        type_vocab_size=shape.type_vocab,
        attn_implementation=ATTENTION,
    )


@lru_cache(maxsize=8)
def _tokenizer(folder: str, *, local_only: bool = False) -> Any:
    # cached: a Ray worker loads one backbone per trial; tokenizers are not mutated by methods
    return AutoTokenizer.from_pretrained(folder, local_files_only=local_only)


def load_backbone(name: str = DEFAULT_BACKBONE, *, meta: bool = False) -> Backbone:
    """Load a registered backbone, a local folder or (if the hub answers) a hub id.

    ``meta=True`` builds the model on the meta device: shapes and parameter counts, no memory, no
    weights. Raises ``ConfigError`` for a name that is none of these or a model that is not a BERT.
    """
    if name in BACKBONES:
        return _load_spec(BACKBONES.get(name), meta=meta)
    return _load_folder_or_hub(name, meta=meta)


def _load_spec(spec: BackboneSpec, *, meta: bool) -> Backbone:
    if spec.folder is not None:
        return _load_pretrained(spec.folder(), name=spec.name, meta=meta)
    shape = spec.shape
    if shape is None:  # excluded by BackboneSpec.__post_init__; keeps type checkers honest
        raise ValueError(f"backbone {spec.name!r} has no shape")
    config = bert_config(shape)
    if meta:
        with torch.device("meta"):
            model = BertModel(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = BertModel(config)
    tokenizer_folder = spec.tokenizer() if spec.tokenizer is not None else None
    tokenizer = _tokenizer(str(tokenizer_folder)) if tokenizer_folder is not None else None
    return Backbone(model.eval(), tokenizer, shape, spec.name, pretrained=False)


def _load_folder_or_hub(name: str, *, meta: bool) -> Backbone:
    source = backbone_source(name)  # refuses a name that can come from nowhere, without retries
    if source == "folder":
        return _load_pretrained(Path(name).expanduser().resolve(), name=name, meta=meta)
    try:
        return _load_pretrained(name, name=name, meta=meta, local_only=source == "hub-cache")
    except OSError as error:  # unknown repo, missing files
        reason = " ".join(str(error).split())[:200]
        names = BACKBONES.names()
        raise ConfigError(
            f"backbone={name!r} is not registered ({', '.join(names)}), not a folder, "
            f"and the hub failed: {reason}{did_you_mean(name, names)}"
        ) from None


def _load_pretrained(
    source: Path | str, *, name: str, meta: bool, local_only: bool = False
) -> Backbone:
    """``local_only``: from the hub's local cache, without asking the hub (it is out of reach)."""
    config = AutoConfig.from_pretrained(
        str(source), trust_remote_code=False, local_files_only=local_only
    )
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"backbone={name!r} has model_type={config.model_type!r}; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if meta:
        with torch.device("meta"):
            model = AutoModel.from_config(config, attn_implementation=ATTENTION)
    else:
        model = AutoModel.from_pretrained(
            str(source), attn_implementation=ATTENTION, trust_remote_code=False,
            local_files_only=local_only,
        )  # fmt: skip
    if not isinstance(model, BertModel):
        raise ConfigError(f"backbone={name!r} loads as {type(model).__name__}, not BertModel")
    shape = BackboneShape.from_hf_config(config)
    tokenizer = _tokenizer(str(source), local_only=local_only)
    return Backbone(model.eval(), tokenizer, shape, name, pretrained=not meta)


def backbone_param_count(model: torch.nn.Module) -> int:
    """Parameters of a plain ``BertModel`` without its pooler (``BackboneShape.backbone_params``)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pooler."))


__all__ = [
    "BACKBONES", "Backbone", "BackboneSpec", "DEFAULT_BACKBONE", "backbone_param_count",
    "bert_config", "load_backbone", "register_backbone",
]  # fmt: skip
