"""``python -m cluster.probe``: before a long study, check that trials reach every node of the
cluster and that what each node writes to the shared storage can be read back by the driver.

ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
    python -m cluster.probe --storage s3://bucket/peft-tune

One trial per CPU of the cluster, each holding its CPU long enough for all to run at once, so the
scheduler must use every node. Each trial reports its node and saves it in a checkpoint, which
the trial's own node uploads to the storage. Prints the placement as JSON, writes it beside the
results, and exits 1 when a node with CPUs ran no trial or a checkpoint cannot be read back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from search_spaces.errors import ConfigError
from tuner.cli import run_cli
from tuner.study import DEFAULT_RESULTS, StudyFiles

NAME = "cluster-probe"
HOLD_S = 10.0  # long enough for the last trial to start before the first ends


def probe_trial(config: dict[str, Any]) -> None:
    """Hold one CPU for ``hold_s``, then report this node and save it in a checkpoint."""
    import ray
    from ray import tune

    time.sleep(config["hold_s"])
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid()}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "node.json").write_text(json.dumps(node))
        tune.report({"index": config["index"], **node},
                    checkpoint=tune.Checkpoint.from_directory(folder))  # fmt: skip


def placement(trials: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The probe's verdict from its trials (``node_id``, ``checkpoint_node_id``) and the alive
    nodes (``node_id``, ``cpus``): trials per node, idle nodes with CPUs, unreadable checkpoints."""
    per_node = Counter(t["node_id"] for t in trials if t.get("node_id"))
    idle = [n["node_id"] for n in nodes if n["cpus"] > 0 and per_node[n["node_id"]] == 0]
    unreadable = [t["trial_id"] for t in trials
                  if t.get("node_id") is None or t.get("checkpoint_node_id") != t["node_id"]]  # fmt: skip
    return {
        "nodes": len(nodes),
        "trials": len(trials),
        "trials_per_node": dict(per_node),
        "idle_nodes": idle,
        "unreadable_checkpoints": unreadable,
        "ok": not idle and not unreadable and bool(trials),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.probe", description=__doc__.split("\n")[0])
    p.add_argument("--storage", default=str(DEFAULT_RESULTS),
                   help=f"results folder or URI shared by all nodes (default {DEFAULT_RESULTS})")  # fmt: skip
    p.add_argument("--num-samples", type=int, help="trials (default: one per CPU of the cluster)")
    p.add_argument("--hold-s", type=float, default=HOLD_S, help=f"seconds per trial ({HOLD_S})")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.num_samples is not None and args.num_samples <= 0:
        raise ConfigError(f"--num-samples={args.num_samples} must be > 0")
    if args.hold_s < 0:
        raise ConfigError(f"--hold-s={args.hold_s} must be >= 0")
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())

    import ray

    from tuner.runner import connect_ray

    connect_ray(cpus_per_trial=1.0)
    nodes = [{"node_id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0)}
             for n in ray.nodes() if n["Alive"]]  # fmt: skip
    num_samples = args.num_samples or int(sum(n["cpus"] for n in nodes))
    trials = run_probe(storage, num_samples=num_samples, hold_s=args.hold_s)
    verdict = {**placement(trials, nodes), "storage": f"{storage}/{NAME}", "trial_rows": trials}
    StudyFiles(storage, NAME).write_json("placement.json", verdict)  # local folder or URI alike
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["ok"] else 1


def run_probe(storage: str, *, num_samples: int, hold_s: float) -> list[dict[str, Any]]:
    """Run the probe study; one row per trial, with the node its checkpoint says it ran on."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(probe_trial, {"cpu": 1}),
        param_space={"index": tune.grid_search(list(range(num_samples))), "hold_s": hold_s},
        run_config=tune.RunConfig(name=NAME, storage_path=storage, verbose=0),
    )
    rows = []
    for result in tuner.fit():
        metrics = result.metrics or {}
        rows.append({"trial_id": metrics.get("trial_id"), "node_id": metrics.get("node_id"),
                     "hostname": metrics.get("hostname"),
                     "checkpoint_node_id": _checkpoint_node(result.checkpoint),
                     "error": None if result.error is None else str(result.error)[:300]})  # fmt: skip
    return rows


def _checkpoint_node(checkpoint: Any) -> str | None:
    """The node id saved in a trial's checkpoint, read back from the storage; None if unreadable."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as folder:
            return json.loads(Path(folder, "node.json").read_text())["node_id"]
    except (OSError, KeyError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(run_cli(main))
