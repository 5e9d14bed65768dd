"""serve.env reaches `make run`'s command whole, and scripts/haproxy-edge edits Serve's HAProxy
config as the retry policy needs (run on a config file, with `true` as the real binary)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.serve_env import EDGE_WRAPPER, ROOT, read_env_file

SERVE_LIKE_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    option redispatch 1
    retry-on conn-failure empty-response junk-response
frontend http_frontend
    bind *:8000
frontend stats
    bind *:8404
frontend prometheus
    bind :9101
"""


def test_the_retry_policy_is_replayable_and_bounded() -> None:
    settings = read_env_file()
    words = settings["RAY_SERVE_HAPROXY_RETRY_ON"].split(" ")
    assert {"conn-failure", "empty-response"} <= set(words)
    assert not {"503", "504", "response-timeout"} & set(words), "answers, not deaths"
    assert 1 <= int(settings["RAY_SERVE_HAPROXY_RETRIES"]) <= 5


def test_exec_mode_passes_values_with_spaces_and_lets_the_caller_win() -> None:
    show = "import os; print(os.environ['RAY_SERVE_HAPROXY_RETRY_ON']);"
    show += "print(os.environ['RAY_SERVE_HAPROXY_RETRIES'])"
    env = {**os.environ, "RAY_SERVE_HAPROXY_RETRIES": "1"}
    env.pop("RAY_SERVE_HAPROXY_RETRY_ON", None)
    done = subprocess.run(
        [sys.executable, "-m", "tools.serve_env", sys.executable, "-c", show],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    retry_on, retries = done.stdout.splitlines()
    assert retry_on == read_env_file()["RAY_SERVE_HAPROXY_RETRY_ON"]
    assert retries == "1"


def test_the_edge_wrapper_buffers_small_bodies_and_keeps_stats_on_loopback(
    tmp_path: Path,
) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(SERVE_LIKE_CONFIG)
    env = {**os.environ, "VISION_HAPROXY_BINARY": "true"}
    env.pop("RAY_SERVE_HAPROXY_TUNE_BUFSIZE", None)
    for _ in range(2):  # Serve reloads with the same file: the rule is added once
        subprocess.run([str(EDGE_WRAPPER), "-db", "-f", str(config)], env=env, check=True)
    lines = [line.strip() for line in config.read_text().splitlines()]
    frontend = lines.index("frontend http_frontend")
    # A body that fits in one 16 KiB buffer with its headers is read whole, so it can be replayed.
    rule = "http-request wait-for-body time 10s if { req.hdr_val(content-length) le 12288 }"
    assert lines[frontend + 1] == rule
    assert sum("wait-for-body" in line for line in lines) == 1
    assert "bind *:8000" in lines  # the serving frontend keeps http_options.host
    assert "bind 127.0.0.1:8404" in lines and "bind 127.0.0.1:9101" in lines
