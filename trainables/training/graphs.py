"""CUDA graphs for the training step: each batch shape's whole step (forward, loss, backward,
clipping, AdamW) captured once and replayed, instead of ~1,000 kernels launched one by one.

Why: an SST-2 step of the embedded MiniLM is ~430 tokens, microseconds of GPU work behind ~20 ms
of Python and kernel launches (docs/BENCHMARKS.md). A replay costs one launch.

What a graphed step may touch is fixed at capture, so the loop keeps these static:

* the batch: copied into per-shape input buffers before each replay (dynamic padding makes at most
  ``max_length / 8`` shapes, fewer where rare widths pad up to common ones,
  ``batching.MIN_WIDTH_BATCHES``; a batch of a size not asked for, such as an epoch's short last
  one, runs eager);
* the gradients: allocated once, zeroed in place at the start of every step (never set to None);
* the optimizer: fused AdamW with ``capturable=True`` and a tensor learning rate per group, which
  the scheduler fills in place.

Capture runs eager steps on a side stream first (cuBLAS workspaces, lazily created optimizer
state): two before a run's first shape, one (the host-wait check below) before each later one,
which finds the optimizer state made. The parameters and optimizer state they change are restored
afterwards, so graphing changes speed, not the run (dropout draws from the same generator, at
other offsets).
All graphs of a process share one memory pool per device (:func:`_graph_pool`): a run's batch
shapes, a fused pool's groups, the trials a reused actor runs in turn. Only one replays at a time
(one training thread, one stream) and each one's inputs and outputs stay alive while it can
replay, so what one graph frees after capture another may use. A pool per run had a fused pool of
seven groups on an H100 hold 47-54 GiB in graph pools and fail out of memory (docs/BENCHMARKS.md).

A step that waits for the host (``torch.all(mask == 1)`` in a condition, ``.item()``) cannot be
captured: the last warm-up step runs with such waits raising, and one that raises turns graphs
off for the rest of the run, as does a capture that fails; :attr:`StepGraphs.off_reason` says
why. Methods with per-step Python hooks that change what a step computes (lora_grow, the
fusion-entropy LoRA placement) must not be graphed: the loop checks ``model.graph_safe``. A hook
that only reads the step's gradients and edits parameters in place (AdaLoRA's rank reallocation)
runs after each replay: the gradients stay in place until the next step zeroes them.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trainables.training.batching import Batch


@dataclass(frozen=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: Batch  # static buffers the replay reads
    loss: torch.Tensor  # static output: the step's task loss, overwritten by each replay


class StepGraphs:
    """Runs training steps of ``body`` (forward, backward, optimizer step on a device batch; returns
    the detached task loss), from one CUDA graph per batch shape where it can: batches of one of
    ``batch_sizes`` rows (None: of any size, where the caller keeps the shapes few)."""

    def __init__(
        self,
        body: Callable[[Batch], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        *,
        batch_sizes: Collection[int] | None,
        device: torch.device,
    ) -> None:
        self._body = body
        self._optimizer = optimizer
        self._params = params
        self._batch_sizes = None if batch_sizes is None else frozenset(batch_sizes)
        self._device = device
        self._graphs: dict[tuple[int, ...], _Graph] = {}
        self._pool = _graph_pool(torch.device(device)).id
        self.off_reason: str | None = None
        self.replays = 0  # steps that ran from a graph
        self.capture_s = 0.0  # seconds spent capturing (warm-up steps included)
        for p in params:  # persistent gradients: every graph reads and writes these tensors
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def step(self, batch: Batch, variant: int = 0) -> torch.Tensor:
        """One training step on ``batch`` (host tensors, pinned); returns the loss on the device,
        valid until the next step (consume it, e.g. add it to an accumulator, before calling again).
        ``variant``: one graph per batch shape and variant, for a body that reads other static
        inputs by variant (a fused step's row index, one per row count)."""
        key = (*_key(batch), variant)
        graph = None if self.off_reason is not None else self._graphs.get(key)
        full = self._batch_sizes is None or batch.size in self._batch_sizes
        if graph is None and self.off_reason is None and full:
            started = time.perf_counter()
            graph = self._capture(batch, key)  # ends synchronised: the time is the GPU's too
            self.capture_s += time.perf_counter() - started
        if graph is None:
            return self._eager(batch.to(self._device))
        _copy_into(graph.inputs, batch)
        graph.graph.replay()
        self.replays += 1
        return graph.loss

    def _eager(self, batch: Batch) -> torch.Tensor:
        self._optimizer.zero_grad(set_to_none=False)  # in place: graphs hold these tensors
        return self._body(batch)

    def _capture(self, batch: Batch, key: tuple[int, ...]) -> _Graph | None:
        inputs = batch.to(self._device)  # allocated outside the pool: lives as long as the graph
        targets = self._mutable_state()
        saved = [t.detach().clone() for t in targets]
        fresh = [p for p in self._params if not self._optimizer.state.get(p)]
        side = _warmup_stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        try:
            with torch.cuda.stream(side), warnings.catch_warnings():
                # a capturable optimizer stepping outside a graph warns once; that is the warm-up
                warnings.simplefilter("ignore", UserWarning)
                if fresh:  # the run's first capture: the step creates the optimizer state (a
                    self._eager(inputs)  # host copy), not checked; later shapes need one step
                with _host_syncs_raise():
                    self._eager(inputs)
        except RuntimeError as error:
            # found before capturing: a failed capture would leave the CUDA generator marked as
            # capturing, and every later dropout would then fail
            self._restore(targets, saved, fresh)
            self.off_reason = f"the step waits for the host: {str(error).splitlines()[0]}"
            return None
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                self._optimizer.zero_grad(set_to_none=False)
                loss = self._body(inputs)
        except RuntimeError as error:
            shape = tuple(batch.input_ids.shape)
            self.off_reason = f"capture failed at shape {shape}: {str(error).splitlines()[0]}"
            graph = None
        finally:
            self._restore(targets, saved, fresh)
        if graph is None:
            return None
        captured = _Graph(graph, inputs, loss)
        self._graphs[key] = captured
        return captured

    def _restore(
        self, targets: list[torch.Tensor], saved: list[torch.Tensor], fresh: list[nn.Parameter]
    ) -> None:
        """Undo the warm-up: saved values back in place, state it created back to AdamW's zeros."""
        torch.cuda.synchronize(self._device)
        with torch.no_grad():
            for tensor, value in zip(targets, saved, strict=True):
                tensor.copy_(value)
            for p in fresh:
                for value in self._optimizer.state[p].values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()

    def _mutable_state(self) -> list[torch.Tensor]:
        """What a step changes: the parameters and the optimizer state that exists now."""
        tensors: list[torch.Tensor] = [p.data for p in self._params]
        for p in self._params:
            state = self._optimizer.state.get(p) or {}
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return tensors


def capturable_optimizer(groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW a graph can step: capturable, each group's learning rate (``lr``, a float) made
    a device tensor (``LambdaLR`` fills a tensor learning rate in place)."""
    for group in groups:
        group["lr"] = torch.tensor(group["lr"], dtype=torch.float32, device=device)
    return torch.optim.AdamW(groups, fused=True, capturable=True)


@functools.cache
def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device for the whole process. PyTorch keeps a cuBLAS workspace per
    (handle, stream) it has run on; one stream for every capture keeps one, where a new stream per
    capture could leave one behind for each batch shape of each run."""
    return torch.cuda.Stream(device)


def _graph_pool(device: torch.device) -> torch.cuda.MemPool:
    """The memory pool every graph of this process captures into on ``device``; held for the
    process's life, so its blocks serve the next run's captures (a reused actor's next trial)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    return _pool_on(index)


@functools.cache
def _pool_on(index: int) -> torch.cuda.MemPool:
    with torch.cuda.device(index):
        return torch.cuda.MemPool()


@contextlib.contextmanager
def _host_syncs_raise() -> Iterator[None]:
    """CUDA operations that wait for the host raise inside (what graph capture cannot hold)."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def _key(batch: Batch) -> tuple[int, ...]:
    types = batch.token_type_ids
    return (*batch.input_ids.shape, int(types is not None), int(batch.labels.is_floating_point()))


def _copy_into(inputs: Batch, batch: Batch) -> None:
    inputs.input_ids.copy_(batch.input_ids, non_blocking=True)
    inputs.attention_mask.copy_(batch.attention_mask, non_blocking=True)
    inputs.labels.copy_(batch.labels, non_blocking=True)
    if inputs.token_type_ids is not None and batch.token_type_ids is not None:
        inputs.token_type_ids.copy_(batch.token_type_ids, non_blocking=True)


__all__ = ["StepGraphs", "capturable_optimizer"]
