"""vision_client without a service: arguments, finding images, Retry-After, the run's JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from vision_client import cli
from vision_client.retry import DEFAULT_WAIT_S, retry_after_s, send

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _settings(*argv: str, environ: dict[str, str] | None = None) -> cli.Settings:
    return cli.settings_from(cli.parser().parse_args([*argv, "x.jpg"]), environ or {})


def test_arguments_become_settings() -> None:
    s = _settings(
        "--url=http://vision:8000/prefix",
        "--option",
        "top_k=3",
        "--option=mask_format=png",
        "--concurrency=8",
        "--timeout=2.5",
        "--retries=0",
    )
    assert s.url == "http://vision:8000/prefix"
    assert s.options == (("top_k", "3"), ("mask_format", "png"))
    assert (s.concurrency, s.timeout_s, s.retries) == (8, 2.5, 0)
    assert (s.protocol, s.api_key) == ("v1", None)


def test_api_key_from_the_flag_or_else_the_environment() -> None:
    assert _settings(environ={"VISION_API_KEY": "from-env"}).api_key == "from-env"
    flag = _settings("--api-key=from-flag", environ={"VISION_API_KEY": "from-env"})
    assert flag.api_key == "from-flag"
    assert _settings(environ={"VISION_API_KEY": ""}).api_key is None


@pytest.mark.parametrize(
    "bad",
    [
        ["--option", "top_k"],
        ["--option", "=3"],
        ["--concurrency", "0"],
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--retries", "-1"],
        ["--url", "vision:8000"],
        ["--protocol", "v3"],
    ],
)
def test_bad_arguments_are_a_usage_error(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args([*bad, "x.jpg"])
    assert exited.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_folders_give_their_image_files_sorted_and_files_are_sent_as_given(
    tmp_path: Path,
) -> None:
    for name in ["b.png", "a.JPG", "sub/c.webp", "notes.txt", ".hidden/d.jpg", "sub/.e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    named = tmp_path / "notes.txt"
    assert cli.find_images([tmp_path, named]) == [
        tmp_path / "a.JPG",
        tmp_path / "b.png",
        tmp_path / "sub" / "c.webp",
        named,
    ]


def test_a_missing_input_or_a_folder_without_images_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(cli.UsageError, match="no such file or folder"):
        cli.find_images([tmp_path / "absent.jpg"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(cli.UsageError, match="no image files"):
        cli.find_images([tmp_path])
    with pytest.raises(SystemExit) as exited:
        cli.main([str(tmp_path / "absent")], environ={})
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("Sun, 01 Mar 2026 12:00:05 GMT", 5.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),  # already past
        ("soon", None),
        ("-1", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_dates(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value, now=NOW) == seconds


def _answers(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that gives these responses in turn (the last one for ever after)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    return httpx.MockTransport(handler), seen


def _send(
    transport: httpx.MockTransport, retries: int = 3, max_wait_s: float = 30
) -> tuple[int | None, int, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> tuple[int | None, int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://vision") as client:
            reply = await send(
                client,
                lambda: client.build_request("POST", "/v1/predict", content=b"img"),
                retries=retries,
                max_wait_s=max_wait_s,
                sleep=sleep,
            )
        status = reply.response.status_code if reply.response is not None else None
        return status, reply.attempts

    status, attempts = asyncio.run(go())
    return status, attempts, waits


def _busy(retry_after: str | None) -> httpx.Response:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return httpx.Response(503, headers=headers, json={"error": {"code": "overloaded"}})


def test_a_503_is_sent_again_after_its_retry_after() -> None:
    transport, seen = _answers(_busy("2"), _busy("1"), httpx.Response(200, json={}))
    assert _send(transport) == (200, 3, [2.0, 1.0])
    assert [r.content for r in seen] == [b"img"] * 3


def test_retries_are_bounded_and_waits_capped() -> None:
    transport, seen = _answers(_busy("3600"))
    assert _send(transport, retries=2, max_wait_s=5) == (503, 3, [5.0, 5.0])
    assert len(seen) == 3


def test_a_503_without_a_readable_retry_after_waits_the_default() -> None:
    transport, _ = _answers(_busy(None), _busy("later"), httpx.Response(200, json={}))
    assert _send(transport) == (200, 3, [DEFAULT_WAIT_S, DEFAULT_WAIT_S])


@pytest.mark.parametrize("status", [400, 404, 408, 413, 422, 429])
def test_client_errors_are_never_retried(status: int) -> None:
    transport, _ = _answers(httpx.Response(status, headers={"retry-after": "1"}))
    assert _send(transport) == (status, 1, [])


def test_the_services_own_500_is_not_retried() -> None:
    error = {"error": {"code": "internal_error", "message": "logged"}, "request_id": "r"}
    transport, _ = _answers(httpx.Response(500, json=error))
    assert _send(transport) == (500, 1, [])


def test_run_writes_a_line_per_image_and_counts_failures(tmp_path: Path) -> None:
    for name, data in [("a.jpg", b"good-a"), ("b.png", b"bad"), ("c.jpg", b"good-c")]:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "d.jpg").mkdir()  # unreadable as a file: no request, a line with its error
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.content == b"bad":
            return httpx.Response(422, json={"error": {"code": "corrupt_image"}})
        return httpx.Response(200, json={"predictions": [request.content.decode()]})

    settings = cli.settings_from(
        cli.parser().parse_args(
            ["--option=top_k=3", "--api-key=k3y", "--timeout=7", "--url=http://vision/p", "x"]
        ),
        {},
    )
    paths = [tmp_path / n for n in ["a.jpg", "b.png", "c.jpg", "d.jpg"]]
    out = io.StringIO()
    failed = asyncio.run(
        cli.run(settings, paths, out, progress=False, transport=httpx.MockTransport(handler))
    )
    assert failed == 2
    lines = {Path(x["path"]).name: x for x in map(json.loads, out.getvalue().splitlines())}
    assert lines["a.jpg"] == {
        "path": str(tmp_path / "a.jpg"),
        "status": 200,
        "body": {"predictions": ["good-a"]},
        "error": None,
        "attempts": 1,
    }
    assert lines["c.jpg"]["body"] == {"predictions": ["good-c"]}
    assert (lines["b.png"]["status"], lines["b.png"]["body"]) == (
        422,
        {"error": {"code": "corrupt_image"}},
    )
    assert lines["d.jpg"]["status"] is None and "cannot read" in lines["d.jpg"]["error"]
    assert len(seen) == 3
    for request in seen:
        assert request.method == "POST"
        assert str(request.url).startswith("http://vision/p/v1/predict?")
        assert request.url.params.multi_items() == [("top_k", "3")]
        assert request.headers["authorization"] == "Bearer k3y"
        assert 6 < float(request.headers["x-request-timeout-seconds"]) <= 7  # what is left
        assert len(request.headers["x-request-id"]) == 32
        assert request.headers["content-type"] == "application/octet-stream"
    assert len({r.headers["x-request-id"] for r in seen}) == 3, "one request id per image"


def test_model_picks_the_named_models_route(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    for argv, path in [
        ([], "/v1/predict"),
        (["--model=shapes-segmenter"], "/v1/models/shapes-segmenter/predict"),
        (["--model=a/b"], "/v1/models/a%2Fb/predict"),  # a name never escapes its segment
    ]:
        settings = _settings(*argv)
        transport = httpx.MockTransport(handler)
        asyncio.run(cli.run(settings, [image], io.StringIO(), progress=False, transport=transport))
        assert seen.pop() == path


def test_v2_sends_the_image_as_a_binary_bytes_tensor(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model_name": "det", "outputs": []})

    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG-bytes")
    settings = _settings("--protocol=v2", "--model=det", "--option=score_threshold=0.3")
    out = io.StringIO()
    transport = httpx.MockTransport(handler)
    assert asyncio.run(cli.run(settings, [image], out, progress=False, transport=transport)) == 0
    (request,) = seen
    assert request.url.raw_path == b"/v2/models/det/infer"
    body = request.content
    head_length = int(request.headers["inference-header-content-length"])
    header = json.loads(body[:head_length])
    assert header["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 14}}
    ]
    assert header["parameters"] == {"score_threshold": "0.3"}
    element = body[head_length:]
    assert int.from_bytes(element[:4], "little") == 10 and element[4:] == b"\x89PNG-bytes"
    assert json.loads(out.getvalue())["body"] == {"model_name": "det", "outputs": []}


def test_v2_without_a_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--protocol=v2", "x.jpg"], {})
    assert exit_.value.code == 2
    assert "needs --model" in capsys.readouterr().err


def test_run_without_an_answer_records_the_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = _settings("--retries=2")
    out = io.StringIO()
    image = Path(__file__)  # any readable file
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    transport = httpx.MockTransport(handler)
    failed = asyncio.run(
        cli.run(settings, [image], out, progress=False, transport=transport, sleep=sleep)
    )
    line = json.loads(out.getvalue())
    assert failed == 1
    assert (line["status"], line["attempts"], waits) == (None, 3, [0.25, 0.5])
    assert line["error"] == "ConnectError: connection refused"


def test_run_keeps_concurrency_requests_in_flight(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"x")
    in_flight = peak = 0
    together = asyncio.Barrier(3)  # each request waits until three are in flight

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await together.wait()
        in_flight -= 1
        return httpx.Response(200, json={})

    async def go() -> int:
        run = cli.run(
            _settings("--concurrency=3"),
            paths,
            io.StringIO(),
            progress=False,
            transport=httpx.MockTransport(handler),
        )
        return await asyncio.wait_for(run, timeout=10)  # fewer than three would never meet

    assert asyncio.run(go()) == 0
    assert peak == 3
