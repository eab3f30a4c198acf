"""The shipped monitoring reads metrics that exist: every series the Grafana dashboard
queries is one our code registers (`serve_app/runtime/metrics.py`, instantiated here with
recording stand-ins for Ray's metric classes) or one the installed Ray Serve defines, and
every label it groups by is one that metric carries. The scrape configs point at the port
the cluster configs export on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ray.serve
import yaml

from serve_app.runtime import metrics

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
# Tags ray.serve.metrics adds to every metric recorded inside a replica.
SERVE_TAGS = {"deployment", "replica", "application"}
# How Prometheus exposes one Ray metric: counters as _total, histograms as three series.
SUFFIXES = ("_total", "_bucket", "_sum", "_count")
NON_LABELS = {"le"}  # a histogram's bucket bound, on every _bucket series


def our_metrics(monkeypatch) -> dict[str, set[str]]:
    """Name (as Prometheus shows it, without suffix) -> tag keys, of every metric the
    ingress and a model replica register."""
    made: dict[str, set[str]] = {}

    class Recorder:
        def __init__(self, name, description="", boundaries=None, tag_keys=()):
            made["ray_" + name] = set(tag_keys) | SERVE_TAGS

        def __getattr__(self, _):
            return lambda *a, **k: None

    for kind in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(metrics, kind, Recorder)
    metrics.RayMetrics()
    metrics.ReplicaMetrics("cross-encoder/ms-marco-MiniLM-L6-v2")
    return made


def serve_metric_labels(name: str) -> set[str] | None:
    """Tag keys of a Ray Serve built-in metric, from the installed Serve's source (None if
    Serve defines no such metric). Names built with f-strings (`serve_num_{protocol}_...`)
    are matched as patterns."""
    bare = name.removeprefix("ray_")
    for source in Path(ray.serve.__file__).parent.rglob("*.py"):
        if "tests" in source.parts:
            continue
        text = source.read_text()
        for found in re.finditer(r'f?"(serve_[A-Za-z0-9_{}]+)"', text):
            pattern = re.sub(r"\\\{[^}]*\\\}", "[a-z]+", re.escape(found.group(1)))
            if re.fullmatch(pattern, bare):
                after = text[found.end() : found.end() + 800]
                tags = re.search(r"tag_keys=\(([^)]*)\)", after)
                keys = set(re.findall(r'"([a-z_]+)"', tags.group(1))) if tags else set()
                return keys | SERVE_TAGS
    return None


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def used_metrics(expr: str) -> set[str]:
    return {
        re.sub("(" + "|".join(SUFFIXES) + ")$", "", name)
        for name in re.findall(r"\bray_[a-z0-9_]+", expr)
    }


def grouped_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\bby \(([^)]*)\)", expr)
        for label in group.split(",")
    } - NON_LABELS


def test_dashboard_queries_only_metrics_and_labels_that_exist(monkeypatch):
    ours = our_metrics(monkeypatch)
    queries = dashboard_queries()
    assert queries
    for expr in queries:
        names = used_metrics(expr)
        assert names, expr
        for name in names:
            labels = ours.get(name) if name.startswith("ray_rerank_") else serve_metric_labels(name)
            assert labels is not None, f"{name} is not a metric of ours or of Ray Serve"
            missing = grouped_labels(expr) - labels
            assert not missing, f"{name} has no label {sorted(missing)}: {expr}"


def test_dashboard_covers_the_service_metrics(monkeypatch):
    """Requests, errors by type, every latency phase, documents and the replica view."""
    used = set().union(*(used_metrics(e) for e in dashboard_queries()))
    phases = {n for n in our_metrics(monkeypatch) if n.endswith("_duration_seconds")}
    assert phases <= used
    assert {"ray_rerank_requests", "ray_rerank_request_failures", "ray_rerank_documents"} <= used
    assert {"ray_serve_deployment_replica_healthy", "ray_serve_deployment_queued_queries"} <= used


def test_the_checks_reject_a_metric_or_label_that_does_not_exist(monkeypatch):
    ours = our_metrics(monkeypatch)
    assert "ray_rerank_documents" in ours and "ray_rerank_document_count" not in ours
    assert serve_metric_labels("ray_serve_no_such_metric") is None
    assert "status_code" not in serve_metric_labels("ray_serve_num_http_error_requests")
    assert "error_code" in serve_metric_labels("ray_serve_num_http_error_requests")


def test_scrape_configs_use_the_port_the_clusters_export_on():
    head_start = " ".join(
        yaml.safe_load((ROOT / "cluster.yaml").read_text())["head_start_ray_commands"]
    )
    workers = " ".join(
        yaml.safe_load((ROOT / "cluster.yaml").read_text())["worker_start_ray_commands"]
    )
    assert "--metrics-export-port=8080" in head_start and "--metrics-export-port=8080" in workers
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]

    (monitor_endpoint,) = yaml.safe_load((ROOT / "monitoring" / "podmonitor.yaml").read_text())[
        "spec"
    ]["podMetricsEndpoints"]
    manifest = next(
        yaml.safe_load_all((ROOT / "deployments" / "kuberay-rayservice.yaml").read_text())
    )
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert ports.get(monitor_endpoint["port"]) == 8080, container["name"]
