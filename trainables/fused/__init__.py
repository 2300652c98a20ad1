"""Fused trials: K trials of one backbone trained as one model, in one process.

Why: a graphed step of the embedded MiniLM at batch 32 costs ~2.5 ms of GPU time, most of it the
latency of ~700 kernels each too small to fill the GPU, so K trials run as K processes share the
GPU badly (8 under MPS: 3.15x one, docs/BENCHMARKS.md). Fused, the frozen backbone runs once
over the K trials' batches stacked (its matmuls K times taller, its kernel count unchanged);
only the LoRA factors and the heads belong to one trial, and they run as batched matmuls. This
is HFTA's horizontal fusion (Wang et al., MLSys 2021) made exact by LoRA's frozen backbone.

Each trial gets the gradients and the updates it would get alone:

* the loss is the sum of the trials' mean losses, and their parameters are disjoint;
* gradient clipping, AdamW (decoupled weight decay, bias correction), the learning rate and its
  schedule act per trial (:class:`~.optim.RowAdamW` updates one ``[K, P]`` parameter row by row);
* a trial with a smaller rank than another at one linear is zero-padded there: the padded rows
  and columns of its factors get zero gradients and stay zero;
* each trial keeps its own data order (its seed); a training step packs each trial's sentences
  into rows of 64 tokens, attention kept within each sentence (:mod:`trainables.training.packed`; under
  transformers 5, which takes no 3-d mask, it pads every row to the longest of the K batches
  instead): the same result up to float rounding. Where one trial's batch is its epoch's short
  last one, the slots it leaves carry an ignored label.

What differs from K separate runs: float rounding and dropout draws (one generator for all),
and on GPUs (bf16 precision) the activations' precision: the fused model stores its frozen
backbone in bf16 and runs it without autocast, so the residual stream, layer norms and
element-wise kernels run in bf16 where a trial alone keeps them in fp32 around bf16 matmuls.
Those kernels are most of the step's memory traffic; the trials' rows (``theta``), heads,
losses and optimizer stay fp32.

What fuses (``FUSABLE_METHODS``; which sizes pad: :mod:`search_spaces.row_groups`), trials of one
backbone and task with the mean-pooling head and the same :data:`~.train.SHARED_FIELDS` of the
training config (``lr``, ``weight_decay``, ``grad_clip`` and ``seed`` may differ):

* plain LoRA (``method="lora"``) as :class:`~.model.FusedLoRA`: the same adapted linears (ranks and
  alpha may differ), hand-written batched LoRA linears, packed batches, CUDA graphs, a bf16
  backbone on GPUs;
* BitFit, bottleneck adapters (``houlsby``, ``pfeiffer``), AdapterFusion (``fusion``) and
  LoRA+AdapterFusion (``lora_fusion``) as :class:`~.rows.FusedRows`: the template trial's model
  run per row under ``torch.func.vmap``, its frozen backbone and source adapters shared; trials of
  one row signature (:func:`search_spaces.row_groups.row_signature`), smaller sizes zero-padded.

What does not: prefix tuning and UniPELT (adapters' prefix code makes host tensors and caches
state inside the call, which vmap refuses), AdaLoRA, rank growth and fusion-entropy placement
(per-step or per-evaluation hooks), full fine-tuning, the ``cls`` head, quantised backbones. A
fused run trains every trial to the end (no early stop per trial) and does not checkpoint.

The parts, as HFTA splits them: :mod:`.model` (the fused LoRA layers and model), :mod:`.rows`
(rows of any other fusable method), :mod:`.optim` (AdamW
and clipping per row), :mod:`.batches` (a fused step's batch), :mod:`.step` (the step, graphed or
eager by the training core, and the fused evaluation), :mod:`.train` (:func:`fit_fused`, K trials
in one process) and :mod:`.pool` (trials that join and leave a pool of fused groups, under Ray
Tune; :mod:`.pool_group` one group).
The plan of evaluations, the best-score rule, the step builder and the reports are the training
core's (:mod:`trainables.training`).
"""

from trainables.fused.batches import IGNORE_INDEX, fused_batches, padded_step, step_batch
from trainables.fused.model import FUSABLE_METHODS, FusedLoRA, check_members, fuse_lora
from trainables.fused.optim import RowAdamW, clip_rows_
from trainables.fused.rows import FusedRows, check_rows
from trainables.fused.step import FusedStep, evaluate_fused, fused_losses
from trainables.fused.train import SHARED_FIELDS, check_configs, fit_fused

__all__ = [
    "FUSABLE_METHODS", "IGNORE_INDEX", "SHARED_FIELDS", "FusedLoRA", "FusedRows", "FusedStep",
    "RowAdamW", "check_configs", "check_members", "check_rows", "clip_rows_", "evaluate_fused", "fit_fused",
    "fuse_lora", "fused_batches", "fused_losses", "padded_step", "step_batch",
]  # fmt: skip
