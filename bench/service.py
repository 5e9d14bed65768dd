"""Benchmark-specific parts of running a service: its config, the LitServe peer, CPU accounting.

Starting and stopping `serve run` itself is `tools.serve_process`, shared with the evaluation,
chaos and the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools.serve_process import (
    APP,
    ServeError,
    default_model_spec,
    http_json,
    launch,
    named_item,
    on_loopback,
    port_in_use,
    process_role,
    read_stat,
    serve_one_model,
    set_path,
    stop_session,
    wait_for,
)

# channels_last: a ResNet-18 batch-1 pass in a CPU replica 43.6 -> 37.3 ms, batch 8 unchanged;
# every system measured (raw, graph, peers) builds its model from this same spec.
BENCH_MODEL = {"name": "resnet18", "weights": "none", "seed": 0, "channels_last": True}
BENCH_MODEL_NAME = "resnet18"  # what the graph serves it as (its one model, the default)
_CLK = os.sysconf("SC_CLK_TCK")


class BenchError(ServeError):
    """Something about the benchmark's options or environment stops it; the message says what."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set DOTTED=YAML` arguments as {dotted path: value} for `set_path`."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"--set needs DOTTED=VALUE; got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def bench_config(
    base: dict[str, Any],
    port: int,
    model_user_config: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`serve_config.yaml` with the benchmark's model, a loopback port and a Model user_config."""
    config = on_loopback(base, port)
    app = named_item(config["applications"], APP)
    serve_one_model(app, {**default_model_spec(app), **BENCH_MODEL}, BENCH_MODEL_NAME)
    model = named_item(app["deployments"], "Model")
    model["user_config"] = {**model.get("user_config", {}), **(model_user_config or {})}
    for dotted, value in (overrides or {}).items():
        set_path(config, dotted, value)
    return config


def model_name(config: dict[str, Any]) -> str:
    """The model (torchvision name or factory) that the benchmark's config builds."""
    app = named_item(config["applications"], APP)
    return str(app["args"]["models"][0]["model"]["name"])


def wait_started(
    name: str,
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    stop: Callable[[], None],
    what: str,
) -> None:
    """Wait for a peer started by `launch` until `probe()`; if it exits or the wait runs out,
    stop it and raise with its log's tail."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise ServeError(f"{name} exited with status {proc.returncode}")
        return probe()

    try:
        wait_for(ready, timeout_s, what)
    except ServeError as exc:
        tail = log_path.read_text(errors="replace")[-3000:]
        stop()
        raise ServeError(f"{exc}; {name} log tail:\n{tail}") from None


@dataclass
class LitServeProcess:
    """The LitServe peer (`python -m bench.peers.litserve_app`) in a session of its own."""

    config: dict[str, Any]  # the graph's generated config: the peer takes its model args
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "litserve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> None:
        if port_in_use(self.port):
            raise ServeError(f"port {self.port} is already in use on 127.0.0.1")
        path = self.workdir / "litserve_config.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [sys.executable, "-m", "bench.peers.litserve_app", "--config", str(path)]
        began = time.perf_counter()
        self.proc = launch([*cmd, "--port", str(self.port)], self.log_path, {})

        def healthy() -> bool:
            status, _ = http_json("GET", f"{self.url}/health", timeout_s=5)
            return status == 200

        wait_started(
            "LitServe",
            self.proc,
            healthy,
            timeout_s,
            self.log_path,
            self.stop,
            f"LitServe to answer on {self.url}/health",
        )
        self.started_s = time.perf_counter() - began

    def stop(self) -> None:
        # LitServe's launcher can sit on Ctrl-C for a long while; it holds no state worth waiting
        # for here, so its processes get a short grace before SIGKILL.
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_session(proc, leader_s=10.0, group_s=5.0)


# `/proc/<pid>/comm` the LitServe peer's inference worker gives itself (bench/peers/litserve_app).
LITSERVE_WORKER_COMM = "bench-lsworker"


def litserve_role(pid: int, sid: int) -> str:
    """LitServe's processes: the inference worker (it renames itself), the launcher, the rest."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    if comm == LITSERVE_WORKER_COMM:
        return "LitServe worker"
    if pid == sid:
        return "LitServe main"
    return "LitServe API server/queues"


TORCHSERVE_MODEL = "classifier"


def torchserve_available() -> bool:
    """Whether the TorchServe peer can run here: its packages and a Java runtime."""
    import importlib.util
    import shutil

    java = os.environ.get("JAVA_HOME")
    has_java = bool(shutil.which("java")) or bool(java and Path(java, "bin", "java").exists())
    return has_java and all(
        importlib.util.find_spec(m) is not None for m in ("ts", "model_archiver")
    )


def torchserve_properties(port: int, model_store: Path, mar: str) -> str:
    """TorchServe's config.properties: loopback only, no token, 1 worker, batch 8 within 10 ms.

    Every listener TorchServe opens is on 127.0.0.1 next to `port` (its gRPC defaults, 7070 and
    7071, would collide with anything else on the machine); its once-a-minute system-metrics
    collector is off (monitoring, not serving).
    """
    model = {
        "1.0": {
            "defaultVersion": True,
            "marName": mar,
            "minWorkers": 1,
            "maxWorkers": 1,
            "batchSize": 8,
            "maxBatchDelay": 10,
            "responseTimeout": 120,
        }
    }
    props = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port + 1}",
        "metrics_address": f"http://127.0.0.1:{port + 2}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": port + 3,
        "grpc_management_port": port + 4,
        "model_store": str(model_store),
        "load_models": mar,
        "models": json.dumps({TORCHSERVE_MODEL: model}),
        "disable_token_authorization": "true",
        "default_workers_per_model": 1,
        "job_queue_size": 1000,
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


@dataclass
class TorchServeProcess:
    """The TorchServe peer (`torchserve --foreground`) in a session of its own."""

    config: dict[str, Any]  # the graph's generated config: the peer takes its model args
    workdir: Path
    port: int
    app: str = APP
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "torchserve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def archive(self) -> tuple[Path, str]:
        """The model archive: the handler plus the graph's args (no weights: seeded like all)."""
        store = self.workdir / "torchserve-store"
        store.mkdir(exist_ok=True)
        args_path = self.workdir / "app_args.json"
        app = named_item(self.config["applications"], self.app)
        args_path.write_text(json.dumps(app["args"]))
        handler = Path(__file__).resolve().parent / "peers" / "torchserve_handler.py"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model_archiver.model_packaging",
                "--model-name",
                TORCHSERVE_MODEL,
                "--version",
                "1.0",
                "--handler",
                str(handler),
                "--extra-files",
                str(args_path),
                "--export-path",
                str(store),
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        return store, f"{TORCHSERVE_MODEL}.mar"

    def start(self, timeout_s: float = 300.0) -> None:
        for p in range(self.port, self.port + 5):
            if port_in_use(p):
                raise ServeError(f"port {p} is already in use on 127.0.0.1 (TorchServe needs 5)")
        store, mar = self.archive()
        props = self.workdir / "torchserve.properties"
        props.write_text(torchserve_properties(self.port, store, mar))
        ts = Path(sys.executable).with_name("torchserve")
        cmd = [str(ts), "--foreground", "--ncs", "--ts-config", str(props)]
        cmd += ["--model-store", str(store), "--disable-token-auth"]
        logs = self.workdir / "torchserve-logs"
        # Its logs, metrics and pid file go to the work folder, not the repo or /tmp.
        env = {"LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs), "TMPDIR": str(logs)}
        logs.mkdir(exist_ok=True)
        began = time.perf_counter()
        self.proc = launch(cmd, self.log_path, env)
        describe = f"http://127.0.0.1:{self.port + 1}/models/{TORCHSERVE_MODEL}"

        def ready() -> bool:
            status, info = http_json("GET", describe, timeout_s=5)
            workers = info[0].get("workers", []) if status == 200 and info else []
            return any(w.get("status") == "READY" for w in workers)

        wait_started(
            "TorchServe",
            self.proc,
            ready,
            timeout_s,
            self.log_path,
            self.stop,
            f"TorchServe's worker to be READY at {describe}",
        )
        self.started_s = time.perf_counter() - began

    def stop(self) -> None:
        # The launcher exits on SIGINT but leaves Java running, in its own group: signal the group
        # almost at once (Java's shutdown hook stops the worker) rather than wait on the leader.
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_session(proc, leader_s=1.0, group_s=15.0)


def torchserve_role(pid: int, sid: int) -> str:
    """TorchServe's processes: the Java frontend, the Python backend worker, the launcher."""
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "gone"
    if "model_service_worker" in cmd:
        return "TorchServe worker"
    if "org.pytorch.serve.ModelServer" in cmd:
        return "TorchServe frontend (Java)"
    return "TorchServe main" if pid == sid else "TorchServe other"


# --- CPU accounting from /proc ------------------------------------------------------------------


def system_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _CLK, total / _CLK


@dataclass
class CpuSnapshot:
    at: float
    by_pid: dict[int, tuple[str, float]]
    busy_s: float
    total_s: float
    self_s: float


class CpuMeter:
    """CPU seconds per role in the service's session, the client's own, and the machine's."""

    def __init__(self, sid: int | None, role: Callable[[int, int], str] | None = None) -> None:
        self.sid = sid
        self.role = role or (lambda pid, _sid: process_role(pid))

    def snapshot(self) -> CpuSnapshot:
        by_pid: dict[int, tuple[str, float]] = {}
        if self.sid is not None:
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                stat = read_stat(pid)
                if stat is None or stat[1] != self.sid:
                    continue
                by_pid[pid] = (self.role(pid, self.sid), stat[2])
        busy, total = system_cpu_s()
        times = os.times()
        return CpuSnapshot(time.perf_counter(), by_pid, busy, total, times.user + times.system)

    @staticmethod
    def delta(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, Any]:
        """CPU seconds per role between two snapshots, plus the client's and everyone else's."""
        roles: dict[str, float] = {}
        for pid, (role, cpu) in b.by_pid.items():
            before = a.by_pid.get(pid, (role, 0.0))[1]
            roles[role] = roles.get(role, 0.0) + max(0.0, cpu - before)
        service = sum(roles.values())
        client = b.self_s - a.self_s
        busy = b.busy_s - a.busy_s
        wall = b.at - a.at
        return {
            "wall_s": wall,
            "service_s": service,
            "client_s": client,
            "machine_busy_s": busy,
            "machine_total_s": b.total_s - a.total_s,
            "other_s": max(0.0, busy - service - client),
            "by_role_s": dict(sorted(roles.items(), key=lambda kv: -kv[1])),
        }
