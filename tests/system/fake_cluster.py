"""A local Ray cluster whose autoscaler adds and removes fake nodes (Ray's fake multi-node
provider).

Ray's own `AutoscalingCluster` runs `ray stop --force`, which ends every Ray process on the
machine; this one starts the head itself and, when done, stops only the processes of its own
session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray

RAY = Path(sys.executable).parent / "ray"
GCS_PORT = 6390


def autoscaling_config(
    head_cpus: int, gpu_node: dict[str, Any], max_gpu_nodes: int, gcs: str
) -> dict[str, Any]:
    return {
        "cluster_name": "vision-fake",
        "max_workers": max_gpu_nodes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus},
                "node_config": {},
                "max_workers": 0,
            },
            "gpu_worker": {
                "resources": gpu_node,
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_gpu_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s: quick scale-down for the test
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    def __init__(
        self, workdir: Path, head_cpus: int, gpu_node: dict[str, Any], max_gpu_nodes: int
    ) -> None:
        self.address = f"{ray.util.get_node_ip_address()}:{GCS_PORT}"
        self._workdir = workdir
        self._config = autoscaling_config(head_cpus, gpu_node, max_gpu_nodes, self.address)
        self._head_cpus = head_cpus
        self.session_name = ""

    def start(self, env: dict[str, str]) -> None:
        config = self._workdir / "autoscaling.json"
        config.write_text(json.dumps(self._config))
        command = [
            str(RAY),
            "start",
            "--head",
            f"--port={GCS_PORT}",
            f"--num-cpus={self._head_cpus}",
            "--num-gpus=0",
            f"--autoscaling-config={config}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            # The GCS finds a lost node in about 3 s, not Ray's default 15 s (5 missed checks 3 s
            # apart): a timeout of 2 s and 3 misses still ride out a busy 2-core machine.
            "--system-config="
            + json.dumps(
                {
                    "health_check_period_ms": 1000,
                    "health_check_timeout_ms": 2000,
                    "health_check_failure_threshold": 3,
                }
            ),
        ]
        full_env = {
            **os.environ,
            **env,
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_FAKE_CLUSTER": "1",
        }
        subprocess.run(command, env=full_env, check=True, capture_output=True)
        ray.init(address=self.address, log_to_driver=False)
        # The session name is in the command line of every process of this cluster, workers too.
        self.session_name = ray.get_runtime_context().get_session_name()

    def stop(self) -> None:
        ray.shutdown()
        if self.session_name:
            _terminate_session(self.session_name)
        # `ray start` recorded this cluster for `ray.init()` to find; forget it as `ray stop` does.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip() == self.address:
            current.unlink()

    def lose_node(self, node_id: str) -> int:
        """SIGKILL a worker node's raylet and agents, as a machine that vanishes: no drain, no
        goodbye to the GCS. Its workers exit once their raylet is gone. Returns how many
        processes were killed."""
        killed = 0
        for flag in (f"--node_id={node_id}", f"--node-id={node_id}"):
            for pid in _session_pids(self.session_name, also=flag):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed


def _session_pids(session_name: str, also: str = "") -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if session_name.encode() in cmdline and also.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def _terminate_session(session_name: str) -> None:
    """SIGTERM, then SIGKILL for what still runs 2 s later: the cluster is thrown away, so a
    process need not finish anything (most exit at once; a few would take 10 s and more)."""
    for sig, grace_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
        for pid in _session_pids(session_name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while _session_pids(session_name) and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for processes to exit, with a deadline
