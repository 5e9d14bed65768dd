"""The whole suite runs with serve.env's Ray Serve settings, as `make run` does (HAProxy at the
edge). They are set before any test starts Ray, which hands them to every process it starts; a
variable already set in the environment wins (`RAY_SERVE_ENABLE_HA_PROXY=0 make test` runs the
suite on Serve's Python proxy)."""

from __future__ import annotations

import os

from tools.serve_env import serve_env

for _key, _value in serve_env().items():
    os.environ.setdefault(_key, _value)
