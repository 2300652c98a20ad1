"""PEFT methods: one registry (``METHOD_REGISTRY``), one entry point (``build_model``).

Importing this package registers every method; a method module registers itself with one
``register_method`` call. Tests iterate the registry, so a new method is tested for free.
"""

from search_spaces.method_config import METHODS
from trainables.methods import (  # noqa: F401  (registration)
    autopeft,
    bottleneck,
    finetune,
    fusion,
    grow,
    lora,
)
from trainables.methods.fusion import save_source_adapter, source_adapter_name
from trainables.methods.registry import (
    DEFAULT_TOTAL_STEPS,
    METHOD_REGISTRY,
    MethodSpec,
    build_model,
    register_method,
)

if set(METHOD_REGISTRY.names()) != set(METHODS):
    raise ImportError(
        f"methods without a builder: {sorted(set(METHODS) - set(METHOD_REGISTRY.names()))}"
    )

__all__ = [
    "DEFAULT_TOTAL_STEPS", "METHOD_REGISTRY", "MethodSpec", "build_model", "register_method",
    "save_source_adapter", "source_adapter_name",
]  # fmt: skip
