"""HTTP load generators: closed loop (N workers, each sends its next request when the last
returns) and open loop (requests sent at fixed arrival times, whatever the answers do).

Closed loop: the window is steady state only: the first `warmup` completions start it (queues
are full by then) and the `measured`-th completion after that ends it; the requests still in
flight then are waited for (so the next point starts on a drained service) but not counted.

Open loop: a fixed schedule of send times (Poisson or uniform); the first `warmup` requests are
sent but not counted; the window runs from the first counted send to the last answer.

Every answered item is checked against the in-process reference top-5 of the image it was sent
(`Body.refs`): a response that carries another image's answer is a mis-join.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from tqdm import tqdm

from bench.stats import Sample, percentile, top_k_matches


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    content_type: str
    images: int
    # The reference top-k of each image in the body, in order ({"class_ids", "scores"}); None: no
    # check.
    refs: tuple[Any, ...] | None = None


@dataclass
class PointRun:
    samples: list[Sample]
    window_s: float
    wall_s: float
    response_bytes: int
    marks: dict[str, Any] = field(default_factory=dict)


def parse_response(
    status: int,
    payload: bytes,
    sent: float,
    done: float,
    images: int,
    refs: Sequence[Any] | None = None,
) -> Sample:
    """A `Sample` from one response: per-image batch sizes and server timings, item errors, and
    (with `refs`, one per image sent, in order) how many items carry another image's top-5."""
    sample = Sample(sent=sent, done=done, status=status, images=0)
    if status != 200:
        return sample
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        sample.status = -2  # a 200 that is not JSON is a failure of ours to see
        return sample
    items = body.get("results", [body])
    for i, item in enumerate(items):
        if "error" in item:
            sample.failed_items += 1
            continue
        sample.images += 1
        if "batch_size" in item:
            sample.batch_sizes.append(int(item["batch_size"]))
        sample.timings.append({k: float(v) for k, v in item.get("timings_ms", {}).items()})
        if refs is not None:
            sample.checked += 1
            ref = refs[i] if i < len(refs) and len(items) == len(refs) else None
            if ref is None or not top_k_matches(item.get("predictions", []), ref):
                sample.mismatched += 1
    return sample


async def _post(
    session: aiohttp.ClientSession, url: str, body: Body, extra: dict[str, str]
) -> tuple[int, bytes, float, float]:
    """One request: (status, payload, sent, done); status -1 for a connection error."""
    sent = time.perf_counter()
    try:
        async with session.post(
            url, data=body.data, headers={**extra, "content-type": body.content_type}
        ) as resp:
            payload = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        payload, status = b"", -1
    return status, payload, sent, time.perf_counter()


async def run_point(
    url: str,
    bodies: Sequence[Body],
    concurrency: int,
    warmup: int,
    measured: int,
    label: str,
    on_window: Callable[[str], None] | None = None,
    max_window_s: float = math.inf,
    timeout_s: float = 300.0,
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> PointRun:
    """Drive `url` with `concurrency` closed-loop workers; return the measured window.

    The window ends at the `measured`-th completion, or at the first completion after
    `max_window_s` (a bound for a slow or overloaded machine; the point then has fewer samples).
    """
    total = warmup + measured
    extra = headers or {}
    samples: list[Sample] = []
    state = {"ticket": 0, "completed": 0, "start": 0.0, "end": 0.0, "bytes": 0}
    stop = asyncio.Event()
    bar = tqdm(
        total=total, desc=label, unit="req", leave=False, mininterval=0.5, disable=not progress
    )
    if warmup == 0:
        state["start"] = time.perf_counter()
        if on_window:
            on_window("start")

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            ticket = state["ticket"]
            state["ticket"] += 1
            body = bodies[ticket % len(bodies)]
            status, payload, sent, done = await _post(session, url, body, extra)
            if stop.is_set():
                return  # in flight when the window closed: drained, not counted
            state["completed"] += 1
            bar.update(1)
            if state["completed"] <= warmup:
                if state["completed"] == warmup:
                    state["start"] = done
                    if on_window:
                        on_window("start")
                continue
            state["bytes"] += len(payload)
            samples.append(parse_response(status, payload, sent, done, body.images, body.refs))
            if len(samples) == measured or done - state["start"] >= max_window_s:
                state["end"] = done
                if on_window:
                    on_window("end")
                stop.set()

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    bar.close()
    return PointRun(
        samples=samples,
        window_s=state["end"] - state["start"],
        wall_s=time.perf_counter() - began,
        response_bytes=int(state["bytes"]),
    )


async def run_open_loop(
    url: str,
    bodies: Sequence[Body],
    offsets: Sequence[float],
    warmup: int,
    label: str,
    on_window: Callable[[str], None] | None = None,
    timeout_s: float = 60.0,
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> PointRun:
    """Send one request at each of `offsets` (seconds from the start), never waiting for answers.

    No connection limit, so nothing the server does slows the arrivals (the generator's own lag
    behind the schedule is reported in `marks`). Requests not answered within `timeout_s` count
    as connection errors (-1). The window opens at the first counted send and closes at the last
    answer.
    """
    extra = headers or {}
    samples: list[Sample] = []
    lag_ms: list[float] = []
    state = {"bytes": 0, "start": 0.0}
    bar = tqdm(
        total=len(offsets),
        desc=label,
        unit="req",
        leave=False,
        mininterval=0.5,
        disable=not progress,
    )
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(session: aiohttp.ClientSession, i: int, body: Body) -> None:
        status, payload, sent, done = await _post(session, url, body, extra)
        bar.update(1)
        if i >= warmup:
            state["bytes"] += len(payload)
            samples.append(parse_response(status, payload, sent, done, body.images, body.refs))

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for i, at in enumerate(offsets):
            delay = began + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_ms.append(max(0.0, (time.perf_counter() - began - at) * 1000.0))
            if i == warmup:
                state["start"] = time.perf_counter()
                if on_window:
                    on_window("start")
            tasks.append(asyncio.create_task(one(session, i, bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
    end = max((s.done for s in samples), default=time.perf_counter())
    if on_window:
        on_window("end")
    bar.close()
    return PointRun(
        samples=samples,
        window_s=end - state["start"] if state["start"] else 0.0,
        wall_s=time.perf_counter() - began,
        response_bytes=int(state["bytes"]),
        marks={
            "sent": len(offsets),
            "schedule_s": float(offsets[-1]) if len(offsets) else 0.0,
            "send_lag_ms_p99": percentile(lag_ms, 99),
            "send_lag_ms_max": max(lag_ms, default=0.0),
        },
    )


async def get_json(
    url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
        session.get(url) as resp,
    ):
        body = await resp.read()
        try:
            return resp.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return resp.status, body.decode("utf-8", "replace")
