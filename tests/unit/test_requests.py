"""Request parsing at the edge: options, media types, multipart bodies."""

from __future__ import annotations

import httpx
import pytest

from deployments.errors import BadRequest, InvalidOption, PayloadTooLarge
from deployments.http import (
    deadline_from,
    image_parts,
    media_type,
    parse_multipart,
    parse_options,
)
from deployments.types import Options


def test_options_parse_and_default_to_none() -> None:
    assert parse_options([("top_k", "3")], "classification", 100) == Options(top_k=3)
    assert parse_options([], "detection", 100) == Options()
    assert parse_options(
        [("score_threshold", "0.25"), ("max_detections", "7")], "detection", 100
    ) == Options(score_threshold=0.25, max_detections=7)


@pytest.mark.parametrize(
    ("pairs", "task", "names"),
    [
        ([("top_k", "0")], "classification", "top_k"),
        ([("top_k", "101")], "classification", "top_k"),
        ([("top_k", "three")], "classification", "top_k"),
        ([("top_k", "2"), ("top_k", "3")], "classification", "top_k"),
        ([("score_threshold", "1.5")], "detection", "score_threshold"),
        ([("score_threshold", "nan")], "detection", "score_threshold"),
        ([("score_threshold", "-0.1")], "detection", "score_threshold"),
        ([("max_detections", "0")], "detection", "max_detections"),
        ([("max_detections", "1.5")], "detection", "max_detections"),
        ([("topk", "3")], "classification", "topk"),
        ([("top_k", "3")], "detection", "top_k"),
        ([("score_threshold", "0.3")], "classification", "score_threshold"),
    ],
)
def test_bad_options_name_the_parameter(
    pairs: list[tuple[str, str]], task: str, names: str
) -> None:
    with pytest.raises(InvalidOption, match=names) as caught:
        parse_options(pairs, task, 100)  # type: ignore[arg-type]
    assert caught.value.status == 400


def test_media_types() -> None:
    assert media_type(None) == ("application/octet-stream", {})
    assert media_type("IMAGE/JPEG") == ("image/jpeg", {})
    kind, params = media_type('multipart/form-data; boundary="abc"')
    assert (kind, params["boundary"]) == ("multipart/form-data", "abc")


def _multipart(files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files)
    body = request.read()
    _, params = media_type(request.headers["content-type"])
    return body, params["boundary"]


def test_multipart_parts_keep_their_order_and_bytes() -> None:
    blobs = [bytes([i]) * (1000 + i) for i in range(5)]
    body, boundary = _multipart(
        [("image", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
    )
    parts = parse_multipart(body, boundary)
    assert [p.data for p in parts] == blobs
    assert [p.filename for p in parts] == [f"{i}.jpg" for i in range(5)]
    assert {p.content_type for p in parts} == {"image/jpeg"}


def test_multipart_needs_image_parts_and_rejects_strangers() -> None:
    body, boundary = _multipart([("images", ("a.jpg", b"x", "image/jpeg"))])
    with pytest.raises(BadRequest, match="'images'"):
        image_parts(parse_multipart(body, boundary), 10)
    with pytest.raises(BadRequest, match="boundary"):
        parse_multipart(body, None)
    body, boundary = _multipart([("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(3)])
    with pytest.raises(PayloadTooLarge, match="limit is 2"):
        image_parts(parse_multipart(body, boundary), 2)


def test_deadline_from_header_leaves_a_margin_before_the_proxy_gives_up() -> None:
    assert deadline_from(None, None, 100.0) is None
    assert deadline_from("0", 30.0, 100.0) is None  # <= 0 turns it off, as for the proxy
    assert deadline_from(None, 30.0, 100.0) == pytest.approx(129.75)
    assert deadline_from("1", 30.0, 100.0) == pytest.approx(100.9)
    with pytest.raises(BadRequest, match="x-request-timeout-seconds"):
        deadline_from("soon", 30.0, 100.0)
