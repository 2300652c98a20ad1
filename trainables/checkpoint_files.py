"""The files of a trial's checkpoint folder, one name each: for the code that writes them
(:mod:`trainables.recipe`, the pool's relay :mod:`trainables.relay`) and the code that reads them
(``tuner.train --trial``, ``--resume``'s recipe check, :mod:`analysis.artifacts`). Imports nothing:
a reader need not load torch to find a file."""

WEIGHTS = "method.safetensors"  # the method's trained tensors
LOOP_STATE = "loop_state.pt"  # the loop's state: recipe, progress, optimizer, scheduler, RNGs
METHOD_STATE = "method_state.pt"  # what a method keeps beside its weights (AdaLoRA's rank pattern)
