"""The request flow, once: the caller (bundles, deadlines, retry, fan-out, join), the batching
policy, poison quarantine and the service's health. Only `caller` imports Ray."""
