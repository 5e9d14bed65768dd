"""What Serve's gRPC proxy loads (`grpc_options.grpc_servicer_functions` in serve_config.yaml).

The generated `add_GRPCInferenceServiceServicer_to_server` cannot be used there: Serve 2.58's
proxy replaces the handlers a servicer function adds through `add_generic_rpc_handlers` with its
own, which forward each call to the Ingress method of the same name, but grpcio-tools >= 1.63
also registers every method directly (`add_registered_method_handlers`), those win, and the
proxy's placeholder servicer answers instead (`TypeError ... 'Mock' object`). This adds the same
handlers the generic way only.

It also makes Serve's gRPC context keep the call's deadline. Serve 2.58 hands the Ingress a copy
of the call's context (`RayServegRPCContext`) that keeps its metadata but not its deadline. That
copy is made where the gRPC server runs: in Serve's proxy, or in the Ingress replica itself on
the HAProxy edge. Both run this servicer function before they serve a call, so patching the copy's
constructor here covers both; the copy travels to the Ingress pickled, attribute and all.
"""

import time
from typing import Any

import grpc

SERVICE = "inference.GRPCInferenceService"
# The attribute `keep_rpc_deadlines` sets on Serve's context: the RPC's deadline, time.time().
RPC_DEADLINE = "vision_rpc_deadline"
# grpc reports a call without a deadline as None or as a remaining time of about 2**63 ns.
_NO_DEADLINE_S = 1e9


def keep_rpc_deadlines() -> None:
    """Have Serve's gRPC context keep the RPC's deadline (see the module's docstring). Idempotent;
    if a later Serve's context cannot be wrapped so, calls fall back to the configured default."""
    from ray.serve.grpc_util import RayServegRPCContext  # only where a Serve gRPC server runs

    original = RayServegRPCContext.__init__
    if getattr(original, "keeps_rpc_deadline", False):
        return

    def __init__(self: Any, grpc_context: Any) -> None:
        original(self, grpc_context)
        try:
            remaining = grpc_context.time_remaining()
        except Exception:  # noqa: BLE001 - no deadline to keep, not a failed call
            remaining = None
        if remaining is not None and remaining < _NO_DEADLINE_S:
            setattr(self, RPC_DEADLINE, time.time() + remaining)

    __init__.keeps_rpc_deadline = True  # type: ignore[attr-defined]
    RayServegRPCContext.__init__ = __init__  # type: ignore[method-assign]


def add_inference_service(servicer: Any, server: Any) -> None:
    """Register `inference.GRPCInferenceService`'s unary methods on `server`, generically, and
    have the contexts made for its calls keep their deadlines."""
    # Here, not at the top: the transport imports RPC_DEADLINE in processes that must not load
    # these messages (transports.oip_grpc.pb says why).
    from deployments.oip_proto import grpc_predict_v2_pb2 as pb

    keep_rpc_deadlines()
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request, response = (
            getattr(pb, method.input_type.name),
            getattr(pb, method.output_type.name),
        )
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
