"""What every transport shares (transports/base.py), without a cluster: the request wrapper's
ladder, auth, and the headers an HTTP error response adds (http_io)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from deployments.errors import BadRequest, Overloaded, ServerError, Unauthorized, VisionError
from deployments.transports.base import Front, IngressSettings
from deployments.transports.http_io import Reservation, error_headers
from tests import settings

ARGS = settings.served_app()["args"]
SETTINGS = IngressSettings(
    cards=(settings.card("m", "1"),),
    default_model="m",
    limits=settings.limits(max_body_bytes=100, max_body_bytes_in_flight=100),
    request_timeout_s=ARGS["request_timeout_s"],
    max_request_timeout_s=ARGS["max_request_timeout_s"],
    bundles=settings.bundles(),
    poison=settings.poison(),
    retry_after_s=ARGS["retry_after_s"],
)


def _front(api_key: str | None = None) -> Front:
    unused: Any = None  # the caller and the health watch are not reached here
    return Front(unused, SETTINGS, unused, settings.catalogue({("m", "1"): None}), api_key)


def _guarded(front: Front, raised: BaseException | None) -> VisionError | str:
    async def work(reservation: Reservation) -> VisionError | str:
        reservation.ensure(40)
        if raised is not None:
            raise raised
        return "answered"

    failed = ServerError("failed")
    return asyncio.run(front.guarded("r-1", work, lambda exc: exc, failed, gone="left"))


@pytest.mark.parametrize(
    ("raised", "answer"),
    [
        (None, "answered"),
        (Overloaded("full"), Overloaded),
        (ClientDisconnect(), BadRequest),
        (RuntimeError("bug"), ServerError),
    ],
)
def test_every_outcome_is_answered_and_the_body_budget_given_back(
    raised: BaseException | None, answer: Any
) -> None:
    front = _front()
    out = _guarded(front, raised)
    assert out == answer if isinstance(answer, str) else isinstance(out, answer)
    if isinstance(raised, ClientDisconnect):
        assert isinstance(out, VisionError) and out.message == "left"
    assert front.budget.held == 0


def test_auth_is_off_without_a_key_and_names_where_to_send_one() -> None:
    _front().authorize(None)
    keyed = _front("secret")
    keyed.authorize("Bearer secret")
    with pytest.raises(Unauthorized, match="send the metadata"):
        keyed.authorize("Bearer wrong", "the metadata 'authorization: Bearer <key>'")


def test_error_headers_ask_503s_to_retry_and_401s_to_authenticate() -> None:
    assert error_headers(Overloaded("full"), 3) == {"retry-after": "3"}
    assert error_headers(Unauthorized("key"), 3) == {"www-authenticate": "Bearer"}
    assert error_headers(BadRequest("bad"), 3) == {}
