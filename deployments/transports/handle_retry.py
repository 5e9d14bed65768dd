"""For Python callers of the handle API: one call, sent again with the same request id when the
Ingress replica that held it died, bounded by a number of resends and by the call's deadline.

    from deployments.transports.handle_retry import call
    result = call(serve.get_app_handle("vision"), "predict", image, top_k=3, timeout_s=10)

Inference has no side effects, so a call whose replica died after it may have run is safe to
send again. Resent: a replica's death (`RayActorError` and kin, as `caller.failure_kind` reads
them), Serve's own back-pressure and the service's `Overloaded` (503). Never resent: the
service's other errors (a bad image, an unknown model, a passed deadline), which would recur.
Every attempt carries the same `request_id` (the one given, else a new one) and, as its
`timeout_s`, what is left of the deadline; no attempt starts with less than `MIN_ATTEMPT_S` left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.errors import VisionError
from deployments.flow.caller import failure_kind
from deployments.items import new_item_id

DEFAULT_TIMEOUT_S = 30.0  # the Ingress's own default deadline (request_timeout_s)
DEFAULT_RETRIES = 3
FIRST_BACKOFF_S = 0.25  # after a replica's death, doubling each time
OVERLOADED_WAIT_S = 1.0  # the service's Retry-After for a 503
MIN_ATTEMPT_S = 0.5
ANSWER_GRACE_S = 2.0  # the Ingress answers a passed deadline itself; wait a little past it


def resend_wait_s(exc: BaseException, attempt: int) -> float | None:
    """Seconds to wait before resending after `exc` on attempt `attempt`; None: do not resend."""
    if isinstance(exc, VisionError):
        return OVERLOADED_WAIT_S if exc.status == 503 else None
    kind = failure_kind(exc)
    if kind == "replica":
        return FIRST_BACKOFF_S * 2.0 ** (attempt - 1)
    if kind == "overloaded":
        return OVERLOADED_WAIT_S
    return None


class _Attempts:
    """The resend policy shared by `call` and `call_async`."""

    def __init__(self, retries: int, timeout_s: float, clock: Callable[[], float]) -> None:
        self.retries = retries
        self.deadline = clock() + timeout_s
        self.clock = clock
        self.count = 0

    def left(self) -> float:
        return self.deadline - self.clock()

    def wait_before_next(self, exc: BaseException) -> float | None:
        """The wait before the next attempt, or None when `exc` is the answer."""
        wait = resend_wait_s(exc, self.count)
        if wait is None or self.count > self.retries or self.left() - wait < MIN_ATTEMPT_S:
            return None
        return wait


def call(
    handle: DeploymentHandle[Any],
    method: str,
    *args: Any,
    request_id: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> Any:
    """`handle.<method>.remote(*args, **kwargs).result()`, resent as the module says.

    `method` is `"predict"` or `"predict_many"`; `kwargs` are its own (`model=`, options).
    Raises what the last attempt raised: a `VisionError`, a Ray error, or `TimeoutError`.
    """
    rid = request_id or new_item_id()
    attempts = _Attempts(retries, timeout_s, clock)
    bound = handle.options(method_name=method)
    while True:
        attempts.count += 1
        left = attempts.left()
        try:
            response = bound.remote(*args, request_id=rid, timeout_s=left, **kwargs)
            return response.result(timeout_s=left + ANSWER_GRACE_S)
        except Exception as exc:
            wait = attempts.wait_before_next(exc)
            if wait is None:
                raise
        sleep(wait)


async def call_async(
    handle: DeploymentHandle[Any],
    method: str,
    *args: Any,
    request_id: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> Any:
    """`call` for async code (a deployment, an asyncio service): awaits instead of blocking."""
    rid = request_id or new_item_id()
    attempts = _Attempts(retries, timeout_s, clock)
    bound = handle.options(method_name=method)
    while True:
        attempts.count += 1
        left = attempts.left()
        try:
            response = bound.remote(*args, request_id=rid, timeout_s=left, **kwargs)
            return await asyncio.wait_for(response, timeout=left + ANSWER_GRACE_S)
        except Exception as exc:
            wait = attempts.wait_before_next(exc)
            if wait is None:
                raise
        await sleep(wait)
