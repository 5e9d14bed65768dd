"""Hostile requests against the real graph: bodies of a million tiny parts, more body bytes than
the Ingress budgets for, a stalled upload, a deadline switched off or stretched, and an image that
kills every replica that runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import (
    BASE_URL,
    app_config,
    deploy,
    fixed_replicas,
    replica_names,
    wait_until,
)
from tools.serve_process import load_config

POISON = (7, 77, 177)  # the mean colour that kills the Model replica holding it
LIMITS = load_config()["applications"][0]["args"]["limits"]  # serve_config.yaml's, deployed
MAX_BODY = LIMITS["max_body_bytes"]
HELD = LIMITS["max_body_bytes_in_flight"] // MAX_BODY  # whole bodies that fill the budget
TINY_PART = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nx\r\n'


@pytest.fixture(scope="module")
def crash_log(tmp_path_factory: pytest.TempPathFactory, _control: Any) -> Iterator[Path]:
    """The echo modules' deploy (`ECHO`), whose replicas die on `POISON` while this module runs:
    the `Control` actor says so, and each death adds a line to the log this yields."""
    log = tmp_path_factory.mktemp("poison") / "deaths.log"
    log.touch()
    deploy(
        app_config(
            model=ECHO,
            # One Ingress replica holds the budget and the quarantine; two Model replicas, so a
            # retry has somewhere to go while a killed one comes back.
            options={"Ingress": fixed_replicas(1), "Model": fixed_replicas(2)},
        )
    )
    ray.get(_control.set.remote(crash_on=list(POISON), crash_log=str(log)))
    try:
        yield log
    finally:
        ray.get(_control.set.remote())


def _deaths(log: Path) -> int:
    return len(log.read_text().splitlines())


def _model_healthy() -> bool:
    app = serve.status().applications.get("vision")
    return (
        app is not None
        and app.deployments["Model"].status == "HEALTHY"
        and len(replica_names("Model")) == 2
    )


_PROBE = f"""
import sys, time, httpx
with httpx.Client(base_url={BASE_URL!r}, timeout=30) as client:
    while True:
        start = time.perf_counter()
        status = client.get("/v1/health").status_code
        print(status, (time.perf_counter() - start) * 1e3, flush=True)
        time.sleep(0.02)
"""


class HealthProbes:
    """`GET /v1/health` in a loop from a process of its own (the test's own sending must not
    slow the probes down through the GIL), recording each status and latency."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.latencies_ms: list[float] = []
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read)

    def __enter__(self) -> HealthProbes:
        self._reader.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._process.terminate()
        self._process.wait(30)
        self._reader.join(30)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            status, ms = line.split()
            self.latencies_ms.append(float(ms))
            self.statuses.append(int(status))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _raw_post(headers: dict[str, str], first_bytes: bytes) -> Connection:
    """Send a POST's headers and the first bytes of its body, then nothing: a stalled upload."""
    reader, writer = await asyncio.open_connection("127.0.0.1", 8000)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST /v1/predict HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}\r\n".encode())
    writer.write(first_bytes)
    await writer.drain()
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return int(status_line.split()[1]), await reader.readexactly(length)


def test_bodies_of_a_million_tiny_parts_are_refused_at_once_and_health_stays_fast(
    crash_log: Path,
) -> None:
    parts = 1_100_000
    body = TINY_PART * parts + b"--b--\r\n"
    assert len(body) > 55_000_000
    content_type = "multipart/form-data; boundary=b"

    async def streamed() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse by
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    async def attack() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=60) as client:

            async def send(content: Any) -> tuple[httpx.Response, float]:
                start = time.perf_counter()
                r = await client.post(
                    "/v1/predict", content=content, headers={"content-type": content_type}
                )
                return r, time.perf_counter() - start

            return list(await asyncio.gather(send(body), send(streamed())))

    with HealthProbes() as probes:
        wait_until(lambda: len(probes.statuses) >= 10, 30, "the first health probes")
        before = len(probes.latencies_ms)
        results = asyncio.run(attack())
        during = probes.latencies_ms[before:]
        quiet = probes.latencies_ms[3:before]  # the first few warm the probe's connection
    for r, seconds in results:
        assert r.status_code == 413, r.text
        assert "more than 64 parts" in r.json()["error"]["message"]
        # Reading and parsing the whole 55 MB body first takes far longer than this bound.
        assert seconds < 15.0, f"the 413 took {seconds:.2f} s"
    print(
        f"413 after {[round(s, 3) for _, s in results]} s; health during the attack: "
        f"{len(during)} probes, max {max(during, default=0):.1f} ms; before it: max "
        f"{max(quiet):.1f} ms, median {sorted(quiet)[len(quiet) // 2]:.1f} ms"
    )
    assert set(probes.statuses) == {200}
    assert during, "no health probe ran while the bodies arrived"
    # A loop blocked by the parse stalls health for seconds; the tight figure is printed above.
    assert max(during) < 2000, f"health took {max(during):.0f} ms during the attack"


def test_past_the_body_budget_a_request_gets_503_and_the_budget_comes_back(
    crash_log: Path,
) -> None:
    image = images.solid_png((10, 20, 30))

    def probe() -> httpx.Response:
        return httpx.post(
            f"{BASE_URL}/v1/predict",
            content=image,
            headers={"content-type": "image/png"},
            timeout=30,
        )

    async def hold_two_bodies() -> list[Connection]:
        # Uploads that declare the largest body each and then stall fill the budget.
        headers = {
            "content-type": "image/png",
            "content-length": str(MAX_BODY),
            "x-request-timeout-seconds": "20",
        }
        return [await _raw_post(headers, image[:16]) for _ in range(HELD)]

    async def give_up(held: list[Connection]) -> None:
        for _, writer in held:
            writer.close()
            await writer.wait_closed()

    loop = asyncio.new_event_loop()
    held = loop.run_until_complete(hold_two_bodies())
    try:
        full = wait_until(lambda: (r := probe()).status_code == 503 and r, 20, "the budget to fill")
        assert full.headers["retry-after"] == "1"
        error = full.json()["error"]
        assert error["code"] == "overloaded" and "max_body_bytes_in_flight" in error["message"]
    finally:  # the uploaders give up: their reservations come back
        loop.run_until_complete(give_up(held))
        loop.close()
    back = wait_until(lambda: (r := probe()).status_code == 200 and r, 20, "the budget back")
    assert back.json()["predictions"]


def test_a_stalled_upload_gets_408_by_its_deadline(crash_log: Path) -> None:
    timeout_s = 1.5

    async def stall() -> tuple[int, bytes, float]:
        start = time.perf_counter()
        headers = {
            "content-type": "image/png",
            "content-length": "100000",
            "x-request-timeout-seconds": str(timeout_s),
        }
        reader, writer = await _raw_post(headers, b"\x89PNG")
        status, body = await asyncio.wait_for(_read_response(reader), 10)
        writer.close()
        return status, body, time.perf_counter() - start

    status, body, seconds = asyncio.run(stall())
    assert status == 408, body
    assert httpx.Response(408, content=body).json()["error"]["code"] == "request_timeout"
    # Without the deadline the stalled read would hold until the 10 s wait above gives up.
    assert seconds < timeout_s + 5, f"the 408 came after {seconds:.2f} s"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_the_deadline_cannot_be_switched_off(crash_log: Path, value: str) -> None:
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png((1, 2, 3)),
        headers={"content-type": "image/png", "x-request-timeout-seconds": value},
    )
    assert r.status_code == 400
    assert "positive, finite" in r.json()["error"]["message"]


def test_a_huge_deadline_is_capped_and_the_answer_still_comes(crash_log: Path) -> None:
    colour = (40, 50, 60)
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png(colour),
        headers={"content-type": "image/png", "x-request-timeout-seconds": "1e9"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert colour_in(r.json()["predictions"]) == colour


def test_an_image_that_kills_replicas_kills_two_then_is_refused(crash_log: Path) -> None:
    wait_until(_model_healthy, 60, "two healthy Model replicas")
    replicas_before = replica_names("Model")
    deaths_before = _deaths(crash_log)
    innocents = [(90, 30, 30), (30, 90, 30), (30, 30, 90)]
    # Retries run in input order and stop at a request's first double failure, so the poison
    # goes last here: every innocent is retried before it (a unit test covers the other order).
    files = [
        ("image", (f"{n}.png", images.solid_png(c), "image/png"))
        for n, c in enumerate([*innocents, POISON])
    ]
    r = httpx.post(f"{BASE_URL}/v1/predict", files=files, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for result, colour in zip(results[:3], innocents, strict=True):
        assert colour_in(result["predictions"]) == colour, result
    poisoned = results[3]["error"]
    assert poisoned["code"] == "overloaded" and poisoned["status"] == 503
    assert "refused for 600 s" in poisoned["message"]
    deaths = _deaths(crash_log) - deaths_before
    print(f"Model replicas killed by the poison: {deaths}")
    assert deaths <= 2

    wait_until(_model_healthy, 90, "the Model replicas to come back")
    assert len(replicas_before - replica_names("Model")) == deaths
    start = time.perf_counter()
    again = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png(POISON),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    seconds = time.perf_counter() - start
    assert again.status_code == 422, again.text
    error = again.json()["error"]
    assert error["code"] == "poison_image" and "crashed the service twice" in error["message"]
    assert seconds < 10.0, "the quarantined image waited on a replica restart"
    assert _deaths(crash_log) - deaths_before == deaths, "the quarantined image ran again"
