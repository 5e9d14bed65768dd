"""`make chaos`: mixed load against the real graph while replicas of every stage are SIGKILLed.

    .venv/bin/python -m scripts.chaos [--seconds 180] [--seed 9] [--port 8200] [--json PATH]

Starts `serve run` on 127.0.0.1 only (tools.serve_process.ServeProcess, its own session, stopped
cleanly) from `serve_config.yaml` with the `echo` test model, whose top-3 labels spell each
image's mean colour, and two replicas of every stage. For `--seconds` it sends single images,
multipart requests of 2-8 images, a few bad images (truncated JPEG, garbage bytes) and some
requests with short deadlines; every good image has a colour no other image in the run has. A
seeded killer SIGKILLs one replica process every 10-20 s, cycling through Ingress,
Preprocessor, Model and Postprocessor, only while that stage has both replicas running. Two
rolling deploys go to the running app meanwhile (what `serve deploy` does, through the
dashboard's REST API), at 25 % and 50 % of the run: a hot change (the Model's `max_batch_size`,
a `user_config`) and a builder-arg change (`request_timeout_s`, which restarts every replica).
A third rolls out new weights, at 75 %: the echo model's checkpoint with another value, under
the next model version. Every answer names the model version that produced it; a 200 whose
images name two versions is judged "mixed" (the bar is 0). Each fault is reported with the
images lost, misjoined or answered unexpectedly by the requests in flight from it until it
recovered (a killed stage running two replicas again; a deploy's app RUNNING with every
deployment HEALTHY), and that recovery time.

Each image sent is judged:

- ok: a 200 answer naming its colour (a bad image's clear 4xx counts as ok too);
- clear: a 503 or 504 (with a body saying why) for a good image: the client knows to retry; or
  Serve's proxy's 408 for a request with a short deadline (the proxy timed it out first);
- unexpected: any other answer (a 500 or 502 from Serve's proxy, a 200 for a bad image, a good
  image refused as poison, ...), reported with the stages killed while it was in flight;
- lost: no HTTP answer at all (connection error, client timeout);
- missing: a 200 that has no answer for this image;
- misjoined: a 200 whose answer names another colour.

The bar is 0 lost, 0 missing and 0 misjoined; the exit status is 1 when it is missed. Lost items
are also split by whether an Ingress kill happened while they were in flight. A JSON summary goes
to artifacts/chaos.json.

    .venv/bin/python -m scripts.chaos --deploys-only [--seconds 240] [--concurrency 16]

kills nothing and sends only good images with the default deadline, 16 in flight, while each of
the three rolling deploys goes in twice (at 12 % to 82 % of the run, each after the last one has
settled). The bar: every image answered 200 with its own colour, none mixed
(artifacts/chaos_deploys.json).

    .venv/bin/python -m scripts.chaos --client [--images 480] [--concurrency 16]

runs the project's own client instead: `python -m vision_client` over a folder of `--images`
solid PNGs (a colour each), `--concurrency` in flight, while an Ingress replica, then a Model
replica, then an Ingress replica again are SIGKILLed as 15 %, 45 % and 75 % of the images have
been answered (each once its stage runs two replicas). The echo model takes `--delay` seconds per
forward pass, so the run lasts long enough for the three kills. The bar: the client exits 0, and
every image is answered 200 with its own colour. It prints the answers, the resends (images the
client sent more than once), each kill's recovery time (until its stage runs two replicas again),
and writes artifacts/chaos_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tools.echo import colour_in

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("Ingress", "Preprocessor", "Model", "Postprocessor")
ECHO = {"name": "tools.echo_model:echo", "weights": "none", "seed": 0, "torch_threads": 1}
# Logical CPUs per replica: two replicas of each stage ask for 1.5 in all on a 2-core machine.
NUM_CPUS = {"Ingress": 0.1, "Preprocessor": 0.25, "Model": 0.3, "Postprocessor": 0.1}
Colour = tuple[int, int, int]

# --- pure helpers (unit-tested without Ray) -----------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One request: its images (a colour, or None for a bad image) and its deadline, if short."""

    kind: str  # "single" or "multipart"
    colours: tuple[Colour | None, ...]
    bad: tuple[str, ...]  # per image: "" for a good one, else "truncated_jpeg" / "garbage"
    deadline_s: float | None = None


class Planner:
    """Seeded request mix; every good image gets a colour never used before in the run."""

    def __init__(
        self,
        seed: int,
        p_multipart: float = 0.3,
        p_bad: float = 0.04,
        p_short_deadline: float = 0.1,
        short_deadline_s: tuple[float, float] = (0.05, 0.5),
    ) -> None:
        self.rng = random.Random(seed)
        self.used: set[Colour] = set()
        self.p_multipart = p_multipart
        self.p_bad = p_bad
        self.p_short_deadline = p_short_deadline
        self.short_deadline_s = short_deadline_s

    def colour(self) -> Colour:
        while True:
            c = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
            if c not in self.used:
                self.used.add(c)
                return c

    def next(self) -> Planned:
        rng = self.rng
        multipart = rng.random() < self.p_multipart
        n = rng.randint(2, 8) if multipart else 1
        colours: list[Colour | None] = []
        bad: list[str] = []
        for _ in range(n):
            if rng.random() < self.p_bad:
                colours.append(None)
                bad.append(rng.choice(("truncated_jpeg", "garbage")))
            else:
                colours.append(self.colour())
                bad.append("")
        deadline = None
        if rng.random() < self.p_short_deadline:
            deadline = round(rng.uniform(*self.short_deadline_s), 3)
        kind = "multipart" if multipart else "single"
        return Planned(kind, tuple(colours), tuple(bad), deadline)


def solid_png(colour: Colour, width: int = 48, height: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def bad_image(kind: str, rng: random.Random) -> bytes:
    """Bytes the service must refuse with a 4xx: a JPEG cut short, or bytes of no format."""
    if kind == "truncated_jpeg":
        buf = io.BytesIO()
        img = Image.effect_noise((64, 48), 60).convert("RGB")
        img.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        return data[: len(data) // 2]
    return bytes(rng.randrange(256) for _ in range(512))


@dataclass(frozen=True)
class Verdict:
    verdict: str  # ok / clear / unexpected / lost / missing / misjoined / mixed
    status: int | None  # the item's status (a multipart entry's own), None without an answer
    code: str  # the error code, "ok", "proxy" (a non-JSON error body) or the exception's name
    version: str = ""  # a 200's: the model version its answer names


def _error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", "?"))
    return "proxy"  # not our error body: Serve's proxy (or something before it) answered


def judge_item(colour: Colour | None, status: int, answer: Any, deadline: bool = False) -> Verdict:
    """One image's answer: `answer` is the single-image body or the multipart entry.

    `deadline`: the request asked for a deadline. Serve's proxy times such a request out with
    its own 408 when it runs out first (short deadlines, a busy machine): a clear answer too.
    """
    if status == 200:
        if colour is None:
            return Verdict("unexpected", 200, "bad_image_answered")
        named = colour_in(answer.get("predictions")) if isinstance(answer, dict) else None
        if named is None:
            return Verdict("missing", 200, "no_predictions")
        version = str(answer.get("model_version", ""))
        return Verdict("ok" if named == colour else "misjoined", 200, "ok", version)
    code = _error_code(answer)
    # A bad image: a clear 4xx from us is the right answer.
    if colour is None and 400 <= status < 500 and code not in ("proxy", "poison_image"):
        return Verdict("ok", status, code)
    if status in (503, 504) and code != "proxy":
        return Verdict("clear", status, code)
    if status == 408 and deadline:
        return Verdict("clear", status, code)
    return Verdict("unexpected", status, code)


def judge(planned: Planned, status: int | None, body: Any, exc: str = "") -> list[Verdict]:
    """A verdict per image of one request, in order."""
    n = len(planned.colours)
    if status is None:
        return [Verdict("lost", None, exc or "no_answer")] * n
    deadline = planned.deadline_s is not None
    if planned.kind == "single" or status != 200:
        # A single image, or a multipart request that failed as a whole: its images share it.
        return [judge_item(c, status, body, deadline) for c in planned.colours]
    results = body.get("results") if isinstance(body, dict) else None
    results = results if isinstance(results, list) else []
    out = []
    for i, colour in enumerate(planned.colours):
        if i >= len(results):
            out.append(Verdict("missing", 200, "no_entry"))
            continue
        entry = results[i]
        error = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(error, dict):
            out.append(judge_item(colour, int(error.get("status", 0)), entry))
        else:
            out.append(judge_item(colour, 200, entry))
    if len(results) > n:  # answers for images never sent: a join gone wrong
        out.extend([Verdict("misjoined", 200, "extra_entry")] * (len(results) - n))
    # One request, one model version: answers from two versions in one 200 are all "mixed".
    if len({v.version for v in out if v.status == 200 and v.code == "ok"}) > 1:
        out = [
            Verdict("mixed", 200, "mixed_versions", v.version) if v.status == 200 else v
            for v in out
        ]
    return out


def plan_kills(
    seed: int, seconds: float, gap_s: tuple[float, float] = (10.0, 20.0), first_s: float = 5.0
) -> list[tuple[float, str]]:
    """(seconds after the load starts, stage) for each kill: seeded gaps, every stage in turn
    (a fresh seeded order each round), none in the last `gap_s[0]` seconds of the run."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    t = first_s + rng.uniform(0, gap_s[0])
    order: list[str] = []
    while t < seconds - gap_s[0]:
        if not order:
            order = list(STAGES)
            rng.shuffle(order)
        out.append((round(t, 2), order.pop(0)))
        t += rng.uniform(*gap_s)
    return out


DEPLOYS = ((0.25, "deploy user_config"), (0.5, "deploy args"), (0.75, "deploy weights"))
# `--deploys-only`: each kind twice, no kills, only good images without short deadlines.
DEPLOYS_ONLY = tuple(
    (round(0.12 + 0.14 * i, 2), change) for i, (_, change) in enumerate(DEPLOYS + DEPLOYS)
)


def write_weights(folder: Path, version: str) -> Path:
    """A checkpoint of the echo model whose one weight is `version` (a number): new weights."""
    import torch

    from tools.echo_model import echo

    model = echo()
    model.generation.fill_(float(version))
    path = folder / f"echo-v{version}.pt"
    torch.save(model.state_dict(), path)
    return path.resolve()


def deployed_config(
    config: dict[str, Any], change: str, weights_dir: Path | None = None
) -> dict[str, Any]:
    """`config` with one rolling change: the Model's batch size (hot), a builder arg, or new
    weights under the next model version (written to `weights_dir`)."""
    import copy

    changed = copy.deepcopy(config)
    app = changed["applications"][0]
    if change == "deploy user_config":
        (model,) = [d for d in app["deployments"] if d["name"] == "Model"]
        batching = model.setdefault("user_config", {})
        batching["max_batch_size"] = 4 if batching.get("max_batch_size", 8) != 4 else 8
    elif change == "deploy weights":
        (served,) = app["args"]["models"]
        served["version"] = str(int(served.get("version", "1")) + 1)
        folder = weights_dir or ROOT / "artifacts"
        served["model"]["weights"] = str(write_weights(folder, served["version"]))
    else:
        app["args"]["request_timeout_s"] = float(app["args"].get("request_timeout_s", 30)) + 1
    return changed


def per_fault(records: Sequence[Record], faults: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fault with what the requests in flight between it and its recovery got: images
    lost (no answer or missing from a 200), misjoined and unexpected."""
    out = []
    for fault in faults:
        start = fault["t"]
        end = start + (fault.get("recovered_after_s") or 0.0)
        counts: Counter[str] = Counter()
        for r in records:
            if r.start <= end and r.end >= start:
                counts.update(v.verdict for v in r.verdicts)
        out.append(
            {
                "t": start,
                "fault": fault["stage"],
                "recovered_after_s": fault.get("recovered_after_s"),
                "lost": counts["lost"] + counts["missing"],
                "misjoined": counts["misjoined"],
                "unexpected": counts["unexpected"],
                "images_in_flight": sum(counts.values()),
            }
        )
    return out


def kills_during(kills: Iterable[dict[str, Any]], start: float, end: float) -> list[str]:
    """Faults while a request was in flight ("Ingress kill", "deploy args"; fault times and the
    window on one clock)."""
    return sorted(
        {
            f"{k['stage']} kill" if k["stage"] in STAGES else k["stage"]
            for k in kills
            if start <= k["t"] <= end
        }
    )


@dataclass
class Record:
    planned: Planned
    start: float
    end: float
    status: int | None
    verdicts: list[Verdict]
    request_id: str = ""


def summarise(
    records: Sequence[Record], kills: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The counts `make chaos` prints and writes; `passed` is the bar (0 lost/missing/misjoined)."""
    statuses = Counter(str(r.status) if r.status is not None else "no answer" for r in records)
    items = [v for r in records for v in r.verdicts]
    verdicts = Counter(v.verdict for v in items)
    item_status = Counter(
        f"{v.status} {v.code}" if v.status is not None else f"no answer ({v.code})" for v in items
    )
    lost_by_cause: Counter[str] = Counter()
    unexpected_by_cause: Counter[str] = Counter()
    for r in records:
        during = kills_during(kills, r.start, r.end)
        cause = "+".join(during) + " in flight" if during else "no fault in flight"
        for v in r.verdicts:
            if v.verdict == "lost":
                lost_by_cause[cause] += 1
            elif v.verdict == "unexpected":
                unexpected_by_cause[f"{v.status} {v.code}, {cause}"] += 1
    lost = verdicts["lost"] + verdicts["missing"]
    by_kind = Counter(r.planned.kind for r in records)
    versions = Counter(v.version for v in items if v.status == 200 and v.code == "ok")
    return {
        "requests": len(records),
        "requests_by_kind": dict(by_kind),
        "short_deadline_requests": sum(1 for r in records if r.planned.deadline_s is not None),
        "statuses": dict(sorted(statuses.items())),
        "images": len(items),
        "bad_images": sum(1 for r in records for b in r.planned.bad if b),
        "item_verdicts": {k: verdicts[k] for k in ("ok", "clear", "unexpected")},
        "item_statuses": dict(sorted(item_status.items())),
        "lost": lost,
        "lost_no_answer": verdicts["lost"],
        "lost_missing_in_200": verdicts["missing"],
        "lost_by_cause": dict(lost_by_cause),
        "misjoined": verdicts["misjoined"],
        "mixed_versions": verdicts["mixed"],
        "answers_by_version": dict(sorted(versions.items())),
        "unexpected_by_cause": dict(unexpected_by_cause),
        "kills": len(kills),
        "kills_by_stage": {s: sum(1 for k in kills if k["stage"] == s) for s in STAGES},
        "kills_skipped": len(skipped),
        "passed": lost == 0 and verdicts["misjoined"] == 0 and verdicts["mixed"] == 0,
    }


def report_lines(summary: dict[str, Any]) -> list[str]:
    s = summary
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(s["requests_by_kind"].items()))
    lines = [
        f"requests: {s['requests']} ({kinds}; {s['short_deadline_requests']} with a short "
        f"deadline), {s['images']} images ({s['bad_images']} bad)",
        "statuses: " + ", ".join(f"{k}: {v}" for k, v in s["statuses"].items()),
        "images: " + ", ".join(f"{k} {v}" for k, v in s["item_verdicts"].items()),
        "image statuses: " + ", ".join(f"{k}: {v}" for k, v in s["item_statuses"].items()),
        "kills: "
        + ", ".join(f"{k} {v}" for k, v in s["kills_by_stage"].items())
        + f" ({s['kills']} in all, {s['kills_skipped']} skipped: stage not back to 2 replicas)",
        f"lost: {s['lost']} (no answer {s['lost_no_answer']}, missing from a 200 "
        f"{s['lost_missing_in_200']})"
        + (
            " by cause: " + ", ".join(f"{k}: {v}" for k, v in s["lost_by_cause"].items())
            if s["lost_by_cause"]
            else ""
        ),
        f"misjoined: {s['misjoined']}",
        f"mixed versions: {s['mixed_versions']}; answers by model version: "
        + ", ".join(f"{k}: {v}" for k, v in s["answers_by_version"].items()),
    ]
    if s["unexpected_by_cause"]:
        lines.append(
            "unexpected answers: "
            + "; ".join(f"{k}: {v}" for k, v in s["unexpected_by_cause"].items())
        )
    for f in s.get("per_fault", []):
        recovered = f["recovered_after_s"]
        rec = "not recovered" if recovered is None else f"recovered after {recovered:.1f} s"
        lines.append(
            f"  [{f['t']:6.1f} s] {f['fault']}: {rec}; of {f['images_in_flight']} images in "
            f"flight meanwhile: lost {f['lost']}, misjoined {f['misjoined']}, unexpected "
            f"{f['unexpected']}"
        )
    bar = "0 lost, 0 misjoined, 0 mixed" + (", every image 200" if s.get("all_200") else "")
    lines.append(f"PASS: {bar}" if s["passed"] else f"MISS: the bar is {bar}")
    return lines


# --- the run (starts Ray) -----------------------------------------------------------------------


def chaos_config(
    base: dict[str, Any], port: int, replicas: int = 2, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """serve_config.yaml with the echo model (or `model`), loopback on `port`, `replicas` of
    every stage."""
    from tools.serve_process import on_loopback, serve_one_model

    config = on_loopback(base, port)
    app = config["applications"][0]
    serve_one_model(app, dict(model or ECHO), "echo")
    for d in app["deployments"]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = replicas
        d.setdefault("ray_actor_options", {})["num_cpus"] = NUM_CPUS[d["name"]]
    return config


def stage_pids(sid: int) -> dict[str, list[int]]:
    from tools.serve_process import process_role, session_pids

    out: dict[str, list[int]] = {s: [] for s in STAGES}
    for pid in session_pids(sid):
        role = process_role(pid)
        if role in out:
            out[role].append(pid)
    return out


@dataclass
class Run:
    url: str
    seed: int
    seconds: float
    concurrency: int
    timeout_s: float
    sid: int
    serve: Any  # tools.serve_process.ServeProcess
    records: list[Record] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    deploys: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    spared: set[int] = field(default_factory=set)  # replica pids the killer never picks
    deploy_plan: Sequence[tuple[float, str]] = DEPLOYS  # (fraction of the run, change)
    kill: bool = True  # False: no replica is killed (`--deploys-only`)
    t0: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def send(self, client: httpx.AsyncClient, planned: Planned, rng: random.Random) -> None:
        blobs = [
            bad_image(b, rng) if c is None else solid_png(c)
            for c, b in zip(planned.colours, planned.bad, strict=True)
        ]
        request_id = f"chaos-{self.seed}-{len(self.started)}"  # in every log line of every stage
        self.started.append(request_id)
        headers = {"x-request-id": request_id}
        if planned.deadline_s is not None:
            headers["x-request-timeout-seconds"] = str(planned.deadline_s)
        start = self.now()
        status: int | None = None
        body: Any = None
        exc_name = ""
        try:
            if planned.kind == "single":
                headers["content-type"] = "image/png"
                response = await client.post("/v1/predict", content=blobs[0], headers=headers)
            else:
                files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
                response = await client.post("/v1/predict", files=files, headers=headers)
            status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = response.text[:200]
        except httpx.HTTPError as exc:
            exc_name = type(exc).__name__
        end = self.now()
        self.records.append(
            Record(planned, start, end, status, judge(planned, status, body, exc_name), request_id)
        )

    async def load(self, planner: Planner) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        stop_at = self.seconds

        async def worker(i: int) -> None:
            rng = random.Random(self.seed * 1000 + i)
            while self.now() < stop_at:
                await self.send(client, planner.next(), rng)

        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=limits
        ) as client:
            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    async def killer(self, plan: list[tuple[float, str]]) -> None:
        rng = random.Random(self.seed + 1)
        for at, stage in plan:
            await asyncio.sleep(max(0.0, at - self.now()))
            pids: list[int] = []
            waited_until = self.now() + 15.0
            while self.now() < waited_until:  # both replicas running: never the last one
                pids = (await asyncio.to_thread(stage_pids, self.sid))[stage]
                running = (await asyncio.to_thread(self.serve.replicas)).get(stage, 2)
                if len(pids) >= 2 and running >= 2:
                    break
                await asyncio.sleep(0.5)
            else:
                self.skipped.append({"t": round(self.now(), 2), "stage": stage, "pids": pids})
                print(f"  [{self.now():6.1f} s] skip {stage}: {len(pids)} replica(s) up")
                continue
            victim = rng.choice(sorted(set(pids) - self.spared))
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                self.skipped.append({"t": round(self.now(), 2), "stage": stage, "pids": pids})
                continue
            self.kills.append({"t": round(self.now(), 3), "stage": stage, "pid": victim})
            print(f"  [{self.now():6.1f} s] SIGKILL {stage} replica pid {victim}", flush=True)
            killed_at = self.now()
            while self.now() - killed_at < 60:  # recovery: two replicas running again
                pids = (await asyncio.to_thread(stage_pids, self.sid))[stage]
                running = (await asyncio.to_thread(self.serve.replicas)).get(stage, 2)
                if len(pids) >= 2 and victim not in pids and running >= 2:
                    self.kills[-1]["recovered_after_s"] = round(self.now() - killed_at, 1)
                    break
                await asyncio.sleep(0.2)

    async def deployer(self) -> None:
        """The rolling deploys of DEPLOYS, in place through the dashboard (none without it)."""
        from tools.serve_process import http_json

        if self.serve.dashboard is None:
            print("  no dashboard: rolling deploys skipped")
            return
        config = self.serve.config
        for fraction, change in self.deploy_plan:
            await asyncio.sleep(max(0.0, fraction * self.seconds - self.now()))
            config = deployed_config(config, change, self.serve.workdir)
            url = f"{self.serve.dashboard}/api/serve/applications/"
            status, body = await asyncio.to_thread(http_json, "PUT", url, config, 30)
            at = self.now()
            if status != 200:
                print(f"  [{at:6.1f} s] {change} refused ({status}: {body})")
                continue
            self.deploys.append({"t": round(at, 3), "stage": change})
            print(f"  [{at:6.1f} s] {change}", flush=True)
            await asyncio.sleep(2.0)  # the controller starts the update within about a second
            while self.now() - at < 180:
                if await asyncio.to_thread(self._app_settled):
                    self.deploys[-1]["recovered_after_s"] = round(self.now() - at, 1)
                    break
                await asyncio.sleep(0.5)

    def _app_settled(self) -> bool:
        details = self.serve.serve_details() or {}
        app = details.get("applications", {}).get(self.serve.app, {})
        deployments = app.get("deployments", {}).values()
        return app.get("status") == "RUNNING" and all(
            d.get("status") == "HEALTHY" for d in deployments
        )

    async def main(self) -> None:
        self.t0 = time.monotonic()
        if self.kill:
            planner = Planner(self.seed)
            plan = plan_kills(self.seed, self.seconds)
        else:  # every request one that must be answered 200: good images, the default deadline
            planner = Planner(self.seed, p_bad=0.0, p_short_deadline=0.0)
            plan = []
        await asyncio.gather(self.load(planner), self.killer(plan), self.deployer())


def start_serve(name: str, port: int, model: dict[str, Any] | None = None) -> tuple[Any, int]:
    """`serve run` of `chaos_config` in artifacts/<name>, started: the process and its session."""
    from tools.serve_process import ServeProcess, load_config

    workdir = ROOT / "artifacts" / name
    workdir.mkdir(parents=True, exist_ok=True)
    config = chaos_config(load_config(ROOT / "serve_config.yaml"), port, model=model)
    serve = ServeProcess(config, workdir, port)
    print(f"starting serve run on {serve.url} (2 replicas per stage, echo model) ...", flush=True)
    serve.start()
    assert serve.proc is not None
    sid: int = serve.proc.pid
    print(f"started in {serve.started_s:.0f} s; replicas: {stage_pids(sid)}", flush=True)
    return serve, sid


def wait_recovered(serve: Any, sid: int, url: str, timeout_s: float = 120.0) -> float | None:
    """Seconds until every stage has 2 replica processes, 2 RUNNING, and health answers 200."""
    from tools.serve_process import http_json

    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        pids = stage_pids(sid)
        running = serve.replicas()
        ok = all(len(pids[s]) == 2 and running.get(s, 2) == 2 for s in STAGES)
        if ok and http_json("GET", f"{url}/v1/health", timeout_s=10)[0] == 200:
            return time.monotonic() - began
        time.sleep(1.0)
    return None


async def after_check(url: str, planner: Planner, n: int = 16) -> int:
    """Fresh colours once the kills have stopped: how many come back right (all should)."""
    colours = [planner.colour() for _ in range(n)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/predict", content=solid_png(c), headers={"content-type": "image/png"}
                )
                for c in colours
            ),
            return_exceptions=True,
        )
    return sum(
        1
        for r, c in zip(responses, colours, strict=True)
        if isinstance(r, httpx.Response)
        and r.status_code == 200
        and colour_in(r.json().get("predictions")) == c
    )


CLIENT_KILLS = ((0.15, "Ingress"), (0.45, "Model"), (0.75, "Ingress"))


def judge_client_lines(
    lines: Sequence[dict[str, Any]], colours: dict[str, Colour]
) -> dict[str, Any]:
    """The client's JSON lines against the colour each file holds: the `--client` bar."""
    statuses = Counter(str(line["status"]) for line in lines)
    ok = misjoined = 0
    for line in lines:
        body = line.get("body")
        if line["status"] != 200 or not isinstance(body, dict):
            continue
        named = colour_in(body.get("predictions"))
        if named == colours[Path(line["path"]).name]:
            ok += 1
        else:
            misjoined += 1
    attempts = Counter(int(line["attempts"]) for line in lines)
    return {
        "images": len(colours),
        "lines": len(lines),
        "statuses": dict(sorted(statuses.items())),
        "ok": ok,
        "misjoined": misjoined,
        "not_answered": len(colours) - len(lines),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "resent_images": sum(v for k, v in attempts.items() if k > 1),
        "errors": sorted({str(line["error"]) for line in lines if line.get("error")}),
    }


def client_run(serve: Any, sid: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`python -m vision_client` over `args.images` PNGs while CLIENT_KILLS happen."""
    import subprocess

    folder = workdir / "client_images"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    planner = Planner(args.seed)
    colours = {f"{i:04d}.png": planner.colour() for i in range(args.images)}
    for name, colour in colours.items():
        (folder / name).write_bytes(solid_png(colour))
    out = workdir / "client_results.jsonl"
    out.unlink(missing_ok=True)  # the kills follow this run's answers, not the last run's
    command = [sys.executable, "-m", "vision_client", str(folder), f"--url={serve.url}"]
    command += [f"--concurrency={args.concurrency}", f"--out={out}", "--no-progress"]
    began = time.monotonic()
    client = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    rng = random.Random(args.seed + 1)
    kills: list[dict[str, Any]] = []

    def answered() -> int:
        try:
            return len(out.read_text().splitlines())
        except OSError:
            return 0

    for fraction, stage in CLIENT_KILLS:
        while client.poll() is None and answered() < fraction * args.images:
            time.sleep(0.1)
        pids: list[int] = []
        while client.poll() is None:  # never the last replica
            pids = stage_pids(sid)[stage]
            if len(pids) >= 2 and serve.replicas().get(stage, 2) >= 2:
                break
            time.sleep(0.2)
        if client.poll() is not None:
            print(f"  the client finished before the {stage} kill at {fraction:.0%}")
            break
        victim = rng.choice(sorted(pids))
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic() - began
        print(f"  [{t:6.1f} s] SIGKILL {stage} replica pid {victim} at {answered()} answered")
        kills.append({"t": round(t, 2), "stage": stage, "pid": victim, "answered": answered()})
        while time.monotonic() - began - t < 120:  # recovery: two replicas running again
            pids = stage_pids(sid)[stage]
            if len(pids) >= 2 and victim not in pids and serve.replicas().get(stage, 2) >= 2:
                kills[-1]["recovered_after_s"] = round(time.monotonic() - began - t, 1)
                break
            time.sleep(0.2)
    _, stderr = client.communicate(timeout=600)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    summary = judge_client_lines(lines, colours)
    summary.update(
        {
            "client_exit": client.returncode,
            "client_stderr_tail": stderr[-500:],
            "concurrency": args.concurrency,
            "model_delay_s": args.delay,
            "client_wall_s": round(time.monotonic() - began, 1),
            "kills": kills,
        }
    )
    summary["passed"] = (
        client.returncode == 0
        and summary["ok"] == args.images
        and summary["misjoined"] == 0
        and len(kills) == len(CLIENT_KILLS)
    )
    return summary


def client_report_lines(s: dict[str, Any]) -> list[str]:
    kills = ", ".join(
        f"{k['stage']} at {k['t']:.0f} s (back to 2 after {k.get('recovered_after_s', '?')} s)"
        for k in s["kills"]
    )
    return [
        f"images: {s['images']}, {s['concurrency']} in flight; client exit {s['client_exit']} "
        f"after {s['client_wall_s']:.0f} s",
        "statuses: " + ", ".join(f"{k}: {v}" for k, v in s["statuses"].items()),
        f"answered with their own colour: {s['ok']}; misjoined {s['misjoined']}; "
        f"no line {s['not_answered']}",
        "attempts per image: "
        + ", ".join(f"{k}: {v}" for k, v in s["attempts"].items())
        + f" ({s['resent_images']} resent)",
        f"kills: {kills}",
        "PASS: every image 200 with its own colour, exit 0"
        if s["passed"]
        else "MISS: the bar is every image 200 with its own colour and exit 0",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=None, help="load duration (180; --deploys-only: 240)"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--port", type=int, default=8200, help="HTTP port on 127.0.0.1 (8200)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight (8; --client and --deploys-only: 16)",
    )
    parser.add_argument(
        "--deploys-only",
        action="store_true",
        help="no kills: each rolling deploy twice under good traffic; the bar is every image 200",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout, s (60)")
    parser.add_argument("--json", type=Path, default=None, help="artifacts/chaos[_client].json")
    parser.add_argument("--client", action="store_true", help="python -m vision_client instead")
    parser.add_argument("--images", type=int, default=480, help="--client: images (480)")
    parser.add_argument(
        "--delay", type=float, default=1.0, help="--client: seconds per forward pass (1.0)"
    )
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or (16 if args.client or args.deploys_only else 8)
    args.seconds = args.seconds or (240.0 if args.deploys_only else 180.0)

    began = time.monotonic()
    model = {**ECHO, "kwargs": {"delay_s": args.delay}} if args.client else None
    serve, sid = start_serve("chaos", args.port, model)
    workdir = serve.workdir
    if args.client:
        try:
            client_summary = client_run(serve, sid, args, workdir)
        finally:
            serve.stop()
        path = args.json or ROOT / "artifacts" / "chaos_client.json"
        path.write_text(json.dumps(client_summary, indent=1))
        print("\n".join(client_report_lines(client_summary)))
        print(f"summary in {path}")
        return 0 if client_summary["passed"] else 1
    try:
        run = Run(serve.url, args.seed, args.seconds, args.concurrency, args.timeout, sid, serve)
        if args.deploys_only:
            run.deploy_plan, run.kill = DEPLOYS_ONLY, False
        print(f"load for {args.seconds:.0f} s, {args.concurrency} in flight, seed {args.seed}")
        asyncio.run(run.main())
        load_wall = run.now()
        recovered = wait_recovered(serve, sid, serve.url)
        after_ok = asyncio.run(after_check(serve.url, Planner(args.seed + 7)))
    finally:
        serve.stop()
    faults = sorted(run.kills + run.deploys, key=lambda f: f["t"])
    summary = summarise(run.records, faults, run.skipped)
    summary.update(
        {
            "kills": len(run.kills),
            "deploys": run.deploys,
            "per_fault": per_fault(run.records, faults),
            "seconds": args.seconds,
            "seed": args.seed,
            "concurrency": args.concurrency,
            "load_wall_s": round(load_wall, 1),
            "wall_s": round(time.monotonic() - began, 1),
            "recovered_after_s": None if recovered is None else round(recovered, 1),
            "after_check_ok": f"{after_ok}/16",
            "kill_log": run.kills,
            "skipped_kills": run.skipped,
            "non_ok_requests": [
                {
                    "request_id": r.request_id,
                    "kind": r.planned.kind,
                    "images": len(r.planned.colours),
                    "deadline_s": r.planned.deadline_s,
                    "start": round(r.start, 3),
                    "end": round(r.end, 3),
                    "status": r.status,
                    "verdicts": [asdict(v) for v in r.verdicts if v.verdict != "ok"],
                    "kills_in_flight": kills_during(run.kills, r.start, r.end),
                }
                for r in run.records
                if any(v.verdict not in ("ok", "clear") for v in r.verdicts)
            ],
        }
    )
    if recovered is None or after_ok != 16:
        summary["passed"] = False
    if args.deploys_only:  # nothing was killed: every image must be answered 200, its own
        summary["all_200"] = True
        every_200 = all(
            v.verdict == "ok" and v.status == 200 for r in run.records for v in r.verdicts
        )
        summary["passed"] = summary["passed"] and every_200
    path = args.json or ROOT / "artifacts" / (
        "chaos_deploys.json" if args.deploys_only else "chaos.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    print("\n".join(report_lines(summary)))
    rec = "no" if recovered is None else f"{recovered:.0f} s"
    print(f"recovered to 2 replicas per stage after the load: {rec}; after-check {after_ok}/16")
    print(f"wall {summary['wall_s']:.0f} s; summary in {path}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
