"""What Serve's gRPC proxy loads (`grpc_options.grpc_servicer_functions` in serve_config.yaml).

The generated `add_GRPCInferenceServiceServicer_to_server` cannot be used there: Serve 2.58's
proxy replaces the handlers a servicer function adds through `add_generic_rpc_handlers` with its
own, which forward each call to the Ingress method of the same name, but grpcio-tools >= 1.63
also registers every method directly (`add_registered_method_handlers`), those win, and the
proxy's placeholder servicer answers instead (`TypeError ... 'Mock' object`). This adds the same
handlers the generic way only.
"""

from typing import Any

import grpc

from deployments.oip_proto import grpc_predict_v2_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def add_inference_service(servicer: Any, server: Any) -> None:
    """Register `inference.GRPCInferenceService`'s unary methods on `server`, generically."""
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
