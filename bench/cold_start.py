"""Cold start of a model that scales to zero: how long its first request waits, and where.

    .venv/bin/python -m bench.cold_start                  # serve_config.yaml on 127.0.0.1:8300
    .venv/bin/python -m bench.cold_start --rounds 5 --warm 5

`serve run` of `serve_config.yaml` (the segmenter's scale-down made quick, nothing else
changed), then per round: wait until `/v1/models` says the model is `scaled_to_zero` and its
last replica is gone, and a random 0-10 s more; time one request (cold), then `--warm` requests
right after it (warm), and the same requests to the always-warm default model (reference). The
cold time is split with the Serve controller's and the new replica's own log lines. See
bench/README.md, "Cold start".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.service import BenchError, CpuMeter, parse_overrides
from bench.stats import mean, percentile
from tools.serve_process import (
    APP,
    ROOT,
    ServeProcess,
    http_json,
    load_config,
    named_item,
    on_loopback,
    run_main,
    session_pids,
    set_path,
    wait_for,
)

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "shapes-segmenter"
# Serve's replicas push their metrics every 10 s; a look-back window shorter than that can read
# an idle model as busy (or the reverse) from one stale push.
LOOK_BACK_S = 11.0
TIMEOUT_HEADER = "x-request-timeout-seconds"
COLD_TIMEOUT_S = 120  # the longest deadline the service accepts; a cold start must fit in it

# The phases of a cold request, in order, each from one event to the next (bench/README.md).
PHASES = (
    ("decide", "request sent -> controller decides to upscale from 0"),
    ("process", "-> replica process up (Ray worker start, imports)"),
    ("init", "-> replica initialised (constructor: weights, warm-up forward)"),
    ("running", "-> controller marks it RUNNING (initial health check)"),
    ("serve", "-> response received (routing, decode, forward, join)"),
)


def deployment_of(app: dict[str, Any], model: str) -> str:
    """The Serve deployment that runs `model` (`Model` for the default one, else `Model-<name>`)."""
    names = [m["name"] for m in app["args"]["models"]]
    if model not in names:
        raise BenchError(f"model {model!r} is not served (the config serves {names})")
    return "Model" if model == app["args"]["default_model"] else f"Model-{model}"


def cold_start_config(
    base: dict[str, Any],
    port: int,
    model: str = MODEL,
    downscale_delay_s: float = 2.0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`base` on a loopback port, with `model`'s idle replica let go after `downscale_delay_s`.

    Only the scale-down changes: the model must already scale to zero (`min_replicas: 0`), and
    its replica starts exactly as configured.
    """
    config = on_loopback(base, port)
    app = named_item(config["applications"], APP)
    deployment = named_item(app["deployments"], deployment_of(app, model))
    autoscaling = deployment.get("autoscaling_config") or {}
    if autoscaling.get("min_replicas") != 0:
        raise BenchError(
            f"{deployment['name']} does not scale to zero (autoscaling_config.min_replicas is "
            f"{autoscaling.get('min_replicas')!r}); measure a model with min_replicas: 0"
        )
    deployment["autoscaling_config"] = {
        **autoscaling,
        "downscale_delay_s": downscale_delay_s,
        "look_back_period_s": LOOK_BACK_S,
    }
    for dotted, value in (overrides or {}).items():
        set_path(config, dotted, value)
    return config


# --- Log lines -----------------------------------------------------------------------------------

# Serve's log format: "INFO 2026-11-25 21:43:11,933 controller 4593 -- message".
_LINE = re.compile(r"^[A-Z]+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ -- (.*)$")
_MODEL_READY = re.compile(r"ready on (\S+) in ([\d.]+) s")


@dataclass(frozen=True)
class LogEvent:
    at: float  # epoch seconds (the log's local time, as time.time() reads it)
    message: str


def parse_log(lines: Iterable[str]) -> list[LogEvent]:
    """Serve's log lines as events; other lines (tracebacks, prints) are skipped."""
    events = []
    for line in lines:
        m = _LINE.match(line.rstrip("\n"))
        if m:
            at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append(LogEvent(at, m.group(2)))
    return events


def _first(events: Sequence[LogEvent], after: float, *needles: str) -> LogEvent | None:
    for e in events:
        if e.at >= after and all(n in e.message for n in needles):
            return e
    return None


def cold_phases(
    sent: float,
    done: float,
    deployment: str,
    controller: Sequence[LogEvent],
    replica: Sequence[LogEvent],
) -> dict[str, Any]:
    """Split one cold request (`sent`..`done`, epoch seconds) at the events that log it.

    Controller: "Upscaling Deployment(name='<deployment>', ...) from 0", then "... started
    successfully"; the new replica: "Started initializing replica.", the Model's own
    "ready on <device> in <s> s" and "Finished initializing replica.". A phase whose end event
    is missing is None and the next one starts from the last event found, so the phases always
    add up to the whole.
    """
    tag = f"name='{deployment}'"
    # Log timestamps have millisecond resolution: allow the decision to be logged in the same
    # millisecond the request was sent.
    floor = sent - 0.001
    decide = _first(controller, floor, "Upscaling Deployment", tag, "from 0")
    begin = _first(replica, floor, "Started initializing replica")
    ready = _first(replica, floor, "ready on")
    finish = _first(replica, floor, "Finished initializing replica")
    running = _first(controller, floor, f"deployment='{deployment}'", "started successfully")
    marks = [decide, begin, finish, running]
    phases: dict[str, float | None] = {}
    last = sent
    for (name, _), event in zip(PHASES, marks, strict=False):
        if event is None or event.at > done:
            phases[name] = None
            continue
        phases[name] = max(0.0, event.at - last)
        last = max(last, event.at)
    phases["serve"] = done - last
    out: dict[str, Any] = {"phases_s": phases}
    if ready is not None:
        m = _MODEL_READY.search(ready.message)
        if m:
            out["model_ready_s"] = float(m.group(2))
            out["device"] = m.group(1)
    return out


# --- Summary and table ---------------------------------------------------------------------------


def summarise_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cold, warm and reference latencies over the rounds, and each phase's median."""
    cold = [r["cold_ms"] for r in rounds if r.get("cold_ms") is not None]
    warm = [ms for r in rounds for ms in r.get("warm_ms", [])]
    ref = [ms for r in rounds for ms in r.get("reference_ms", [])]
    phases = {}
    for name, _ in PHASES:
        values = [
            r["phases_s"][name] for r in rounds if r.get("phases_s", {}).get(name) is not None
        ]
        phases[name] = percentile(values, 50) if values else None
    ready = [r["model_ready_s"] for r in rounds if r.get("model_ready_s") is not None]

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "n": len(values),
            "p50": percentile(values, 50),
            "mean": mean(values),
            "min": min(values, default=float("nan")),
            "max": max(values, default=float("nan")),
        }

    return {
        "cold_ms": stats(cold),
        "warm_ms": stats(warm),
        "reference_ms": stats(ref),
        "cold_penalty_ms": percentile(cold, 50) - percentile(warm, 50),
        "phases_s_p50": phases,
        "model_ready_s_p50": percentile(ready, 50) if ready else None,
    }


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or value != value:
        return "–"
    return f"{value * scale:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The rounds and their medians as a Markdown table (what bench/README.md shows)."""
    head = (
        "| round | cold ms | decide | process | init (model) | running | serve | "
        "warm p50 ms | reference p50 ms | other cores |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]

    def row(label: str, cold: float | None, phases: dict[str, Any], model_s: Any, w: str) -> str:
        ph = [_cell(phases.get(n), 1000, 0) for n, _ in PHASES]
        ph[2] = f"{ph[2]} ({_cell(model_s, 1000, 0)})"
        return f"| {label} | {_cell(cold, 1, 0)} | " + " | ".join(ph) + " | " + w + " |"

    for r in result["rounds"]:
        w = (
            f"{_cell(percentile(r['warm_ms'], 50) if r['warm_ms'] else None)} | "
            f"{_cell(percentile(r['reference_ms'], 50) if r['reference_ms'] else None)} | "
            f"{_cell(r.get('other_cores'), 1, 2)}"
        )
        lines.append(row(str(r["round"]), r["cold_ms"], r["phases_s"], r.get("model_ready_s"), w))
    s = result["summary"]
    w = f"{_cell(s['warm_ms']['p50'])} | {_cell(s['reference_ms']['p50'])} | "
    lines.append(
        row("**median**", s["cold_ms"]["p50"], s["phases_s_p50"], s["model_ready_s_p50"], w)
    )
    lines.append("")
    lines.append(
        "Phases in ms, each from the previous event: "
        + "; ".join(f"{n}: {what}" for n, what in PHASES)
        + ". (model): the Model's own 'ready in' (weights + warm-up), part of init."
    )
    return "\n".join(lines)


# --- Measuring -----------------------------------------------------------------------------------


def ray_session_dir(sid: int) -> Path | None:
    """The session folder of the Ray that `serve run` (session leader `sid`) started."""
    for pid in session_pids(sid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith(b"--session_dir=") or arg.startswith(b"--session-dir="):
                return Path(arg.split(b"=", 1)[1].decode())
    return None


def read_logs(serve_logs: Path, deployment: str) -> tuple[list[LogEvent], list[LogEvent]]:
    """(controller, replicas of `deployment`) events from a session's logs/serve folder."""

    def events(pattern: str) -> list[LogEvent]:
        out: list[LogEvent] = []
        for path in sorted(serve_logs.glob(pattern)):
            out += parse_log(path.read_text(errors="replace").splitlines())
        return sorted(out, key=lambda e: e.at)

    return events("controller_[0-9]*.log"), events(f"replica_{APP}_{deployment}_*.log")


@dataclass
class Poller:
    """Polls `/v1/models` in a thread: when the model first reads `waking`, and replicas > 0."""

    url: str
    model: str
    headers: dict[str, str]
    every_s: float = 0.25
    seen: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    state = model_state(client.get(f"{self.url}/v1/models").json(), self.model)
                except (httpx.HTTPError, ValueError, KeyError):
                    state = None
                now = time.time()
                if state is not None:
                    self.seen.setdefault(f"state {state['state']}", now)
                    if state["replicas"] > 0:
                        self.seen.setdefault("replicas > 0", now)
                self._stop.wait(self.every_s)


def model_state(body: dict[str, Any], model: str) -> dict[str, Any]:
    """One model's entry of a `/v1/models` answer."""
    entry: dict[str, Any] = next(m for m in body["models"] if m["name"] == model)
    return entry


def predict(
    client: httpx.Client, url: str, model: str, image: bytes
) -> tuple[float, dict[str, Any]]:
    """One request to `model`; (client-side ms, answer). Anything but 200 stops the run."""
    t = time.perf_counter()
    r = client.post(
        f"{url}/v1/models/{model}/predict",
        content=image,
        headers={"content-type": "image/png", TIMEOUT_HEADER: str(COLD_TIMEOUT_S)},
    )
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise BenchError(f"{model} answered {r.status_code}: {r.text[:500]}")
    body: dict[str, Any] = r.json()
    return ms, body


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def run_round(
    n: int,
    service: ServeProcess,
    client: httpx.Client,
    args: Any,
    image: bytes,
    deployment: str,
    reference: str,
    headers: dict[str, str],
    serve_logs: Path | None,
    rng: random.Random,
) -> dict[str, Any]:
    url = service.url
    t = time.perf_counter()

    def at_zero() -> bool:
        status, body = http_json("GET", f"{url}/v1/models", timeout_s=10)
        if status != 200 or model_state(body, args.model)["state"] != "scaled_to_zero":
            return False
        # The last replica gone, not only not RUNNING: a stopping one still holds a core.
        details = service.serve_details()
        if details is None:
            return True
        deployments = details.get("applications", {}).get(APP, {}).get("deployments", {})
        return not deployments.get(deployment, {}).get("replicas")

    wait_for(at_zero, args.zero_timeout_s, f"{args.model} to scale to zero", every_s=0.5)
    to_zero_s = time.perf_counter() - t
    # Serve acts on handle metrics pushed every `metrics_interval_s` (10 s), and the scale-down
    # that ends the wait above is itself timed by a push: sent at once, every round's request
    # would arrive at the same point of that cycle. A user's request arrives at any point.
    offset_s = rng.uniform(0.0, args.spread_s)
    time.sleep(offset_s)
    meter = CpuMeter(service.proc.pid if service.proc else None)
    poller = Poller(url, args.model, headers)
    poller.start()
    before = meter.snapshot()
    sent = time.time()
    cold_ms, answer = predict(client, url, args.model, image)
    done = time.time()
    cpu = CpuMeter.delta(before, meter.snapshot())
    poller.stop()
    warm = [predict(client, url, args.model, image)[0] for _ in range(args.warm)]
    ref = [predict(client, url, reference, image)[0] for _ in range(args.warm)]
    record: dict[str, Any] = {
        "round": n,
        "waited_for_zero_s": to_zero_s,
        "sent_after_zero_s": offset_s,
        "cold_ms": cold_ms,
        "cold_task": answer.get("task"),
        "cold_server_ms": answer.get("timings_ms", {}),
        "warm_ms": warm,
        "reference_ms": ref,
        # Cores busy with anything but this service and this client while the cold request ran.
        "other_cores": cpu["other_s"] / cpu["wall_s"] if cpu["wall_s"] else None,
        "machine_busy_cores": cpu["machine_busy_s"] / cpu["wall_s"] if cpu["wall_s"] else None,
        "service_cpu_s": cpu["service_s"],
        "polled": {k: v - sent for k, v in sorted(poller.seen.items(), key=lambda kv: kv[1])},
        "phases_s": {name: None for name, _ in PHASES},
    }
    if serve_logs is not None:
        # Serve writes the controller's "started successfully" line after the request may
        # already be answered; give its log a moment.
        for _ in range(10):
            controller, replica = read_logs(serve_logs, deployment)
            split = cold_phases(sent, done, deployment, controller, replica)
            if split["phases_s"]["running"] is not None:
                break
            time.sleep(0.5)
        record.update(split)
    return record


def _print_round(r: dict[str, Any]) -> None:
    ph = ", ".join(f"{k} {_cell(v, 1000, 0)}" for k, v in r["phases_s"].items())
    print(
        f"round {r['round']}: cold {r['cold_ms']:.0f} ms ({ph}; model ready in "
        f"{_cell(r.get('model_ready_s'))} s), warm p50 {percentile(r['warm_ms'], 50):.1f} ms, "
        f"reference p50 {percentile(r['reference_ms'], 50):.1f} ms, other cores "
        f"{_cell(r['other_cores'], 1, 2)} (waited {r['waited_for_zero_s']:.0f} s for zero, "
        f"then {r['sent_after_zero_s']:.1f} s)",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the first request to a model at zero replicas, and the warm ones after."
    )
    parser.add_argument("--port", type=int, default=8300, help="loopback port for serve run")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--model", default=MODEL, help="the model that scales to zero")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm", type=int, default=5, help="warm requests after each cold one")
    parser.add_argument(
        "--downscale-delay-s",
        type=float,
        default=2.0,
        help="idle seconds before the model's replica is let go (serve_config.yaml: 300)",
    )
    parser.add_argument(
        "--spread-s",
        type=float,
        default=10.0,
        help="send each cold request a random 0..S s after the model reached zero (seeded), "
        "so requests do not all meet Serve's 10 s metrics push at the same point",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zero-timeout-s", type=float, default=180.0)
    parser.add_argument("--image", default="640x480", help="WxH of the generated PNG sent")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DOTTED=YAML",
        help="override the generated config (as bench.run's --set; repeatable)",
    )
    parser.add_argument("--label", help="results name (default cold_start-cpu-<N>core)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the service, time `--rounds` cold starts (each followed by warm requests), write the
    JSON and the Markdown table."""
    from shapes.generate import generate  # imported late: it pulls in numpy and Pillow

    args = parse_args(argv)
    started = time.perf_counter()
    label = args.label or f"cold_start-cpu-{os.cpu_count()}core"
    overrides = parse_overrides(args.set)
    base = load_config(args.config)
    config = cold_start_config(base, args.port, args.model, args.downscale_delay_s, overrides)
    app = named_item(config["applications"], APP)
    width, height = (int(v) for v in args.image.lower().split("x"))
    image = generate(7, width=width, height=height, fmt="PNG", orientation=1).data
    meta = run_meta(args, label, app, overrides, width, height, len(image))
    print(f"cold start: {label}, {meta['command']}\n  {meta['uptime_start']}", flush=True)
    rounds = run_rounds(config, args, meta, image)
    meta["uptime_end"] = _uptime()
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.perf_counter() - started
    write_results({"meta": meta, "rounds": rounds, "summary": summarise_rounds(rounds)}, args.out)
    return 0


def run_meta(
    args: argparse.Namespace,
    label: str,
    app: dict[str, Any],
    overrides: dict[str, Any],
    width: int,
    height: int,
    image_bytes: int,
) -> dict[str, Any]:
    """What the run is: command, model and its deployment, the image sent, the settings."""
    return {
        "label": label,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.cold_start", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": _git_commit(),
        "model": args.model,
        "deployment": deployment_of(app, args.model),
        "reference": app["args"]["default_model"],
        "image": {"width": width, "height": height, "format": "PNG", "bytes": image_bytes},
        "overrides": {
            "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": LOOK_BACK_S,
            **overrides,
        },
        "spread_s": args.spread_s,
        "seed": args.seed,
        "uptime_start": _uptime(),
        "loadavg_start": os.getloadavg(),
    }


def run_rounds(
    config: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any], image: bytes
) -> list[dict[str, Any]]:
    """`serve run` the config, then each round: wait for zero replicas, one cold request, the
    warm ones; the service is stopped whatever happens."""
    key = os.environ.get("VISION_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        service = ServeProcess(config, Path(tmp), args.port, health_path="/v1/health/ready")
        try:
            t = time.perf_counter()
            print(f"starting serve run on port {args.port} …", flush=True)
            service.start()
            meta["startup_s"] = time.perf_counter() - t
            session = ray_session_dir(service.proc.pid) if service.proc else None
            serve_logs = session / "logs" / "serve" if session else None
            if serve_logs is None:
                print("  Ray's session folder not found: the cold time is not split")
            print(f"up in {meta['startup_s']:.0f} s", flush=True)
            rng = random.Random(args.seed)
            with httpx.Client(headers=headers, timeout=COLD_TIMEOUT_S + 10) as client:
                for n in range(1, args.rounds + 1):
                    r = run_round(
                        n,
                        service,
                        client,
                        args,
                        image,
                        meta["deployment"],
                        meta["reference"],
                        headers,
                        serve_logs,
                        rng,
                    )
                    _print_round(r)
                    rounds.append(r)
        finally:
            t = time.perf_counter()
            service.stop()
            print(f"serve run stopped ({time.perf_counter() - t:.0f} s)")
    return rounds


def write_results(result: dict[str, Any], out: Path) -> None:
    """`<label>.json` and `<label>.md`; the table printed."""
    meta = result["meta"]
    label = meta["label"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(result, indent=2, default=float))
    (out / f"{label}.md").write_text(
        f"# Cold start of {meta['model']}\n\n`{meta['command']}` at {meta['started']} "
        f"(commit {meta['commit']})\n\nuptime before: `{meta['uptime_start']}`  \n"
        f"uptime after: `{meta['uptime_end']}`\n\n{table(result)}\n"
    )
    print()
    print(table(result))
    print(f"\n  {meta['uptime_end']}")
    print(f"wrote {out / (label + '.json')}, {label}.md; wall time {meta['wall_s']:.0f} s")


def entry() -> int:
    return run_main(main, "cold start")


if __name__ == "__main__":
    raise SystemExit(entry())
