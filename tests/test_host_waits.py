"""No graph-safe method's step waits for the host, checked without a GPU.

A CUDA graph cannot hold a step that brings a host tensor onto the device or reads a device scalar
(trainables/training/graphs.py turns graphs off for such a run). The meta device stands in for
CUDA here: the model and its inputs live on it, and every op that takes a host tensor of rank >= 1
beside them, or reads a scalar out of them, is recorded with where it was called. The flat prefix's
mask, made on the host by adapters, turned graphs off on an H200 (2026-12-05) until the prefix
forward ran with the inputs' device as the default (``MethodHooks.host_tensors``).
"""

from __future__ import annotations

import functools
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from search_spaces.method_config import MethodConfig
from search_spaces.row_groups import group_template
from tests.test_fused_rows import CASES as ROW_CASES
from tests.test_fused_rows import configs_of, sources  # noqa: F401 (the fixture)
from tests.test_fused_rows import member as row_member
from tests.test_methods_contract import METHOD_NAMES, build, config_for
from trainables.fused import FusedRows

READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal"}
VARIANTS = {  # the knobs that change which library code a step runs
    "prefix": [{"prefix_reparam": True}, {"prefix_reparam": False}],
    "autopeft": [{"layer_modules": ("prefix", "serial"), "prefix_reparam": False},
                 {"layer_modules": ("parallel", "lora"), "prefix_reparam": True}],
}  # fmt: skip
CASES = [pytest.param(m, knobs, id="-".join([m, *(f"{k}={v}" for k, v in knobs.items())]))
         for m in METHOD_NAMES for knobs in VARIANTS.get(m, [{}])]  # fmt: skip


class HostWaits(TorchDispatchMode):
    """Records each op that reads a device scalar or takes a host tensor beside device ones."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        name = func._schema.name.split("::")[-1]
        host = any(t.device.type == "cpu" and t.dim() > 0 for t in tensors)
        if name in READS or host:
            ours = [f for f in traceback.extract_stack() if "/torch/" not in f.filename]
            where = ours[-1] if ours else None
            self.found.append(f"{name} at {where.filename}:{where.lineno}" if where else name)
        return func(*args, **kwargs)


def step_on_meta(model: torch.nn.Module, rows: int = 4) -> list[str]:
    """Forward, the method's own regulariser and backward of ``model`` on meta inputs. The move
    swaps each tensor in place, as a move to CUDA keeps it: closures over the built parameters
    (dynamic fusion's identity pull) then see the moved ones."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model = model.to("meta").train()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    ids = torch.randint(1000, 2000, (rows, 9)).to("meta")
    mask = torch.ones(rows, 9, dtype=torch.long).to("meta")
    with HostWaits() as waits:
        loss = model(ids, mask).float().sum()
        extra = getattr(model, "regularization_loss", lambda: None)()
        if extra is not None:
            loss = loss + extra
        loss.backward()
    return waits.found


@pytest.mark.parametrize(("method", "knobs"), CASES)
def test_a_graph_safe_step_never_waits_for_the_host(method: str, knobs: dict) -> None:
    model = build(config_for(method, **knobs))
    if not model.graph_safe:
        pytest.skip(f"{method} runs per-step hooks: never graphed")
    assert step_on_meta(model) == []


def test_the_recorder_finds_a_host_tensor_brought_over() -> None:
    """What the test above relies on: a step that makes a tensor on the host is recorded."""

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2000, 3))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(ids.shape).to(ids.device)  # adapters' flat prefix mask, before
            return self.weight[ids].sum(1) * (mask * ones).sum(1, keepdim=True)

    assert any(w.startswith("_to_copy") for w in step_on_meta(Masked()))


@pytest.mark.parametrize("some", [False, True], ids=["all-rows", "some-rows"])
@pytest.mark.parametrize("case", list(ROW_CASES))
def test_rows_never_wait_for_the_host(case: str, some: bool, sources, monkeypatch) -> None:  # noqa: F811
    """The rows run each member's forward under vmap (FusedRows), over the bf16 copy a GPU runs:
    the same holds there, for every row method; also for some of the rows, picked by a device
    index (what a graphed pool group computes when it holds fewer trials than rows)."""
    autocast = torch.is_autocast_enabled  # no autocast state for meta: none is on
    monkeypatch.setattr(
        torch, "is_autocast_enabled", lambda *a: a[:1] != ("meta",) and autocast(*a)
    )
    methods: list[MethodConfig] = configs_of(case)
    models = [row_member(m, seed=i, sources=sources) for i, m in enumerate(methods)]
    template = row_member(group_template(methods), seed=0, sources=sources)
    fused = FusedRows(models, template=template)
    fused.backbone_to(torch.bfloat16)
    if some:
        index = torch.tensor([0, 2]).to("meta")
        picked = functools.partial(fused.forward, rows=index)
        fused.forward = picked  # type: ignore[method-assign]
    assert step_on_meta(fused, rows=4 * (2 if some else len(models))) == []
