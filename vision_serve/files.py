"""The files the package carries beside its modules, found from the package, never the cwd.

In a checkout they are links to the files to edit at the top of the repo (serve_config.yaml,
serve.env, scripts/haproxy-edge); a wheel carries copies. The shipped weights are package data
of `shapes` and the Open Inference Protocol's .proto of `deployments.oip_proto`.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVE_CONFIG = HERE / "serve_config.yaml"  # the default config: `vision-serve run` with no CONFIG
SERVE_ENV = HERE / "serve.env"  # Ray Serve's process settings (vision_serve.serve_env)
EDGE_WRAPPER = HERE / "haproxy-edge"  # the HAProxy binary Serve runs (vision_serve.serve_env)
