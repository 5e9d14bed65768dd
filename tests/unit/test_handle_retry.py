"""deployments.transports.handle_retry's policy without a cluster: what is resent, after how
long, and when the deadline or the count says stop. tests/integration/test_faults.py kills a real
replica."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, RayActorError
from ray.serve.exceptions import BackPressureError

from deployments.errors import CorruptImage, DeadlineExceeded, Overloaded, UnknownModel
from deployments.transports.handle_retry import (
    FIRST_BACKOFF_S,
    MIN_ATTEMPT_S,
    OVERLOADED_WAIT_S,
    _Attempts,
    resend_wait_s,
)


def test_a_replicas_death_is_resent_after_a_doubling_backoff() -> None:
    assert resend_wait_s(ActorDiedError(), 1) == FIRST_BACKOFF_S
    assert resend_wait_s(RayActorError(), 3) == 4 * FIRST_BACKOFF_S


def test_overload_is_resent_after_the_services_retry_after() -> None:
    assert resend_wait_s(Overloaded("a replica died holding it"), 1) == OVERLOADED_WAIT_S
    assert resend_wait_s(BackPressureError(num_queued_requests=9, max_queued_requests=8), 1) == (
        OVERLOADED_WAIT_S
    )


@pytest.mark.parametrize(
    "exc",
    [CorruptImage("bad"), UnknownModel("no"), DeadlineExceeded("late"), ValueError("bug")],
)
def test_other_errors_are_the_answer(exc: Exception) -> None:
    assert resend_wait_s(exc, 1) is None


def test_attempts_stop_at_the_count_and_before_the_deadline() -> None:
    now = [0.0]
    attempts = _Attempts(retries=2, timeout_s=10.0, clock=lambda: now[0])
    waits = []
    for _ in range(5):
        attempts.count += 1
        wait = attempts.wait_before_next(ActorDiedError())
        if wait is None:
            break
        waits.append(wait)
    assert waits == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S] and attempts.count == 3

    attempts = _Attempts(retries=9, timeout_s=1.0, clock=lambda: now[0])
    attempts.count = 1
    now[0] = 1.0 - MIN_ATTEMPT_S  # what is left would not cover the wait and one attempt
    assert attempts.wait_before_next(ActorDiedError()) is None
