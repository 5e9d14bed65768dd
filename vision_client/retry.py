"""Send one request; send it again, with the same request id, when it met a failure that a resend
can cure, a bounded number of times and only while its deadline leaves room.

Inference has no side effects, so a request that may have run already is safe to send again:
the worst case is a second forward pass, never a second effect. What is resent:

- no answer at all: the connection was refused, dropped or reset (a replica or a proxy died
  holding the request);
- 502, 503 and 504: a gateway with no live upstream, the service's overload answer (which says
  when in `Retry-After`), an upstream timeout;
- a 500 that is not the service's own JSON error: Serve's edge answers a plain-text 500 for an
  Ingress replica that died holding the request. The service's own 500s (`internal_error`,
  `inference_failed`) are its bugs, logged; the same bytes would fail the same way.

Never resent: any 4xx (the request itself is wrong) and a read timeout (the deadline is spent).
Each attempt's timeout, and its `x-request-timeout-seconds`, is what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

DEFAULT_WAIT_S = 1.0  # a 503 without a readable Retry-After
FIRST_BACKOFF_S = 0.25  # after a dropped connection or a gateway error, doubling each time
MIN_ATTEMPT_S = 0.5  # an attempt with less than this left of the deadline is not started
REQUEST_ID_HEADER = "x-request-id"
TIMEOUT_HEADER = "x-request-timeout-seconds"
_RESENT_STATUSES = frozenset({502, 503, 504})


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


def resendable(response: httpx.Response) -> bool:
    """Whether an answer is worth sending the same request again for (see the module)."""
    if response.status_code in _RESENT_STATUSES:
        return True
    if response.status_code == 500:
        return not response.headers.get("content-type", "").startswith("application/json")
    return False


def _wait_s(response: httpx.Response | None, attempt: int, max_wait_s: float) -> float:
    """How long to wait before attempt `attempt + 1`: Retry-After when the answer has one."""
    asked = None if response is None else retry_after_s(response.headers.get("retry-after"))
    if asked is None:
        if response is not None and response.status_code == 503:
            asked = DEFAULT_WAIT_S
        else:
            asked = FIRST_BACKOFF_S * 2 ** (attempt - 1)
    return min(asked, max_wait_s)


async def send(
    client: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    *,
    retries: int,
    max_wait_s: float,
    request_id: str | None = None,
    timeout_s: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Reply:
    """Send `build()`; resend it up to `retries` times after a resendable failure (see the
    module), each after its Retry-After or a doubling backoff (at most `max_wait_s`).

    `request_id` goes in `x-request-id` on every attempt, so the service's logs show one request
    sent several times. `timeout_s` is the request's deadline from now, all attempts and waits
    included: each attempt gets what is left as its timeout and its `x-request-timeout-seconds`,
    and no attempt starts with less than `MIN_ATTEMPT_S` left. Without it each attempt gets the
    client's own timeout and the number of retries is the only bound.
    """
    deadline = None if timeout_s is None else clock() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        request = build()
        if request_id is not None:
            request.headers[REQUEST_ID_HEADER] = request_id
        if deadline is not None:
            left = deadline - clock()
            request.headers[TIMEOUT_HEADER] = f"{left:.3f}"
            request.extensions["timeout"] = httpx.Timeout(left).as_dict()
        response: httpx.Response | None = None
        error: str | None = None
        try:
            response = await client.send(request)
        except httpx.TimeoutException as exc:  # the deadline is spent (or could not connect)
            if not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                return Reply(None, f"{type(exc).__name__}: {exc}", attempts)
            error = f"{type(exc).__name__}: {exc}"
        except httpx.TransportError as exc:  # refused, dropped, reset: nothing came back
            error = f"{type(exc).__name__}: {exc}"
        if response is not None and not resendable(response):
            return Reply(response, None, attempts)
        if attempts > retries:
            return Reply(response, error, attempts)
        wait = _wait_s(response, attempts, max_wait_s)
        if deadline is not None and deadline - clock() - wait < MIN_ATTEMPT_S:
            return Reply(response, error, attempts)
        if response is not None:
            await response.aclose()
        await sleep(wait)
