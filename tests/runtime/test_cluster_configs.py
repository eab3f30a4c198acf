"""The cluster configs: `cluster.yaml` passes Ray's own cluster-launcher validation, the
KubeRay RayService serves exactly deployments/gpu-1.yaml, and both put models on GPU
workers and the ingress on the CPU head."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.service.auth import Authenticator, hash_key

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


def head_start_keys_prefix() -> str:
    """The head's `ray start` command up to `ray start`: what sets RERANK_API_KEYS."""
    (start,) = [c for c in load("cluster.yaml")["head_start_ray_commands"] if "ray start" in c]
    return start.split("ray start")[0]


def run_head_prefix(home: Path) -> subprocess.CompletedProcess:
    script = head_start_keys_prefix() + 'printf %s "$RERANK_API_KEYS"'
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)


def test_cluster_yaml_delivers_key_hashes_to_the_head_ingress(tmp_path):
    """`ray up` copies ~/.rerank-api-keys to the head (file_mounts), and the head's start
    command turns it into the variable gpu-1.yaml's auth reads; the ingress's
    Authenticator accepts the keys that come out of it."""
    raw = load("cluster.yaml")
    (application,) = load("deployments/gpu-1.yaml")["applications"]
    auth = AppConfig.model_validate(application["args"]).auth
    assert auth.enabled and auth.keys_env == "RERANK_API_KEYS" and not auth.keys
    assert raw["file_mounts"]["~/.rerank-api-keys"] == "~/.rerank-api-keys"
    assert "export RERANK_API_KEYS=" in head_start_keys_prefix()

    # The start command itself, run with a home holding the mounted file (one line per key,
    # a trailing blank line as editors leave it).
    (tmp_path / ".rerank-api-keys").write_text(
        f"team-a:{hash_key('key-a')}\nteam-b:{hash_key('key-b')}\n\n"
    )
    done = run_head_prefix(tmp_path)
    assert done.returncode == 0, done.stderr
    authenticator = Authenticator(auth, environ={"RERANK_API_KEYS": done.stdout})
    assert authenticator.authenticate("Bearer key-a").key_id == "team-a"
    assert authenticator.authenticate("Bearer key-b").key_id == "team-b"


def test_cluster_yaml_head_stops_before_ray_starts_without_key_hashes(tmp_path):
    done = run_head_prefix(tmp_path)  # no ~/.rerank-api-keys
    assert done.returncode != 0 and "API key" in done.stderr
    (tmp_path / ".rerank-api-keys").write_text("\n")
    assert run_head_prefix(tmp_path).returncode != 0


def test_kuberay_head_reads_key_hashes_from_the_documented_secret():
    manifest = load("deployments/kuberay-rayservice.yaml")
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "RERANK_API_KEYS"]
    ref = env["valueFrom"]["secretKeyRef"]
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
