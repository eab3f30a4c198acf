"""The cluster configs: `cluster.yaml` passes Ray's own cluster-launcher validation, the
KubeRay RayService serves exactly deployments/gpu-1.yaml, and both put models on GPU
workers and the ingress on the CPU head."""

from __future__ import annotations

import asyncio
import copy
import functools
import gzip
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.service.auth import Authenticator, hash_key

ROOT = Path(__file__).parents[2]


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def kuberay_documents() -> dict[str, dict]:
    """The KubeRay manifest's documents by kind (RayService, NetworkPolicy)."""
    text = (ROOT / "deployments/kuberay-rayservice.yaml").read_text()
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


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
    manifest = kuberay_documents()["RayService"]
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


# -- the KubeRay manifest against KubeRay's own schema (tests/data/README.md) -------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema as `kubectl apply --validate=strict` reads it: an object
    with listed properties takes no others (the API server would drop them silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def rayservice_schema() -> dict:
    with gzip.open(ROOT / "tests/data/kuberay-v1.7.0-ray.io_rayservices.yaml.gz", "rt") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    # `metadata` is the API server's ObjectMeta, not in the CRD: name and labels suffice here.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        "additionalProperties": False,
    }
    return schema


def networkpolicy_schema() -> dict:
    """networking.k8s.io/v1 NetworkPolicy (ingress), from the Kubernetes types the KubeRay
    CRD embeds in its own network-policy field: the rule, peer and label-selector schemas
    are Kubernetes' own, as generated into the CRD."""
    cluster = rayservice_schema()["properties"]["spec"]["properties"]["rayClusterConfig"]
    rule = cluster["properties"]["networkPolicy"]["properties"]["head"]["properties"][
        "ingressRules"
    ]["items"]
    selector = rule["properties"]["from"]["items"]["properties"]["podSelector"]
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"enum": ["networking.k8s.io/v1"]},
            "kind": {"enum": ["NetworkPolicy"]},
            "metadata": rayservice_schema()["properties"]["metadata"],
            "spec": {
                "type": "object",
                "required": ["podSelector"],
                "additionalProperties": False,
                "properties": {
                    "podSelector": selector,
                    "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                    "ingress": {"type": "array", "items": rule},
                },
            },
        },
    }


@functools.cache
def rayservice_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(rayservice_schema())


@functools.cache
def networkpolicy_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(networkpolicy_schema())


def test_kuberay_manifest_passes_kuberays_schema_and_closes_the_control_plane():
    docs = kuberay_documents()
    assert set(docs) == {"RayService", "NetworkPolicy"}
    rayservice_validator().validate(docs["RayService"])
    networkpolicy_validator().validate(docs["NetworkPolicy"])

    cluster = docs["RayService"]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # Ray token authentication
    head = cluster["headGroupSpec"]["template"]
    ports = {p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports == {6379, 8265, 8000, 8080}  # no Ray client port (10001)
    pods = {"app.kubernetes.io/part-of": "rerank-serve"}
    groups = [head] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(t["metadata"]["labels"] == pods for t in groups)
    for template in groups:  # every node's Serve proxy strips the timeout headers
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == (
            "serve_app.api.proxy_headers:proxy_middlewares"
        )

    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": pods} and policy["policyTypes"] == ["Ingress"]
    open_ports = {
        p["port"]
        for rule in policy["ingress"]
        if "from" not in rule  # from anywhere
        for p in rule["ports"]
    }
    assert open_ports == {8000}
    dashboard = [r for r in policy["ingress"] if {p["port"] for p in r.get("ports", [])} == {8265}]
    (only_operator,) = dashboard
    assert only_operator["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kuberay-operator"
    }
    metrics = [r for r in policy["ingress"] if {p["port"] for p in r.get("ports", [])} == {8080}]
    (only_prometheus,) = metrics
    assert only_prometheus["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    # Everything else (GCS 6379 and the rest) only from this cluster's own pods.
    (internal,) = [r for r in policy["ingress"] if "ports" not in r]
    assert internal["from"] == [{"podSelector": {"matchLabels": pods}}]
    # cluster.yaml keeps the dashboard on loopback.
    assert "--dashboard-host=127.0.0.1" in " ".join(load("cluster.yaml")["head_start_ray_commands"])


def test_kuberay_schema_validation_can_fail():
    """The validation above rejects a misspelt field and a bad value."""
    docs = kuberay_documents()
    broken = copy.deepcopy(docs["RayService"])
    broken["spec"]["rayClusterConfig"]["authOption"] = {"mode": "token"}
    with pytest.raises(jsonschema.ValidationError, match="authOption"):
        rayservice_validator().validate(broken)
    broken = copy.deepcopy(docs["RayService"])
    broken["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "on"
    with pytest.raises(jsonschema.ValidationError, match="'on' is not one of"):
        rayservice_validator().validate(broken)
    policy = copy.deepcopy(docs["NetworkPolicy"])
    policy["spec"]["ingress"][0]["from"][0]["podSelectr"] = {}
    with pytest.raises(jsonschema.ValidationError, match="podSelectr"):
        networkpolicy_validator().validate(policy)


def test_serve_proxies_accept_the_header_stripping_middleware():
    """What Serve's proxy does with RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH: call it,
    check it returns Starlette middlewares, wrap its ASGI app in them (no cluster)."""
    from ray.serve._private.http_util import (
        _apply_middlewares,
        validate_http_proxy_callback_return,
    )

    from serve_app.api.proxy_headers import proxy_middlewares

    seen: dict = {}

    async def proxy(scope, receive, send):
        seen.update(scope["headers"])

    app = _apply_middlewares(proxy, validate_http_proxy_callback_return(proxy_middlewares()))
    headers = [(b"x-request-timeout-seconds", b"0"), (b"x-request-disconnect-disabled", b"?1")]
    scope = {"type": "http", "headers": [*headers, (b"host", b"t")], "path": "/"}

    async def nothing():
        return {"type": "http.request", "body": b""}

    async def ignore(message):
        pass

    asyncio.run(app(scope, nothing, ignore))
    assert b"host" in seen
    assert b"x-request-timeout-seconds" not in seen
    assert b"x-request-disconnect-disabled" not in seen


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
    manifest = kuberay_documents()["RayService"]
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "RERANK_API_KEYS"]
    ref = env["valueFrom"]["secretKeyRef"]
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
