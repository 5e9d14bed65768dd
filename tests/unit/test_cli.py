"""`vision-serve`: each command does what its --help says, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from vision_serve import cli
from vision_serve.files import SERVE_CONFIG
from vision_serve.serve_env import read_env_file
from vision_serve.serve_local import METRICS_EXPORT_PORT

ROOT = Path(__file__).resolve().parents[2]


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vision-serve ")
    for command in ("run", "client", "config"):
        assert f"\n    {command} " in out


def test_run_serves_the_packaged_config_with_serve_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in read_env_file():  # tests/conftest.py set them for the suite
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_RETRIES", "1")  # a variable already set wins
    assert cli.main(["run", "--dry-run"]) == 0
    *lines, command = capsys.readouterr().out.splitlines()
    # A local Ray of its own, its metrics on the fixed port, then Serve's own `serve run`.
    assert command.split()[1:] == [
        *("-m", "vision_serve.serve_local", f"--metrics-export-port={METRICS_EXPORT_PORT}"),
        str(SERVE_CONFIG.resolve()),
    ]
    settings = dict(line.split("=", 1) for line in lines)
    expected = read_env_file()
    del expected["RAY_SERVE_HAPROXY_RETRIES"]
    assert expected.items() <= settings.items()
    assert "RAY_SERVE_HAPROXY_RETRIES" not in settings


def test_run_on_a_running_cluster_is_serve_run_and_the_metrics_port_moves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["run", "--address", "auto", "--dry-run"]) == 0
    command = capsys.readouterr().out.splitlines()[-1].split()
    assert Path(command[0]).name == "serve"
    assert command[1:] == ["run", "--address", "auto", str(SERVE_CONFIG.resolve())]
    assert cli.main(["run", "--metrics-port", "9191", "--dry-run"]) == 0
    assert "--metrics-export-port=9191" in capsys.readouterr().out.splitlines()[-1].split()


def test_run_refuses_a_config_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no config file"):
        cli.main(["run", str(tmp_path / "missing.yaml")])


def test_config_show_is_serve_config_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show"]) == 0
    assert capsys.readouterr().out == (ROOT / "serve_config.yaml").read_text()


def test_config_render_merges_overlays_as_tools_render_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overlay = ROOT / "configs" / "overlays" / "shapes_segmenter.yaml"
    assert cli.main(["config", "render", str(overlay)]) == 0
    rendered = capsys.readouterr().out
    committed = (ROOT / "configs" / "shapes_segmenter.yaml").read_text()
    assert committed.endswith(rendered)  # the committed file adds only its header comments


def test_client_hands_every_word_to_the_client(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["client", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: vision-serve client ")
