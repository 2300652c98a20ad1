"""The files of a trial's checkpoint folder, one name each: for the code that writes them
(:mod:`trainables.recipe`, the pool's relay :mod:`trainables.relay`) and the code that reads them
(``tuner.train --trial``, ``--resume``'s recipe check, :mod:`analysis.artifacts`). Imports nothing
at the top: a reader need not load torch to find a file."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

WEIGHTS = "method.safetensors"  # the method's trained tensors
LOOP_STATE = "loop_state.pt"  # the loop's state: recipe, progress, optimizer, scheduler, RNGs
METHOD_STATE = "method_state.pt"  # what a method keeps beside its weights (AdaLoRA's rank pattern)


def saved_recipe(state: Path | IO[bytes]) -> dict[str, Any] | None:
    """The recipe (``TrainConfig.to_dict()`` of its day) a :data:`LOOP_STATE` file was saved with,
    or ``None`` where it cannot be read (a write cut short). A local file is mapped, not read: the
    state holds the optimizer's moments too."""
    import pickle

    import torch

    try:
        loaded = torch.load(state, map_location="cpu", weights_only=True,
                            mmap=isinstance(state, Path))  # fmt: skip
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    return dict(loaded["config"])
