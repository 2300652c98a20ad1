"""A study whose fused pools are all gone (out of GPU memory, their GPUs or nodes lost): it ends
as Ctrl-C ends it, its unfinished trials saved to be run again, and says in one line what to run
next (:func:`pools_gone_line`): ``--resume``, with ``--fuse K/2`` after a pool out of memory."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from ray.tune import Callback


class PoolsGone(Callback):
    """Ends the study's Tune run as Ctrl-C does once every pool is gone, checked as a trial fails
    (a lost pool fails each trial it held): Tune saves its state with those trials still to run
    and its search not over, so ``--resume`` runs them again, after a pool out of GPU memory
    with ``--resume --fuse K/2``. A Tune stopper's ``stop_all`` would end the search for good and
    save the running trials as ended (an H100 study resumed with none of them, 2026-12-05).
    Holds the router's name, not its handle: Tune pickles its callbacks, and a resumed study's
    router is a new actor under the same name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ended = False

    def __getstate__(self) -> dict[str, Any]:  # a resumed study checks afresh
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end_if_gone()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end_if_gone()

    def _end_if_gone(self) -> None:
        if self._ended or gone(self.name) is None:
            return
        self._ended = True
        # Tune's fit, run in the main thread, handles SIGUSR1 as Ctrl-C: the run ends after this
        # step, its state saved. Without that handler the trials fail as PoolLost and --resume
        # reruns them (Tune resumes errored trials too).
        interrupt = signal.getsignal(signal.SIGUSR1)
        if not callable(interrupt):
            return
        print("[peft-tune] every fused pool is gone: the study ends here, its state saved",
              file=sys.stderr, flush=True)  # fmt: skip
        tune_log = logging.getLogger("ray.tune.tune")  # its "Stop signal received (Ctrl+C)"
        level = tune_log.level
        tune_log.setLevel(logging.ERROR)
        try:
            interrupt(signal.SIGUSR1, None)
        finally:
            tune_log.setLevel(level)


def gone(name: str) -> str | None:
    """Why every pool of the router ``name`` is gone, or ``None`` while one is alive (or no such
    router runs: nothing to say about pools it does not know)."""
    import ray

    try:
        router = ray.get_actor(name)
    except ValueError:
        return None
    try:
        if ray.get(router.alive.remote(), timeout=60):
            return None
        return str(ray.get(router.describe_gone.remote(), timeout=60))
    except ray.exceptions.RayActorError:
        return "the router that places trials on them is gone"


def pools_gone_line(why: str, slots: int) -> str:
    """The one line a study whose pools are all gone stops with: what to run next."""
    if "OutOfMemoryError" in why and slots > 1:  # the same groups would fill the GPU again
        fewer = slots // 2
        return (f"error: every fused pool is gone (out of GPU memory at {slots} rows per "
                f"group: {why}): the study stopped; --resume --fuse {fewer} continues it with "
                "smaller groups")  # fmt: skip
    return (
        f"error: every fused pool is gone ({why}): the study stopped; --resume continues it "
        "once the GPUs are back"
    )


__all__ = ["PoolsGone", "gone", "pools_gone_line"]
