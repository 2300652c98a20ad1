"""The loop state a run resumes from: its :class:`~.progress.Progress`, the optimizer, scheduler and
RNG states, and the training config it was made under (a resumed run may change only
:data:`RESUME_FREE_FIELDS`). Learning rates are saved as floats, so that a state made by a graphed
run (tensor learning rates) resumes eager, on any device, and the other way round.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from search_spaces.errors import ConfigError
from trainables.train_config import ADDED_KNOBS
from trainables.training.plan import FitPlan
from trainables.training.progress import Progress

STATE_VERSION = 1
# Config fields that do not change what is trained, so a resumed run may change them.
RESUME_FREE_FIELDS = ("compile", "cuda_graphs", "eval_batch_size")


def snapshot(
    progress: Progress, plan: FitPlan, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
) -> dict[str, Any]:
    """The loop state as it stands now."""
    return {
        "version": STATE_VERSION,
        "config": plan.config.to_dict(),
        "progress": asdict(progress),
        "optimizer": portable(optimizer.state_dict()),
        "scheduler": portable(scheduler.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(plan.device) if plan.cuda else None,
    }


def restore(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    plan: FitPlan,
) -> Progress:
    """Load a :func:`snapshot` into the optimizer, scheduler and RNGs; return its progress."""
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"loop state version={state.get('version')!r} is not {STATE_VERSION}")
    saved, current = state["config"], plan.config.to_dict()
    changed = sorted(
        k for k in current if k not in RESUME_FREE_FIELDS and saved.get(k) != current[k]
    )
    if changed:
        k = changed[0]
        if k not in saved:  # a knob added since: the state's run trained without it
            since = f" (added in commit {ADDED_KNOBS[k][0]})" if k in ADDED_KNOBS else ""
            raise ConfigError(
                f"cannot resume: the state predates {k}{since}, an older peft-tune trained "
                f"without it; resume with the commit that started the run (a study's "
                f"experiment.json names it: git_commit)"
            )
        raise ConfigError(
            f"cannot resume: {k}={current[k]!r} but the state has {k}={saved.get(k)!r}"
        )
    progress = Progress(**state["progress"])
    if progress.step > plan.total_steps:
        raise ConfigError(
            f"cannot resume: the state is at step {progress.step} of {plan.total_steps}"
        )
    lrs = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        if isinstance(lr, torch.Tensor):  # a graph reads this tensor: keep it, with the saved value
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
    torch.set_rng_state(state["torch_rng"].cpu())
    if plan.cuda and state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), plan.device)
    return progress


def portable(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer or scheduler state dict with tensor learning rates (graphed runs) as floats, so
    a state resumes under either form and on any device."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            return float(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [
            {k: plain(v) if k in ("lr", "initial_lr") else v for k, v in g.items()}
            for g in out["param_groups"]
        ]
    for key in ("base_lrs", "_last_lr"):
        if key in out:
            out[key] = plain(out[key])
    return out


__all__ = ["RESUME_FREE_FIELDS", "STATE_VERSION", "portable", "restore", "snapshot"]
