"""An encoder plus method modules that live beside it rather than inside it."""

from __future__ import annotations

from torch import nn


class ExtendedEncoder(nn.Module):
    """``bert`` called as it is, with ``extras`` registered as submodules, so the method's own
    parameters (lora_grow's growth state, fusion-aware LoRA slots) are counted, trained and saved
    with the model (``encoder.<name>.*``)."""

    def __init__(self, bert: nn.Module, **extras: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        for name, module in extras.items():
            self.add_module(name, module)

    def forward(self, **inputs: object) -> object:
        return self.bert(**inputs)


__all__ = ["ExtendedEncoder"]
