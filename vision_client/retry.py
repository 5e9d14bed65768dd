"""Send one request; after a 503 wait what its `Retry-After` asks, then send it again (bounded)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

DEFAULT_WAIT_S = 1.0  # a 503 without a readable Retry-After


@dataclass(frozen=True, slots=True)
class Reply:
    """The last answer to a request, or why there was none, and how many times it was sent."""

    response: httpx.Response | None
    error: str | None
    attempts: int


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` value asks for (delay-seconds or an HTTP-date, RFC 9110 10.2.3).

    None when there is none or it cannot be read; a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": the RFC's way of saying UTC without a zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def send(
    client: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    *,
    retries: int,
    max_wait_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Reply:
    """Send `build()`; a 503 is sent again up to `retries` times, each after its Retry-After
    (at most `max_wait_s`). Any other answer, or a transport error, is returned as it is."""
    attempts = 0
    while True:
        attempts += 1
        try:
            response = await client.send(build())
        except httpx.HTTPError as exc:
            return Reply(None, f"{type(exc).__name__}: {exc}", attempts)
        if response.status_code != 503 or attempts > retries:
            return Reply(response, None, attempts)
        wait = retry_after_s(response.headers.get("retry-after"))
        await sleep(min(DEFAULT_WAIT_S if wait is None else wait, max_wait_s))
