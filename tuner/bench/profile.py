"""Where a fused step's time goes: a few steps under ``torch.profiler``, each op's own time on the
device grouped by kind, beside the timed run's step time.

The timed run replays CUDA graphs, whose kernels the profiler does not attribute to the ops that
launched them, so the profile runs the same steps eager: the same kernels, each launched from
Python. Kernel time per eager step close to the graphed step's wall time says the kernels bound
the step (the kinds say which); much less says launches or the host do. On a CPU the op's own
CPU time stands in for kernel time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# An op's kind: the first whose name fragments one appears in its name; otherwise "element-wise".
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "attention", "softmax", "flash")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                "aten::linear", "aten::einsum")),
    ("norm", ("layer_norm",)),
    ("reduction", ("aten::sum", "aten::mean", "norm", "amax", "aten::max", "aten::min",
                   "aten::all", "aten::any")),
    ("copy", ("copy_", "_to_copy", "aten::cat", "aten::stack", "index", "gather", "scatter",
              "embedding", "aten::clone", "fill_", "zero_", "Memcpy", "Memset")),
)  # fmt: skip
OTHER = "element-wise"
UNATTRIBUTED = "no op"  # device time of kernels no op claims (the autograd engine's, ...)
TOP = 8  # ops named in a profile


@dataclass(frozen=True)
class OpTime:
    """One op's totals over the profiled steps, in microseconds: its own (self) time on the host
    and the device time of the kernels it launched itself; ``kernel``: a device event (a kernel
    or a copy), whose time an op also claims."""

    name: str
    host_us: float
    device_us: float
    kernel: bool = False


def kind_of(name: str) -> str:
    """The kind of an op by its name (:data:`KINDS`)."""
    return next((kind for kind, parts in KINDS if any(p in name for p in parts)), OTHER)


def summarize(ops: Iterable[OpTime], steps: int, *, device: bool) -> dict[str, Any]:
    """Per step: the kernels' (``device``) or the host's time in ms, each kind's share of it, and
    the ops that took most. On a device the total is every kernel's time and the part no op
    claims is its own kind; on the host it is every op's own time."""
    ops = list(ops)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    claimed = [o for o in ops if not o.kernel]
    own = [(o.name, o.device_us if device else o.host_us) for o in claimed]
    total = sum(o.device_us for o in ops if o.kernel) if device else sum(t for _, t in own)
    by_kind: dict[str, float] = {}
    for name, t in own:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + t
    if device:
        by_kind[UNATTRIBUTED] = max(0.0, total - sum(by_kind.values()))
    top = sorted(own, key=lambda item: -item[1])[:TOP]
    return {
        "steps": steps, "clock": "device" if device else "host",
        "ms_per_step": round(total / steps / 1000, 3),
        "shares": {k: round(t / total, 4) if total else 0.0
                   for k, t in sorted(by_kind.items(), key=lambda item: -item[1]) if t > 0},
        "top_ms_per_step": {name: round(t / steps / 1000, 3) for name, t in top if t > 0},
    }  # fmt: skip


def profile_steps(stepper: Any, batches: Sequence[Any], *, device: bool, warmup: int = 2) -> dict:
    """Run ``stepper`` (a fused or single trial's step, eager) on ``warmup`` batches, then on the
    rest under the profiler; their :func:`summarize`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if len(batches) <= warmup:
        raise ValueError(f"{len(batches)} batches leave none to profile after {warmup} warm-up")
    sync = torch.cuda.synchronize if device else (lambda: None)
    for batch in batches[:warmup]:
        stepper(batch)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device else [])
    with profile(activities=activities) as prof:
        for batch in batches[warmup:]:
            stepper(batch)
        sync()
    return summarize(_op_times(prof.key_averages()), len(batches) - warmup, device=device)


def profile_fused(
    model: Any, train: Any, configs: Sequence[Any], *, task_kind: str, metric: str, device: str,
    steps: int, warmup: int = 2,
) -> dict[str, Any]:  # fmt: skip
    """:func:`profile_steps` of ``model``'s fused step (the rows set from ``configs``, eager) on
    the first batches of an epoch of ``train``; the model's weights move as in training."""
    import itertools
    from dataclasses import replace as with_fields

    from torch.nn.attention import sdpa_kernel

    from trainables.fused.batches import fused_batches
    from trainables.fused.train import prepare_fused
    from trainables.inference import SDPA_BACKENDS

    eager = [with_fields(c, cuda_graphs=False) for c in configs]
    plan, stepper = prepare_fused(model, len(train), eager, task_kind=task_kind, metric=metric,
                                  device=device)  # fmt: skip
    made = fused_batches(train, eager, epoch=0, pack=stepper.pack, pin_memory=plan.cuda)
    batches = [batch for batch, _ in itertools.islice(made, warmup + steps)]
    model.train()
    with sdpa_kernel(SDPA_BACKENDS):
        return profile_steps(stepper, batches, device=plan.cuda, warmup=warmup)


def _op_times(averages: Iterable[Any]) -> list[OpTime]:
    from torch.autograd import DeviceType

    return [
        OpTime(e.key, float(e.self_cpu_time_total), float(e.self_device_time_total),
               kernel=e.device_type != DeviceType.CPU)
        for e in averages
    ]  # fmt: skip


def with_step_time(profile: dict[str, Any], step_ms: float | None) -> dict[str, Any]:
    """``profile`` with the timed run's wall time per step beside it (None: not known)."""
    return {**profile, "timed_step_ms": None if step_ms is None else round(step_ms, 3)}


def profile_line(profile: dict[str, Any]) -> str:
    """One line for the bench's summary: ms per step, the kinds' shares, the timed step."""
    shares = ", ".join(f"{k} {v:.0%}" for k, v in profile["shares"].items())
    timed = profile.get("timed_step_ms")
    beside = f"; the timed step {timed:.2f} ms" if timed is not None else ""
    return (f"{profile['ms_per_step']:.2f} ms of {profile['clock']} time per eager step "
            f"({shares}){beside}")  # fmt: skip


__all__ = ["KINDS", "OpTime", "kind_of", "profile_fused", "profile_line", "profile_steps",
           "summarize", "with_step_time"]  # fmt: skip
