"""The cluster configs are valid for the tools that read them, and keep our security defaults.

The autoscaler config is checked against the JSON schema shipped inside the ray package. KubeRay's
CRD schema is not shipped with anything installed here, so the RayJob gets a structural check of
the fields KubeRay requires and of what we rely on; its entrypoint is parsed by our own CLI.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(scope="module")
def autoscaler() -> dict:
    return load("autoscaler.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load("rayjob.yaml")


def passed_env_vars(monkeypatch: pytest.MonkeyPatch, job_env: dict[str, str]) -> set[str]:
    """The env var keys ``tuner.runner.connect_ray`` passes to ``ray.init`` in a job whose own
    runtime env set ``job_env`` (Ray puts those into the driver's environment)."""
    from tuner import runner

    captured: dict = {}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # as `ray job submit` sets it
    for key in (*getattr(runner, "DRIVER_ENV", {}), *runner.TRIAL_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)  # restored afterwards: connect_ray sets some
    for key, value in job_env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: captured.update(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    runner.connect_ray(cpus_per_trial=1.0)
    return set((captured.get("runtime_env") or {}).get("env_vars", {}))


# --- autoscaler (cluster launcher) -------------------------------------------------------------


def test_autoscaler_config_matches_rays_schema(autoscaler: dict) -> None:
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(autoscaler, json.loads(schema_path.read_text()))
    validate_config(autoscaler)  # the schema plus Ray's cross-field checks (head type, workers)


def test_autoscaler_has_a_cpu_head_and_gpu_workers(autoscaler: dict) -> None:
    types = autoscaler["available_node_types"]
    head = types[autoscaler["head_node_type"]]
    workers = [t for name, t in types.items() if name != autoscaler["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials must not land on the head"
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(t.get("min_workers", 0) == 0 for t in workers), "idle GPU nodes must scale to 0"


def test_autoscaler_keeps_servers_on_loopback_with_token_auth(autoscaler: dict) -> None:
    head_start = " ".join(autoscaler["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (CLUSTER / "autoscaler.yaml").read_text()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in autoscaler[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    mlflow = [c for c in autoscaler["head_start_ray_commands"] if "cluster.mlflow_server" in c]
    assert mlflow and "--host" not in mlflow[0], "MLflow must keep its 127.0.0.1 default"
    assert "~/.ray/auth_token" in autoscaler["file_mounts"]


def test_same_ray_version_everywhere(autoscaler: dict, rayjob: dict) -> None:
    """Ray refuses nodes and clients of another version: configs pin the one installed here."""
    setup = " ".join(autoscaler["setup_commands"])
    assert f"ray[default,tune]=={ray.__version__}" in setup
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-", dockerfile, re.M)


# --- KubeRay RayJob ----------------------------------------------------------------------------


def test_rayjob_structure(rayjob: dict) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    assert spec["entrypoint"].strip()
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    if spec["submissionMode"] == "SidecarMode":
        assert head["template"]["spec"]["restartPolicy"] == "Never"
    for pod in [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        containers = pod["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_rayjob_entrypoint_is_a_valid_study_command(rayjob: dict) -> None:
    from tuner.experiments import get_experiment
    from tuner.run import parser

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "tuner.run"]
    args = parser().parse_args(argv[3:])
    get_experiment(args.name).with_preset(args.preset)  # raises on an unknown name or preset
    assert args.storage.startswith("s3://"), "every node must reach the results"
    assert args.tracking_uri.startswith("http://"), "a shared MLflow server"


def test_rayjob_runtime_env_parses_and_merges_with_the_driver(
    rayjob: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    job_env = runtime_env.get("env_vars", {})
    assert not passed_env_vars(monkeypatch, job_env) & set(job_env)


# --- runtime env for `ray job submit` ----------------------------------------------------------


def test_runtime_env_parses() -> None:
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**load("runtime_env.yaml"))
    assert env["working_dir"] == "."
    assert {".venv", ".git", "results"} <= set(env["excludes"])


def test_the_driver_never_repeats_the_jobs_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray fails a job whose runtime env and ``ray.init(runtime_env=...)`` share an env var."""
    alone = passed_env_vars(monkeypatch, {})
    assert {"HF_HUB_OFFLINE", "OMP_NUM_THREADS"} <= alone, "outside a job, trials get the env"
    job_env = {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "4",
        **load("runtime_env.yaml")["env_vars"],
    }
    assert not passed_env_vars(monkeypatch, job_env) & set(job_env)
