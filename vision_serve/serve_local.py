"""`serve run` on a fresh local Ray whose Prometheus metrics are on a fixed port (what
`vision-serve run` and `make run` start).

    python -m vision_serve.serve_local [--metrics-export-port N] CONFIG [SERVE-RUN-OPTION ...]

`serve run --address local` starts a Ray of its own, and that Ray exports its metrics on a random
port: Ray takes the port only from `ray start --metrics-export-port` or
`ray.init(_metrics_export_port=...)`, never from the environment. So this starts the same local
Ray with the port fixed (METRICS_EXPORT_PORT unless told), then runs Serve's own `serve run`
command in this process, which uses the Ray already started. Ctrl-C stops Serve, then Ray, as it
does for `serve run`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

# Ray's metrics on http://127.0.0.1:8080/metrics, the port Ray uses on KubeRay pods as well
# (kuberay/rayservice.template.yaml), so one scrape config and one dashboard fit both.
METRICS_EXPORT_PORT = 8080


def port_in_use(port: int) -> bool:
    """Whether something listens on, or holds, `port` on loopback."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Every other argument goes to `serve run` (give it no --address).",
    )
    parser.add_argument(
        "--metrics-export-port",
        type=int,
        default=METRICS_EXPORT_PORT,
        help=f"Ray's Prometheus endpoint (default {METRICS_EXPORT_PORT})",
    )
    args, serve_args = parser.parse_known_args(argv)
    port = args.metrics_export_port
    if port_in_use(port):
        print(
            f"serve_local: port {port} (Ray's metrics) is in use; stop what listens there or "
            "choose another (`vision-serve run --metrics-port N`; `make run METRICS_PORT=N`)",
            file=sys.stderr,
        )
        return 2
    # `serve run` would take a RAY_ADDRESS as a cluster to join; this Ray is the one it uses.
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray.serve.scripts import cli

    # "serve": the namespace `serve run` itself gives the Ray it starts.
    ray.init(address="local", namespace="serve", _metrics_export_port=port)
    cli.main(args=["run", *serve_args], prog_name="serve")  # exits, with serve run's status
    return 0


if __name__ == "__main__":
    sys.exit(main())
