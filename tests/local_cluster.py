"""A multi-node Ray cluster on one machine, for tests: `ray start --head` and
`ray start --address ...` as child processes this harness owns, on loopback.

Every node runs `ray start --block` in its own session, so stopping a node is a signal to
that session's process group: exactly the processes this harness started, never anyone
else's cluster (no `ray stop`). Fixed default ports (dashboard 8265, agent 52365, client
server 10001) are replaced by free ones so that clusters of other users on the machine
don't collide with this one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.runtime.ray_env import with_service_env
from tests.conftest import free_port, wait_until

RAY_CLI = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."


def _enable_token_auth_like_a_local_cluster() -> None:
    """`ray.init(address="local")` switches this process to token auth and creates
    ~/.ray/auth_token if missing; a driver joining an explicit address does neither. Do
    the same here so the nodes (which inherit the environment) and this driver agree."""
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )

    enable_token_auth_by_default()
    ensure_token_if_auth_enabled({}, create_token_if_missing=True)


@dataclass
class LocalNode:
    name: str
    process: subprocess.Popen
    log_path: Path
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's whole process group: raylet, its workers, agents (and, on
        the head, GCS): a machine failure, not a graceful drain. Test clusters are
        disposable, so this is also how they are stopped."""
        if self.killed:  # never signal a group id the system may have reused
            return
        self.killed = True
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        wait_until(lambda: not _group_exists(self.process.pid), 30, f"{self.name} to exit")


def _group_exists(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class LocalCluster:
    """Head with CPUs only (plus `head_resources`); workers added with `add_node`."""

    head_cpus: float = 2
    head_resources: dict[str, float] = field(default_factory=dict)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: list[LocalNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], attempts: int = 3) -> LocalNode:
        """Start a node and wait until `ray start` reports it up. On a loaded machine a
        raylet can miss Ray's fixed 30 s registration window and `ray start` exits: the
        attempt is cleaned up and repeated."""
        for attempt in range(1, attempts + 1):
            node = self._spawn(name, args)
            self.nodes.append(node)  # from now on, shutdown() stops it whatever happens
            wait_until(
                lambda: not node.alive or STARTED in node.log_path.read_text(),
                300,
                f"ray start of {name}",
            )
            if node.alive:
                return node
            node.kill()
            self.nodes.remove(node)
            if attempt == attempts:
                raise RuntimeError(f"{name} did not start:\n{node.log_path.read_text()[-3000:]}")
        raise AssertionError("unreachable")

    def _spawn(self, name: str, args: list[str]) -> LocalNode:
        log_path = self.temp_dir / f"{name}.log"
        command = [
            RAY_CLI,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            *args,
        ]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        with_service_env(env)  # what cluster.yaml's nodes start with
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return LocalNode(name, process, log_path)

    def start_head(self) -> LocalNode:
        _enable_token_auth_like_a_local_cluster()
        return self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                f"--resources={json.dumps(self.head_resources)}",
                # The state API (actor placement) is served by the dashboard.
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}",
            ],
        )

    def add_node(self, name: str, *, num_cpus: float, num_gpus: float) -> LocalNode:
        return self._start(
            name,
            [
                f"--address={self.address}",
                f"--num-cpus={num_cpus}",
                f"--num-gpus={num_gpus}",
                f"--temp-dir={self.temp_dir}",
            ],
        )

    def connect(self) -> None:
        """Join this cluster as the driver (the head is up: `start_head` waited for it)."""
        import ray

        ray.init(address=self.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
        if gcs_port != self.port:
            ray.shutdown()
            raise RuntimeError(f"joined the cluster at port {gcs_port}, not {self.port}")

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        import ray

        wait_until(
            lambda: sum(n["Alive"] for n in ray.nodes()) >= count, timeout_s, f"{count} nodes"
        )

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
