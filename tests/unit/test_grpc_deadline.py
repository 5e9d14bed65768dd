"""The RPC's deadline reaches the Ingress: Serve's gRPC context, made from a real call's context
on a real asyncio gRPC server (the kind Serve's proxy and, on the HAProxy edge, the Ingress
replica run), keeps it once `keep_rpc_deadlines` has run, as the servicer function runs it."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from ray.serve.grpc_util import RayServegRPCContext

from deployments.errors import DeadlineExceeded
from deployments.oip_proto.proxy import RPC_DEADLINE, keep_rpc_deadlines
from deployments.transports.oip_grpc import rpc_timeout_s

keep_rpc_deadlines()


def _call(timeout: float | None) -> dict[str, Any]:
    """One unary RPC whose handler makes Serve's context and records what it kept."""
    seen: dict[str, Any] = {}

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        served = RayServegRPCContext(context)
        seen["deadline"] = getattr(served, RPC_DEADLINE, None)
        seen["left"] = rpc_timeout_s(served, time.time())
        return request

    async def main() -> None:
        server = grpc.aio.server()
        rpc = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"M": rpc}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary("/t.S/M")(b"x", timeout=timeout) == b"x"
        finally:
            await server.stop(None)

    asyncio.run(main())
    return seen


def test_the_context_keeps_the_rpc_deadline() -> None:
    seen = _call(timeout=5.0)
    assert 3.0 < seen["left"] <= 4.0, seen  # 5 s, less the margin kept for the answer


def test_a_call_without_a_deadline_has_none() -> None:
    seen = _call(timeout=None)
    assert seen["deadline"] is None and seen["left"] is None


def test_a_deadline_already_past_is_504() -> None:
    served = SimpleNamespace(**{RPC_DEADLINE: 100.0})
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        rpc_timeout_s(served, now=100.5)
    assert rpc_timeout_s(served, now=99.0) == pytest.approx(0.75)  # a quarter kept back
    assert rpc_timeout_s(served, now=90.0) == pytest.approx(8.0)  # at most 2 s kept back
