"""Request parsing at the edge: options, media types, multipart bodies."""

from __future__ import annotations

import httpx
import pytest

from deployments.errors import BadRequest, InvalidOption, Overloaded, PayloadTooLarge
from deployments.items import Options
from deployments.tasks import get, parse_options
from deployments.transports.http_io import (
    MAX_PART_HEADER_BYTES,
    BodyBudget,
    MultipartReader,
    deadline_from,
    image_parts,
    media_type,
    parse_multipart,
)
from tests import settings

LIMITS = settings.limits()  # serve_config.yaml's


def test_options_parse_and_default_to_none() -> None:
    assert parse_options([("top_k", "3")], get("classification"), 100) == Options.of({"top_k": 3})
    assert parse_options([], get("detection"), 100) == Options()
    detection = parse_options(
        [("score_threshold", "0.25"), ("max_detections", "7")], get("detection"), 100
    )
    assert detection.over({"score_threshold": 0.5, "max_detections": 100}) == {
        "score_threshold": 0.25,
        "max_detections": 7,
    }
    masks = parse_options({"mask_format": "png", "top_k": None}, get("segmentation"), 100)
    assert masks.get("mask_format") == "png"


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
        ([("mask_format", "svg")], "segmentation", "mask_format must be one of rle, png"),
        ([("mask_format", "png")], "detection", "applies to segmentation and instance_seg"),
        ([("top_k", "3")], "segmentation", "applies to classification"),
    ],
)
def test_bad_options_name_the_parameter(
    pairs: list[tuple[str, str]], task: str, names: str
) -> None:
    with pytest.raises(InvalidOption, match=names) as caught:
        parse_options(pairs, get(task), 100)
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
    parts = parse_multipart(body, boundary, LIMITS)
    assert [p.data for p in parts] == blobs
    assert [p.filename for p in parts] == [f"{i}.jpg" for i in range(5)]
    assert {p.content_type for p in parts} == {"image/jpeg"}


def test_multipart_needs_image_parts_and_rejects_strangers() -> None:
    body, boundary = _multipart([("images", ("a.jpg", b"x", "image/jpeg"))])
    with pytest.raises(BadRequest, match="'images'"):
        image_parts(parse_multipart(body, boundary, LIMITS), 10)
    with pytest.raises(BadRequest, match="boundary"):
        parse_multipart(body, None, LIMITS)
    body, boundary = _multipart([("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(3)])
    with pytest.raises(PayloadTooLarge, match="limit is 2"):
        image_parts(parse_multipart(body, boundary, LIMITS), 2)


def test_deadline_from_header_leaves_a_margin_before_the_proxy_gives_up() -> None:
    assert deadline_from(None, 30.0, 100.0, 120.0) == pytest.approx(129.75)
    assert deadline_from("1", 30.0, 100.0, 120.0) == pytest.approx(100.9)
    assert deadline_from(2.5, 30.0, 100.0, 120.0) == pytest.approx(102.25)
    with pytest.raises(BadRequest, match="x-request-timeout-seconds"):
        deadline_from("soon", 30.0, 100.0, 120.0)


@pytest.mark.parametrize("value", ["0", "-1", "0.0", "nan", "inf", "-inf", 0.0, -3.0])
def test_a_client_cannot_switch_its_deadline_off(value: str | float) -> None:
    with pytest.raises(BadRequest, match="positive, finite") as caught:
        deadline_from(value, 30.0, 100.0, 120.0)
    assert caught.value.status == 400
    with pytest.raises(BadRequest, match="timeout_s"):
        deadline_from(value, 30.0, 100.0, 120.0, name="timeout_s")


def test_a_deadline_above_the_cap_is_capped() -> None:
    assert deadline_from("1e9", 30.0, 100.0, 120.0) == pytest.approx(219.75)
    assert deadline_from(None, 30.0, 100.0, 10.0) == pytest.approx(109.75)


def _body_of_tiny_parts(count: int) -> tuple[bytes, str]:
    boundary = "b"
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nx\r\n'
    return part * count + b"--b--\r\n", boundary


def test_streaming_multipart_gives_the_same_parts_fed_in_any_chunks() -> None:
    blobs = [bytes([i]) * (3000 + i) for i in range(4)]
    body, boundary = _multipart(
        [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    )
    for size in (1, 7, 100, len(body)):
        reader = MultipartReader(boundary, LIMITS)
        for start in range(0, len(body), size):
            reader.feed(body[start : start + size])
        assert [p.data for p in reader.finish()] == blobs


def test_every_part_counts_and_the_limit_is_hit_inside_the_chunk() -> None:
    body, boundary = _body_of_tiny_parts(1_000_000)  # ~50 MB of parts named 'x'
    reader = MultipartReader(boundary, settings.limits(max_images_per_request=64))
    with pytest.raises(PayloadTooLarge, match="more than 64 parts") as caught:
        reader.feed(body[: 64 * 1024])  # the first chunk is enough to know
    assert "max_images_per_request" in caught.value.message
    assert len(reader.parts) == 64


def test_part_headers_and_part_data_are_bounded_while_streaming() -> None:
    huge_header = b"--b\r\n" + (b"X-Junk: " + b"a" * 3000 + b"\r\n") * 7
    reader = MultipartReader("b", settings.limits())
    over = f"headers are over the limit of {MAX_PART_HEADER_BYTES} bytes"
    with pytest.raises(PayloadTooLarge, match=over):
        reader.feed(huge_header)
    big, boundary = _multipart([("image", ("a.png", b"z" * 5000, "image/png"))])
    with pytest.raises(PayloadTooLarge, match="part 1 is over the limit of 4096 bytes"):
        parse_multipart(big, boundary, settings.limits(max_image_bytes=4096))


def test_a_boundary_the_parser_refuses_is_a_400() -> None:
    with pytest.raises(BadRequest, match="boundary"):
        MultipartReader("b" * 300, LIMITS)


def test_a_body_that_ends_inside_a_part_is_malformed() -> None:
    body, boundary = _multipart([("image", ("a.png", b"z" * 100, "image/png"))])
    with pytest.raises(BadRequest, match="malformed"):
        parse_multipart(body[:-20], boundary, LIMITS)


def test_body_budget_reserves_and_always_gives_back() -> None:
    budget = BodyBudget(1000)
    first, second = budget.reservation(), budget.reservation()
    first.ensure(600)
    first.ensure(400)  # already held: nothing more
    with pytest.raises(Overloaded, match="budget of 1000 bytes") as caught:
        second.ensure(500)
    assert caught.value.status == 503 and budget.held == 600
    second.ensure(400)
    assert budget.held == 1000
    first.release()
    second.release()
    second.release()  # twice is harmless
    assert budget.held == 0
