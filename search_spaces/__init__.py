"""Pure arithmetic of the search: backbone shapes, method configs, parameter accounting, budget split.

Nothing here imports torch: everything is computed from layer shapes.
"""

from search_spaces.errors import ConfigError
from search_spaces.method_config import METHODS, PLACEMENTS, MethodConfig
from search_spaces.shapes import BERT_BASE, MINILM_L6, TINY_BERT, BackboneShape

__all__ = [
    "BERT_BASE", "MINILM_L6", "METHODS", "PLACEMENTS", "TINY_BERT",
    "BackboneShape", "ConfigError", "MethodConfig",
]  # fmt: skip
