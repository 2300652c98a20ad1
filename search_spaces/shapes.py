"""The shape of a BERT-family backbone: all the parameter arithmetic needs, no weights, no torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError


@dataclass(frozen=True)
class BackboneShape:
    """Layer sizes of a BERT-style encoder (``config.json`` of a Hugging Face BERT checkpoint)."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    max_positions: int = 512
    type_vocab: int = 2

    def __post_init__(self) -> None:
        for field, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"BackboneShape.{field}={value!r} must be a positive integer")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden={self.hidden} is not divisible by heads={self.heads}")

    def check_max_length(self, max_length: int, backbone: str) -> None:
        """Refuse a ``max_length`` the backbone has no position embeddings for (it would fail
        inside a trial, at the first example that long)."""
        if max_length > self.max_positions:
            raise ConfigError(f"max_length={max_length} exceeds {backbone}'s {self.max_positions} "
                              f"positions: choose max_length <= {self.max_positions}")  # fmt: skip

    @classmethod
    def from_hf_config(cls, config: Any) -> BackboneShape:
        """From a ``transformers`` BERT config object or its ``config.json`` as a dict."""

        def get(key: str, default: int = 0) -> int:
            value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            return int(value) if value is not None else default

        return cls(
            num_layers=get("num_hidden_layers"),
            hidden=get("hidden_size"),
            intermediate=get("intermediate_size"),
            heads=get("num_attention_heads"),
            vocab=get("vocab_size"),
            max_positions=get("max_position_embeddings", 512),
            type_vocab=get("type_vocab_size", 2),
        )

    @classmethod
    def from_config_json(cls, path: str | Path) -> BackboneShape:
        return cls.from_hf_config(json.loads(Path(path).read_text()))

    @property
    def backbone_params(self) -> int:
        """Parameters of ``BertModel`` without its pooler (embeddings + encoder)."""
        d, i, n = self.hidden, self.intermediate, self.num_layers
        embeddings = (self.vocab + self.max_positions + self.type_vocab) * d + 2 * d
        attention = 4 * (d * d + d) + 2 * d
        ffn = d * i + i + i * d + d + 2 * d
        return embeddings + n * (attention + ffn)

    @property
    def pooler_params(self) -> int:
        return self.hidden * self.hidden + self.hidden


# Reference shapes used in tests and docs; real backbones read theirs from config.json.
MINILM_L6 = BackboneShape(num_layers=6, hidden=384, intermediate=1536, heads=12, vocab=30522)
BERT_BASE = BackboneShape(num_layers=12, hidden=768, intermediate=3072, heads=12, vocab=30522)
TINY_BERT = BackboneShape(
    num_layers=2, hidden=32, intermediate=64, heads=2, vocab=1000, max_positions=128
)
