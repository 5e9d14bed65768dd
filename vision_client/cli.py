"""`python -m vision_client`: send images to the service, write one JSON line per image."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

from vision_client.retry import send
from vision_client.transport import PROTOCOLS, Transport

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "VISION_API_KEY"
# What a folder contributes: the formats the service decodes (a file named on its own is sent).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp"})
EPILOG = f"""\
Each line of the output is {{"path", "status", "body", "error", "attempts"}}: the HTTP status and
the service's JSON body (its result, or its error), or "error" when no answer came (status null);
"attempts" counts the sends, each with the same x-request-id.
The exit code is 0 when every image got a 2xx, 1 when any did not, 2 for a usage error.

example: python -m vision_client photos/ --option top_k=3 --concurrency 8 --out results.jsonl
The API key may come from ${API_KEY_ENV} instead of --api-key (it is never printed)."""


class UsageError(Exception):
    """Arguments that cannot be run: an input that does not exist, a folder without images."""


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    protocol: str
    model: str | None
    options: tuple[tuple[str, str], ...]
    concurrency: int
    timeout_s: float
    retries: int
    max_retry_wait_s: float
    api_key: str | None


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must start with http:// or https://, got {text!r}")
    return text


def parser(prog: str = "python -m vision_client") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Send images (files, or folders searched recursively) to the vision service,\n"
        "one request per image, and write one JSON line per image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help="the service (%(default)s)")
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="v1",
        help="v1: POST /v1/predict, the raw image as the body; v2: the Open Inference "
        "Protocol, POST /v2/models/NAME/infer with the image as a BYTES tensor (needs --model)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="a served model's name (GET /v1/models lists them); default: the service's default",
    )
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        type=_option,
        default=[],
        metavar="NAME=VALUE",
        help="a task option, sent as a query parameter; repeat for more (top_k=3, "
        "score_threshold=0.4, mask_format=png)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests in flight at once (%(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds for each image, retries included; what is left is sent to the service "
        "as each attempt's deadline (%(default)g)",
    )
    p.add_argument(
        "--retries",
        type=_count,
        default=3,
        metavar="N",
        help="times a request is sent again (same request id) after a dropped connection, a "
        "502, 503 or 504, or a proxy's plain 500, each after its Retry-After or a doubling "
        "backoff from 0.25 s, while --timeout leaves room; never after a 4xx (%(default)s)",
    )
    p.add_argument(
        "--max-retry-wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="the longest wait before a retry, whatever Retry-After asks (%(default)g)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the JSON lines here instead of to stdout",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown on stderr when stderr is a terminal)",
    )
    return p


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return Settings(
        url=args.url,
        protocol=args.protocol,
        model=args.model,
        options=tuple(args.options),
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        max_retry_wait_s=args.max_retry_wait,
        api_key=args.api_key or environ.get(API_KEY_ENV) or None,
    )


def find_images(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; each folder's image files (by suffix, hidden ones skipped), sorted."""
    found: list[Path] = []
    for given in inputs:
        if given.is_dir():
            images = sorted(
                p
                for p in given.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
                and p.is_file()
            )
            if not images:
                suffixes = " ".join(sorted(IMAGE_SUFFIXES))
                raise UsageError(f"{given}: no image files in this folder ({suffixes})")
            found.extend(images)
        elif given.is_file():
            found.append(given)
        else:
            raise UsageError(f"{given}: no such file or folder")
    return found


async def run(
    settings: Settings,
    paths: Sequence[Path],
    out: TextIO,
    *,
    progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Send every image, `settings.concurrency` at a time, writing each line as it is answered.

    Returns how many images did not get a 2xx. `transport` and `sleep` replace the network and
    the clock in tests.
    """
    protocol = PROTOCOLS[settings.protocol](settings.model)
    headers = {}  # each attempt also carries the image's request id and what is left of its time
    if settings.api_key:
        headers["authorization"] = f"Bearer {settings.api_key}"
    n = settings.concurrency
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    pending = iter(paths)  # shared by the workers: each takes the next image when it is free
    failed = 0
    async with httpx.AsyncClient(
        base_url=settings.url,
        headers=headers,
        timeout=settings.timeout_s,
        limits=limits,
        transport=transport,
    ) as client:
        with tqdm(
            total=len(paths), unit="image", file=sys.stderr, disable=None if progress else True
        ) as bar:

            async def worker() -> None:
                nonlocal failed
                for path in pending:
                    line = await _one(client, protocol, path, settings, sleep)
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    out.flush()
                    status = line["status"]
                    if not (isinstance(status, int) and 200 <= status < 300):
                        failed += 1
                        bar.set_postfix(failed=failed)
                    bar.update()

            await asyncio.gather(*(worker() for _ in range(min(n, len(paths)))))
    return failed


async def _one(
    client: httpx.AsyncClient,
    protocol: Transport,
    path: Path,
    settings: Settings,
    sleep: Callable[[float], Awaitable[None]],
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "path": str(path),
        "status": None,
        "body": None,
        "error": None,
        "attempts": 0,
    }
    try:
        image = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return {**line, "error": f"cannot read the file: {exc}"}
    reply = await send(
        client,
        lambda: protocol.request(client, image, settings.options),
        retries=settings.retries,
        max_wait_s=settings.max_retry_wait_s,
        request_id=uuid.uuid4().hex,  # one per image: every attempt shows as the same request
        timeout_s=settings.timeout_s,
        sleep=sleep,
    )
    line["attempts"] = reply.attempts
    if reply.response is None:
        return {**line, "error": reply.error}
    return {**line, "status": reply.response.status_code, "body": protocol.body(reply.response)}


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str = "python -m vision_client",
) -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    settings = settings_from(args, os.environ if environ is None else environ)
    if settings.protocol == "v2" and settings.model is None:
        p.error("--protocol v2 needs --model NAME (GET /v1/models lists the served models)")
    try:
        paths = find_images(args.inputs)
    except UsageError as exc:
        p.error(str(exc))  # exits with 2
    out = sys.stdout if args.out is None else args.out.open("w", encoding="utf-8")
    try:
        failed = asyncio.run(run(settings, paths, out, progress=not args.no_progress))
    except KeyboardInterrupt:
        return 130
    finally:
        if out is not sys.stdout:
            out.close()
    if failed:
        print(f"{failed} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failed else 0


def console() -> int:
    """`vision-client`, the command of the client-only install (vision_client/pyproject.toml)."""
    return main(prog="vision-client")
