"""vision_client's resends against a real HTTP server on loopback that drops, resets or fails
requests on cue: same request id every time, bounded by count and by the deadline."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from vision_client import cli
from vision_client.retry import FIRST_BACKOFF_S, MIN_ATTEMPT_S, Reply, send

OK = "ok"
DROP = "drop"  # read the request, close without a byte of answer (FIN)
RESET = "reset"  # read the request, then reset the connection (RST)
PLAIN_500 = "plain500"  # Serve's edge: an Ingress replica died holding the request
JSON_500 = "json500"  # the service's own internal_error


@dataclass
class Seen:
    request_id: str | None
    timeout: str | None
    body: bytes


@dataclass
class FlakyServer:
    """HTTP/1.1 on 127.0.0.1 (a port the OS picks); answers the Nth request with `script[N]`
    (`OK` once the script runs out), and records what each request carried."""

    script: list[str]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                head, _, rest = buffered.partition(b"\r\n\r\n")
                headers = dict(
                    line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
                )
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    rest += conn.recv(65536)
                body, buffered = rest[:length], rest[length:]
                with self._lock:
                    self.seen.append(
                        Seen(
                            headers.get("x-request-id"),
                            headers.get("x-request-timeout-seconds"),
                            body,
                        )
                    )
                    n = len(self.seen) - 1
                    action = self.script[n] if n < len(self.script) else OK
                if action == DROP:
                    return
                if action == RESET:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(self._answer(action))

    @staticmethod
    def _answer(action: str) -> bytes:
        if action == OK:
            status, kind, payload, extra = "200 OK", "application/json", b'{"ok": true}', ""
        elif action == PLAIN_500:
            status, kind, payload, extra = (
                "500 Internal Server Error",
                "text/plain",
                b"Internal Server Error",
                "",
            )
        elif action == JSON_500:
            status, kind = "500 Internal Server Error", "application/json"
            payload, extra = b'{"error": {"code": "internal_error"}}', ""
        else:  # "502", "503 2" (a status, then a Retry-After)
            code, _, retry_after = action.partition(" ")
            status, kind, payload = f"{code} Error", "application/json", b"{}"
            extra = f"retry-after: {retry_after}\r\n" if retry_after else ""
        return (
            f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(payload)}\r\n"
            f"{extra}\r\n"
        ).encode() + payload


StartServer = Callable[[list[str]], FlakyServer]


@pytest.fixture
def server() -> Iterator[StartServer]:
    started: list[FlakyServer] = []

    def start(script: list[str]) -> FlakyServer:
        started.append(FlakyServer(script))
        return started[-1]

    yield start
    for s in started:
        s.close()


class Clock:
    """Time that passes only when the client waits (or a test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def _send(
    server: FlakyServer, clock: Clock, retries: int = 3, timeout_s: float | None = 30.0
) -> Reply:
    async def go() -> Reply:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            return await send(
                client,
                lambda: client.build_request("POST", "/v1/predict", content=b"img"),
                retries=retries,
                max_wait_s=30,
                request_id="req-1",
                timeout_s=timeout_s,
                sleep=clock.sleep,
                clock=clock,
            )

    return asyncio.run(go())


def _status(reply: Reply) -> int | None:
    return None if reply.response is None else reply.response.status_code


@pytest.mark.parametrize("failure", [DROP, RESET, "502", "504", PLAIN_500])
def test_a_lost_or_failed_request_is_resent_with_the_same_id(
    server: StartServer, failure: str
) -> None:
    flaky = server([failure, failure])
    clock = Clock()
    reply = _send(flaky, clock)
    assert (_status(reply), reply.attempts) == (200, 3)
    assert [s.request_id for s in flaky.seen] == ["req-1"] * 3
    assert [s.body for s in flaky.seen] == [b"img"] * 3
    assert clock.waits == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S]


def test_each_attempt_carries_what_is_left_of_the_deadline(server: StartServer) -> None:
    flaky = server([DROP, "503 2"])
    clock = Clock()
    assert _status(_send(flaky, clock, timeout_s=10)) == 200
    assert clock.waits == [FIRST_BACKOFF_S, 2.0]  # the 503's Retry-After
    assert [float(s.timeout or 0) for s in flaky.seen] == [10.0, 9.75, 7.75]


@pytest.mark.parametrize("status", ["400", "408", "413", "422", "429", JSON_500])
def test_client_errors_and_the_services_own_500_are_answered_at_once(
    server: StartServer, status: str
) -> None:
    flaky = server([status])
    reply = _send(flaky, Clock())
    assert reply.attempts == 1 and len(flaky.seen) == 1


def test_resends_are_bounded_by_count(server: StartServer) -> None:
    flaky = server([DROP] * 10)
    reply = _send(flaky, Clock(), retries=2)
    assert (reply.response, reply.attempts, len(flaky.seen)) == (None, 3, 3)
    assert reply.error is not None and reply.error.startswith("RemoteProtocolError")


def test_resends_stop_when_the_deadline_leaves_no_room(server: StartServer) -> None:
    # A Retry-After that ends past the deadline: the 503 is the answer, no wait is spent.
    flaky = server(["503 5"])
    clock = Clock()
    reply = _send(flaky, clock, timeout_s=4)
    assert (_status(reply), reply.attempts, clock.waits) == (503, 1, [])
    # Backoffs that eat the deadline: no attempt starts with less than MIN_ATTEMPT_S left.
    flaky = server([DROP] * 10)
    clock = Clock()
    reply = _send(flaky, clock, retries=10, timeout_s=1.0)
    assert sum(clock.waits) + MIN_ATTEMPT_S <= 1.0
    assert reply.attempts == len(flaky.seen) == len(clock.waits) + 1


def test_the_cli_answers_every_image_through_dropped_connections(
    server: StartServer, tmp_path: Path
) -> None:
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(f"image-{i}".encode())
    flaky = server([DROP, RESET, "502", PLAIN_500])  # one failure each, whichever comes first
    settings = cli.settings_from(
        cli.parser().parse_args([f"--url={flaky.url}", "--concurrency=2", "x"]), {}
    )
    out = io.StringIO()
    clock = Clock()
    assert asyncio.run(cli.run(settings, paths, out, progress=False, sleep=clock.sleep)) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(line["status"] for line in lines) == [200] * 4
    assert sum(line["attempts"] for line in lines) == 8
    ids_by_body: dict[bytes, set[str | None]] = {}
    for seen in flaky.seen:
        ids_by_body.setdefault(seen.body, set()).add(seen.request_id)
    assert len(ids_by_body) == 4
    assert all(len(ids) == 1 for ids in ids_by_body.values()), "a resend keeps its request id"
    assert len({next(iter(ids)) for ids in ids_by_body.values()}) == 4
