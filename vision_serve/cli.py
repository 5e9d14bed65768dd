"""`vision-serve`: run the service, send it images, show or render its config.

    vision-serve run [CONFIG]            # serve CONFIG (default: the packaged serve_config.yaml)
    vision-serve client PATH... [--url]  # the command-line client (vision_client)
    vision-serve config show             # the packaged serve_config.yaml, comments and all
    vision-serve config render OVERLAY   # that config with overlays merged in

Nothing here imports Ray or torch: `run` hands over to Serve's own `serve run`, so the command
starts fast and `client` and `config` work wherever the package is installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from vision_serve.files import SERVE_CONFIG
from vision_serve.serve_env import missing_from
from vision_serve.serve_local import METRICS_EXPORT_PORT

PROG = "vision-serve"
EPILOG = f"""\
examples:
  {PROG} run                  # the two shipped models: HTTP on :8000, gRPC on :9000
  {PROG} config show > my_config.yaml && {PROG} run my_config.yaml
  {PROG} client photos/ --option score_threshold=0.5 --out results.jsonl
  {PROG} client --help        # every client option"""


def serve_command(config: Path, address: str, metrics_port: int) -> list[str]:
    """Serve's own `serve run` for `config`, from the environment this command runs in: on a
    local Ray of its own with its metrics on `metrics_port` (`serve_local`), or on `address`."""
    if address == "local":
        return [
            *(sys.executable, "-m", "vision_serve.serve_local"),
            *(f"--metrics-export-port={metrics_port}", str(config)),
        ]
    scripts = sysconfig.get_path("scripts")
    serve = shutil.which("serve", path=scripts) or shutil.which("serve")
    if serve is None:
        raise SystemExit(f"{PROG} run: no `serve` command (ray[serve]) beside {sys.executable}")
    return [serve, "run", "--address", address, str(config)]


def run(config: Path, address: str, metrics_port: int, dry_run: bool) -> int:
    if not config.is_file():
        raise SystemExit(f"{PROG} run: no config file at {config}")
    command = serve_command(config.resolve(), address, metrics_port)
    settings = missing_from(os.environ)  # serve.env's; a variable already set wins
    if dry_run:
        for key, value in settings.items():
            print(f"{key}={value}")
        print(shlex.join(command))
        return 0
    # exec, so that signals reach `serve run` itself (Ctrl-C shuts the application down).
    os.execve(command[0], command, {**os.environ, **settings})


def show_config() -> int:
    sys.stdout.write(SERVE_CONFIG.read_text())
    return 0


def render_config(overlays: Sequence[Path], base: Path) -> int:
    from vision_serve.overlays import dump_config, merged_config

    sys.stdout.write(dump_config(merged_config(*overlays, base=base)))
    return 0


def client(argv: Sequence[str]) -> int:
    from vision_client.cli import main as client_main

    return client_main(argv, prog=f"{PROG} client")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="An image classification, detection and segmentation service on Ray Serve.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_p = commands.add_parser(
        "run",
        help="serve a config in the foreground (Ctrl-C stops it)",
        description="Serve CONFIG with `serve run`, on a Ray cluster of its own unless --address "
        "names one, with the package's serve.env settings (the HAProxy edge); a variable already "
        "set in the environment wins. Relative weight paths in the config (shapes/...) name "
        "files of the installed packages, so it runs from any directory.",
    )
    run_p.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=SERVE_CONFIG,
        metavar="CONFIG",
        help="a Serve config file (default: the packaged serve_config.yaml, `config show`)",
    )
    run_p.add_argument(
        "--address",
        default="local",
        help="the Ray cluster: `local` starts one for this run, `auto` joins the running one "
        "(default: %(default)s)",
    )
    run_p.add_argument(
        "--metrics-port",
        type=int,
        default=METRICS_EXPORT_PORT,
        help="with --address local: Ray's Prometheus metrics on http://127.0.0.1:PORT/metrics "
        "(default: %(default)s)",
    )
    run_p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the settings and the command instead of running them",
    )

    # Parsed by the client itself (main() hands it the rest of the line): listed for --help.
    commands.add_parser(
        "client",
        help=f"send images to a running service; one JSON line per image (`{PROG} client --help`)",
        add_help=False,
    )

    config_p = commands.add_parser("config", help="show or render the default config")
    config_commands = config_p.add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    config_commands.add_parser(
        "show", help="print the packaged serve_config.yaml, every setting explained"
    )
    render_p = config_commands.add_parser(
        "render",
        help="print a config merged with overlays (files of only what differs)",
        description="Print BASE merged with each OVERLAY in order: mappings merge key by key, "
        "named lists (applications, deployments) item by item by `name`; `!replace` replaces a "
        "value whole, `- !drop {name: X}` removes item X. The output runs with "
        f"`{PROG} run FILE`.",
    )
    render_p.add_argument("overlays", nargs="*", type=Path, metavar="OVERLAY")
    render_p.add_argument(
        "--base",
        type=Path,
        default=SERVE_CONFIG,
        help="the config to merge into (default: the packaged serve_config.yaml)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["client"]:  # every other word is the client's, --help included
        return client(args_list[1:])
    args = parser().parse_args(args_list)
    if args.command == "run":
        return run(args.config, args.address, args.metrics_port, args.dry_run)
    if args.config_command == "show":
        return show_config()
    return render_config(args.overlays, args.base)


if __name__ == "__main__":
    sys.exit(main())
