"""``python -m tuner.run NAME --fuse K``: a study's trials trained as the rows of fused pools
(:mod:`trainables.fused_pool`), one pool per GPU of the cluster, K rows per fused group (one
group per row signature: :mod:`search_spaces.row_groups`).

Each configuration stays its own Tune trial (its searcher suggestion, scheduler decision, MLflow
run, checkpoint); its process only relays a pool's reports, so it holds a quarter of a CPU and
no GPU. Checked before anything starts: every configuration the search would try first is of a
fusable method with the mean head. Each method's rows hold the largest sizes its
configurations have (:func:`search_spaces.row_groups.row_limits`: LoRA rank, bottleneck, target
adapter; the union of their sources and fusion layers); a method whose configurations sit on
different linears or layers gets rows with LoRA on every layer, on the linears of all their
placements (plain LoRA's ``all``, LoRA+AdapterFusion's ``attn_qv_ffn``). Without ``--fuse``, a
study on a GPU cluster pools where every method it tries is pooled by default
(:func:`default_plan`); ``--fuse 0`` turns that off; a resumed study keeps its first choice.

Placement: a :class:`PoolRouter` actor puts each trial on the least loaded pool alive
(:func:`choose_pool`). A pool whose actor dies (its GPU fell off the bus, its node went away) or
whose training failed is marked gone by the trial that finds it so; that trial fails as a known
error (:class:`trainables.relay.PoolLost`, retried by Tune per the study's failure config),
and new trials go to the pools alive. With none alive, :class:`tuner.pools_gone.PoolsGone` ends
the study as Ctrl-C does, its trials to be run again by ``--resume``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces.catalog import FUSABLE_METHODS, POOLED_BY_DEFAULT
from search_spaces.errors import ConfigError
from search_spaces.row_groups import DEFAULT_SLOTS, RowLimits, count_groups, row_limits
from tuner.experiment import Experiment
from tuner.study import started_fuse

SAMPLED = 200  # configurations read up front (a grid's arms are all of them)
POOL_CPUS = 1.0  # a pool's process: its training thread feeds the GPU
POOL_START_S = 600.0  # an autoscaling cluster may take minutes to add the node a pool needs


@dataclass(frozen=True)
class FusePlan:
    slots: int  # trials trained at once per fused group, as rows of one fused model
    # each method's rows' sizes (search_spaces.row_groups.row_limits): no trial may be larger
    limits: tuple[tuple[str, RowLimits], ...] = ()
    groups: tuple[tuple[str, int], ...] = ()  # fused groups (row signatures) per method, up front

    def of(self, method: str) -> RowLimits:
        """``method``'s rows' limits (each size the first trial's where the plan has none)."""
        return dict(self.limits).get(method, RowLimits())

    def describe_groups(self) -> str:
        """``N fused groups (method n, ...)``: what the configurations read up front need."""
        total = sum(n for _, n in self.groups)
        each = ", ".join(f"{m} {n}" for m, n in self.groups)
        return f"{total} fused group{'s' * (total != 1)} ({each}) of {self.slots} rows each"


def fuse_plan(exp: Experiment, space: Any, slots: int, *, num_labels: int) -> FusePlan:
    """The pool ``--fuse slots`` needs for ``exp``, or a one-line refusal naming why not."""
    if slots < 1:
        raise ConfigError(f"--fuse={slots} must be >= 1 (trials trained at once per fused "
                          "group), or 0 for one trial per actor")  # fmt: skip
    methods = first_methods(exp, space, num_labels=num_labels)
    why = unpooled(methods, FUSABLE_METHODS)
    if why:
        raise ConfigError(f"--fuse trains trials of {', '.join(FUSABLE_METHODS)} with the mean "
                          f"head; {exp.name} tries {why}: run it without --fuse")  # fmt: skip
    return plan_for(methods, slots)


def default_plan(exp: Experiment, space: Any, *, num_labels: int) -> tuple[FusePlan | None, str]:
    """What ``tuner.run`` does on a GPU without ``--fuse``: pool ``DEFAULT_SLOTS`` rows per
    group where every configuration read up front is of a method pooled by default
    (``MethodFacts.pools_by_default``: its rows measured faster than one trial per actor),
    unquantised, with the mean head, and the study does not time its trials
    (``Experiment.timed``); else one trial per actor. The line says which, and why."""
    if exp.timed:
        return None, (f"pooling: off ({exp.name} measures its trials' training time, which "
                      "pooled trials share); --fuse K pools it anyway")  # fmt: skip
    methods = first_methods(exp, space, num_labels=num_labels)
    why = unpooled(methods, POOLED_BY_DEFAULT)
    if why:
        return None, (f"pooling: off ({exp.name} tries {why}; pooled by default: "
                      f"{', '.join(POOLED_BY_DEFAULT)}); --fuse K pools any of "
                      f"{', '.join(FUSABLE_METHODS)}")  # fmt: skip
    return plan_for(methods, DEFAULT_SLOTS), (
        f"pooling: on, up to {DEFAULT_SLOTS} trials at once per GPU as rows of one fused model "
        f"(every method {exp.name} tries pools by default); --fuse 0 trains one trial per actor"
    )


def plan_fuse(exp: Experiment, space: Any, args: Any) -> FusePlan | None:
    """The pools ``--fuse K`` asks for (:func:`fuse_plan`; its refusal comes before anything
    starts), else None: ``--fuse 0``, or no ``--fuse`` (:func:`pooling` decides once the cluster
    is known)."""
    if not getattr(args, "fuse", None):
        return None
    from trainables.data.loading import resolve_task

    return fuse_plan(exp, space, args.fuse, num_labels=resolve_task(exp.task).num_labels)


def pooling(fuse: FusePlan | None, exp: Experiment, space: Any, args: Any, files: Any, *,
            cluster_gpus: float) -> tuple[FusePlan | None, str | None]:  # fmt: skip
    """The study's pools and the line that says so: ``--fuse K`` or ``--fuse 0`` as given (a
    resumed pooled study's new K: the launcher records it, :func:`tuner.study.record_fuse`); a
    resumed study's last choice (Tune restores the trainable it started with); else, on a GPU
    cluster with no ``--gpus-per-trial``, :func:`default_plan`; else none, unsaid (a CPU)."""
    from trainables.data.loading import resolve_task

    if getattr(args, "fuse", None) is not None:
        started = started_fuse(files) if args.resume else None
        if fuse is None or not started or fuse.slots == started:
            return fuse, None
        return fuse, (f"pooling: {fuse.slots} rows per fused group from now on (the study "
                      f"started with {started})")  # fmt: skip
    num_labels = resolve_task(exp.task).num_labels
    if args.resume:
        slots = started_fuse(files)
        if not slots:
            return None, None
        return fuse_plan(exp, space, slots, num_labels=num_labels), (
            f"pooling: {slots} rows per fused group, as the study started")  # fmt: skip
    if cluster_gpus < 1 or args.gpus_per_trial is not None:
        return None, None
    return default_plan(exp, space, num_labels=num_labels)


def first_methods(exp: Experiment, space: Any, *, num_labels: int) -> list[Any]:
    """The method configs of the first configurations the search would try (a grid: all)."""
    from trainables.recipe import split_config
    from tuner.space import first_configs

    configs = first_configs(exp, space, n=min(exp.num_samples, SAMPLED))
    return [split_config(c, num_labels=num_labels)[0] for c in configs]


def unpooled(methods: Sequence[Any], poolable: Sequence[str]) -> str | None:
    """``method=..., head=...`` of the first config that cannot be a row, else None."""
    for m in methods:
        if m.method not in poolable or m.head != "mean" or m.quantize != "none":
            return f"method={m.method!r} head={m.head!r}" + (
                f" quantize={m.quantize!r}" if m.quantize != "none" else "")  # fmt: skip
    return None


def plan_for(methods: Sequence[Any], slots: int) -> FusePlan:
    """Each method's rows' sizes: the largest its configurations have (:func:`row_limits`)."""
    by_method: dict[str, list[Any]] = {}
    for method in methods:
        by_method.setdefault(method.method, []).append(method)
    limits = tuple((name, row_limits(configs)) for name, configs in sorted(by_method.items()))
    return FusePlan(slots, limits, tuple(count_groups(methods).items()))


def pool_count(cluster_gpus: float) -> int:
    """One pool per whole GPU of the cluster; one on a CPU where it has none."""
    return max(1, int(cluster_gpus + 1e-9))


def choose_pool(loads: Sequence[int | None], *, slots: int) -> int | None:
    """The pool a new trial joins: of the pools alive (``loads[i]`` trials placed and not yet
    gone; ``None`` for a pool that is gone), the least loaded, the lowest index among equals;
    ``None`` when none is alive. Pools have ``slots`` rows each, so the least loaded has a free
    row whenever any has; when none has, the trial waits in its queue for one."""
    if slots < 1:
        raise ConfigError(f"a fused pool has slots >= 1, not {slots=}")
    alive = [(load, index) for index, load in enumerate(loads) if load is not None]
    return min(alive)[1] if alive else None


class PoolRouter:
    """The study's pools and where its trials are: a Ray actor whose calls run one at a time, so
    each placement sees the ones before it (:func:`trainables.relay.tune_placed_trial`)."""

    def __init__(self, pools: Sequence[Any], gpu_ids: Sequence[Sequence[Any]], *,
                 slots: int) -> None:  # fmt: skip
        if len(pools) != len(gpu_ids) or not pools:
            raise ConfigError(f"a router needs one GPU id list per pool: {len(pools)} pools, "
                              f"{len(gpu_ids)} lists")  # fmt: skip
        self.pools = list(pools)
        self.gpu_ids = [tuple(ids) for ids in gpu_ids]
        self.slots = slots
        self.loads = [0] * len(pools)  # trials placed and not yet released
        self.placed = [0] * len(pools)  # trials ever placed
        self.gone: dict[int, str] = {}  # pool -> why it is gone

    def place(self) -> tuple[int, Any] | None:
        """(pool index, pool actor) for a new trial, or ``None`` when every pool is gone."""
        loads = [None if i in self.gone else n for i, n in enumerate(self.loads)]
        index = choose_pool(loads, slots=self.slots)
        if index is None:
            return None
        self.loads[index] += 1
        self.placed[index] += 1
        return index, self.pools[index]

    def release(self, index: int) -> None:
        self.loads[index] = max(0, self.loads[index] - 1)

    def lost(self, index: int, reason: str) -> None:
        self.gone.setdefault(index, reason)  # the first trial to find it gone says why

    def alive(self) -> int:
        return len(self.pools) - len(self.gone)

    def state(self) -> dict[str, Any]:
        return {"loads": list(self.loads), "placed": list(self.placed), "gone": dict(self.gone),
                "gpu_ids": list(self.gpu_ids)}  # fmt: skip

    def describe_gone(self) -> str:
        return "; ".join(f"pool {i} (GPU {','.join(map(str, self.gpu_ids[i])) or 'none'}): {why}"
                         for i, why in sorted(self.gone.items()))  # fmt: skip


@dataclass(frozen=True)
class Pools:
    """A study's fused pools: their actors, the GPU ids Ray gave each (empty on a CPU), and the
    router that places trials on them (a named actor: ``tuner.pools_gone`` finds it by name)."""

    plan: FusePlan
    actors: tuple[Any, ...]
    gpu_ids: tuple[tuple[Any, ...], ...]
    router: Any
    name: str

    def expect(self, trials: int) -> None:
        """A phase of ``trials`` trials starts: each pool learns its share (the router spreads
        them evenly), so an empty one starts training once its share has joined rather than
        waiting out its gathering time for a full group (the seeds phase is often smaller)."""
        import ray

        share = max(1, -(-trials // len(self.actors)))
        # a pool gone or stuck: the router sends it nothing, PoolsGone ends the study
        errors = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        for actor in self.actors:
            with contextlib.suppress(*errors):
                ray.get(actor.expect.remote(share), timeout=60)

    def describe(self) -> str:
        plan = self.plan
        if [m for m, _ in plan.groups] in ([], ["lora"]):
            lora = plan.of("lora")
            rows = f"{plan.slots} rows of LoRA rank {lora.rank}"
            placement = lora.placement
            lines = "" if placement is None else (
                ", every linear" if placement == "all" else f", LoRA on {placement}")  # fmt: skip
        else:  # how many groups the first configurations need, then what each method's rows hold
            rows = plan.describe_groups()
            held = [(m, plan.of(m).describe(m)) for m, _ in plan.groups]
            lines = "".join(f"; {m}: {words}" for m, words in held if words)
        if len(self.actors) == 1:
            where = "one GPU" if self.gpu_ids[0] else "a CPU"
            return f"fused pool: {rows} on {where}{lines}"
        ids = ", ".join(",".join(map(str, ids)) for ids in self.gpu_ids)
        return (f"fused pools: {len(self.actors)} x {rows}, one per GPU "
                f"(ids {ids}){lines}")  # fmt: skip


def gpu_ids_of(actor_self: Any) -> tuple[Any, ...]:
    """Run inside a pool actor (``__ray_call__``): the GPU ids Ray gave it."""
    import ray

    return tuple(ray.get_gpu_ids())


def start(plan: FusePlan, data: Any, *, cluster_gpus: float, name: str) -> Pools:
    """One pool actor per GPU of the cluster (each asks Ray for one GPU, so each gets its own),
    or one on a CPU where the cluster has none, and the router named ``name``. Waits until every
    pool runs: a cluster without room for one fails here, naming what a pool needs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainables.pool_actor import PoolActor

    gpus = 1 if cluster_gpus >= 1 else 0
    shared = ray.put(data)  # one copy in the object store for every pool
    remote = ray.remote(PoolActor).options(num_cpus=POOL_CPUS, num_gpus=gpus,
                                           max_concurrency=max(16, 4 * plan.slots))  # fmt: skip
    # device=None: the pool picks CUDA where its process sees one (its own GPU), else the CPU
    actors = tuple(remote.remote(shared, slots=plan.slots, limits=dict(plan.limits),
                                 device=None)
                   for _ in range(pool_count(cluster_gpus)))  # fmt: skip
    try:
        gpu_ids = ray.get([a.__ray_call__.remote(gpu_ids_of) for a in actors],
                          timeout=POOL_START_S)  # fmt: skip
    except ray.exceptions.GetTimeoutError:
        stop(actors)
        raise RuntimeError(
            f"{len(actors)} fused pools ({POOL_CPUS:g} CPU and {gpus} GPU each) did not all start "
            f"within {POOL_START_S:g} s: the cluster lacks room for them (`ray status`)"
        ) from None
    # on the driver's node: a GPU node that goes away must not take the router with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    router = ray.remote(PoolRouter).options(num_cpus=0, name=name, scheduling_strategy=here)
    router = router.remote(actors, gpu_ids, slots=plan.slots)
    return Pools(plan, actors, tuple(tuple(ids) for ids in gpu_ids), router, name)


def stop(actors: Sequence[Any]) -> None:
    """End actors now (a finished study's pools hold their GPUs until then)."""
    import ray

    for actor in actors:
        ray.kill(actor, no_restart=True)


__all__ = ["FusePlan", "PoolRouter", "Pools", "choose_pool", "fuse_plan",
           "pool_count", "start", "stop"]  # fmt: skip
