"""Every Serve config in deployments/ is valid for Ray Serve and for the app's own schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig

CONFIGS = sorted((Path(__file__).parent.parent / "deployments").glob("*.yaml"))


def serve_configs() -> list[Path]:
    # Serve configs are one document; Kubernetes manifests may hold several.
    return [p for p in CONFIGS if "applications" in next(yaml.safe_load_all(p.read_text()))]


@pytest.mark.parametrize("path", serve_configs(), ids=lambda p: p.name)
def test_serve_config_validates(path):
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (application,) = schema.applications
    assert application.import_path == "serve_app.runtime.builder:build_app"
    # Serve's own per-call log is off, for the proxy and the app (the edge logs each request).
    assert schema.logging_config.enable_access_log is False
    assert application.logging_config.enable_access_log is False
    config = AppConfig.model_validate(application.args)
    if not path.name.startswith("bench-"):
        assert len(config.enabled_models) == 5


def test_gpu_config_starts_on_one_gpu_and_scales_within_the_cluster_gpu_workers():
    """The rule: sum(num_gpus * min_replicas) fits the one GPU a cluster starts with, and
    sum(num_gpus * max_replicas) fits the GPUs the cluster's GPU worker group can add."""
    root = Path(__file__).parent.parent
    raw = yaml.safe_load((root / "deployments/gpu-1.yaml").read_text())
    config = AppConfig.model_validate(raw["applications"][0]["args"])
    assert all(m.num_gpus > 0 for m in config.models)
    at_start = sum(m.num_gpus * m.autoscaling.min_replicas for m in config.models)
    at_most = sum(m.num_gpus * m.autoscaling.max_replicas for m in config.models)
    assert 0 < at_start <= 1.0
    assert any(m.autoscaling.max_replicas > m.autoscaling.min_replicas for m in config.models)

    launcher = yaml.safe_load((root / "cluster.yaml").read_text())
    (gpu_group,) = [t for t in launcher["available_node_types"].values() if t["resources"]["GPU"]]
    assert at_most <= gpu_group["max_workers"] * gpu_group["resources"]["GPU"]
    # The manifest's first document is the RayService (a NetworkPolicy follows).
    kuberay = next(yaml.safe_load_all((root / "deployments/kuberay-rayservice.yaml").read_text()))
    (workers,) = kuberay["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert at_most <= workers["maxReplicas"] * gpus_per_pod
    # Scaling past the first GPU really needs another worker: the group can add one.
    assert at_most > 1.0 and gpu_group["max_workers"] > gpu_group["min_workers"]


def test_demo_config_uses_random_checkpoints_and_no_gpu():
    raw = yaml.safe_load((Path(__file__).parent.parent / "deployments/demo.yaml").read_text())
    config = AppConfig.model_validate(raw["applications"][0]["args"])
    assert all(m.random_init and m.num_gpus == 0 for m in config.models)


def test_every_cluster_node_starts_ray_with_the_service_environment():
    from serve_app.runtime.ray_env import SERVICE_ENV

    root = Path(__file__).resolve().parent.parent
    launcher = yaml.safe_load((root / "cluster.yaml").read_text())
    for commands in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        exported = {
            word
            for line in start.split(";")
            if line.strip().startswith("export ")
            for word in line.split()[1:]
        }
        assert {f"{name}={value}" for name, value in SERVICE_ENV.items()} <= exported
    kuberay = next(yaml.safe_load_all((root / "deployments/kuberay-rayservice.yaml").read_text()))
    cluster = kuberay["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert SERVICE_ENV.items() <= env.items()


def test_the_service_environment_leaves_what_the_caller_set():
    from serve_app.runtime.ray_env import DIRECT_INGRESS_ENV, SERVICE_ENV, with_service_env

    environ = {"RAY_worker_niceness": "5"}
    with_service_env(environ)
    assert environ == SERVICE_ENV | {"RAY_worker_niceness": "5"}
    with_service_env(environ, direct_ingress=True)
    assert DIRECT_INGRESS_ENV.items() <= environ.items()
