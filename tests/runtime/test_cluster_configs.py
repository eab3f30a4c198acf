"""The cluster configs: `cluster.yaml` passes Ray's own cluster-launcher validation, the
KubeRay RayService serves exactly deployments/gpu-1.yaml, and both put models on GPU
workers and the ingress on the CPU head."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig

ROOT = Path(__file__).parents[2]


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_cluster_yaml_passes_ray_cluster_launcher_validation():
    raw = load("cluster.yaml")
    # What `ray up` does before touching a cloud: merge the provider defaults, validate
    # against ray/autoscaler/ray-schema.json and the node-type rules.
    validate_config(prepare_config(copy.deepcopy(raw)))

    head = raw["available_node_types"][raw["head_node_type"]]
    workers = {k: v for k, v in raw["available_node_types"].items() if k != raw["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0
    (gpu_group,) = workers.values()
    assert gpu_group["resources"]["GPU"] >= 1
    assert gpu_group["min_workers"] < gpu_group["max_workers"]  # the GPU group autoscales
    setup = " ".join(
        raw["setup_commands"] + raw["head_setup_commands"] + raw["worker_setup_commands"]
    )
    assert "pip install -e ~/rerank-serve" in setup
    assert raw["file_mounts"]["~/rerank-serve"] == "."
    assert "serve deploy ~/rerank-serve/deployments/gpu-1.yaml" in raw["head_start_ray_commands"]


def test_cluster_yaml_fails_validation_when_broken():
    """The validation above can fail: a misspelt key is rejected."""
    broken = load("cluster.yaml")
    broken["available_node_types"]["gpu-worker"]["max_worker"] = 4
    try:
        validate_config(prepare_config(broken))
    except Exception as e:
        assert "max_worker" in str(e)
    else:
        raise AssertionError("an unknown node-type key passed validation")


def test_kuberay_rayservice_serves_exactly_the_gpu_serve_config():
    manifest = load("deployments/kuberay-rayservice.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert served == load("deployments/gpu-1.yaml")
    ServeDeploySchema.model_validate(served)

    cluster = manifest["spec"]["rayClusterConfig"]
    launcher_ray = load("cluster.yaml")["setup_commands"][1].split("==")[1].strip('"')
    assert cluster["rayVersion"] == launcher_ray
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu_group,) = cluster["workerGroupSpecs"]
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_group["minReplicas"] < gpu_group["maxReplicas"]
    assert cluster["enableInTreeAutoscaling"] is True


def test_gpu_serve_config_places_models_on_gpus_and_the_ingress_on_the_head():
    (application,) = load("deployments/gpu-1.yaml")["applications"]
    config = AppConfig.model_validate(application["args"])
    for model in config.models:
        options = model.deployment_options()
        assert options["ray_actor_options"]["num_gpus"] > 0
        assert "resources" not in options["ray_actor_options"]
        assert options["max_queued_requests"] > 0  # bounded: overload sheds
    ingress = config.ingress.deployment_options()
    assert ingress["ray_actor_options"]["resources"] == {"node:__internal_head__": 0.01}
    assert "num_gpus" not in ingress["ray_actor_options"]
    assert ingress["max_queued_requests"] > 0
