"""Generated Open Inference Protocol (KServe v2) gRPC messages and service: `make proto`."""
