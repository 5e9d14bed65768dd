"""The transports: one adapter per protocol over the one request flow (`deployments.flow.caller`).

`v1` (HTTP `/v1`), `oip_rest` and `oip_grpc` (the Open Inference Protocol, over `oip_tensors`)
and `handle` (the Python handle API) parse what they receive into items and format the answers
and errors in their own shape; `base` holds what they share: the request wrapper, auth and the
headers of an error response. Adding a protocol is one module here plus its routes in the Ingress.
"""
