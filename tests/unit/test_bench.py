"""The benchmark's pure maths: percentiles, batch-size histograms, summaries and the targets."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from bench.images import multipart_body
from bench.loadgen import parse_response
from bench.run import request_counts
from bench.service import bench_config, set_path
from bench.stats import (
    Sample,
    batch_fill_target,
    effective_batch_wait_ms,
    forward_passes,
    histogram,
    idle_latency_target,
    p99_target,
    pass_mean_batch,
    percentile,
    summarise,
    throughput_target,
    weighted_mean_batch,
)
from deployments.http import image_parts, parse_multipart


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = list(np.random.default_rng(0).exponential(20.0, size=137))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_batch_size_means_per_item_and_per_pass() -> None:
    # One pass of 8 (8 items report 8) and two passes of 1 (2 items report 1).
    hist = histogram([8] * 8 + [1, 1])
    assert hist == {1: 2, 8: 8}
    assert weighted_mean_batch(hist) == pytest.approx(66 / 10)
    assert forward_passes(hist) == pytest.approx(3)
    assert pass_mean_batch(hist) == pytest.approx(10 / 3)
    assert math.isnan(weighted_mean_batch({}))


def test_summarise_counts_throughput_errors_and_timings() -> None:
    ok = [
        Sample(
            sent=0.0,
            done=0.010 * (i + 1),
            status=200,
            images=1,
            batch_sizes=[4],
            timings=[{"batch_wait": 2.0, "inference": 6.0, "total": 10.0}],
        )
        for i in range(10)
    ]
    bad = [Sample(sent=0.0, done=0.5, status=503, images=0)]
    s = summarise(ok + bad, window_s=2.0)
    assert s["requests"] == 11 and s["ok_requests"] == 10 and s["images"] == 10
    assert s["throughput_ips"] == pytest.approx(5.0)
    assert s["errors"] == 1 and s["errors_by_status"] == {"503": 1}
    assert s["latency_ms"]["p50"] == pytest.approx(55.0)  # errors do not count in latency
    assert s["batch_size_hist"] == {"4": 10} and s["batch_size_mean"] == 4
    assert s["server_ms"]["inference"] == 6.0 and math.isnan(s["server_ms"]["preprocess"])


def test_parse_response_single_multipart_and_errors() -> None:
    single = orjson.dumps({"batch_size": 8, "timings_ms": {"inference": 70.0}})
    s = parse_response(200, single, 1.0, 1.25, 1)
    assert (s.images, s.batch_sizes, s.latency_ms) == (1, [8], pytest.approx(250.0))
    multi = orjson.dumps(
        {"results": [{"batch_size": 3, "timings_ms": {}}, {"item_id": "x", "error": {}}]}
    )
    m = parse_response(200, multi, 0.0, 1.0, 2)
    assert (m.images, m.failed_items, m.batch_sizes) == (1, 1, [3])
    assert parse_response(503, b"{}", 0.0, 1.0, 1).images == 0
    assert parse_response(200, b"not json", 0.0, 1.0, 1).status == -2


def test_multipart_body_is_what_the_ingress_parses() -> None:
    images = [b"\xff\xd8\xff" + bytes([i]) * 100 for i in range(3)]
    parts = image_parts(parse_multipart(multipart_body(images, "b0undary"), "b0undary"), 64)
    assert [p.data for p in parts] == images
    assert {p.content_type for p in parts} == {"image/jpeg"}


def test_targets_compare_with_the_right_limits() -> None:
    assert throughput_target("t", 54.0, 60.0, 0.9).passed
    assert not throughput_target("t", 53.9, 60.0, 0.9).passed
    # 32 in flight at 50 req/s queue for 640 ms on average; p99 may be 1.5 x that.
    assert p99_target("p", 960.0, 32, 50.0).passed
    assert not p99_target("p", 961.0, 32, 50.0).passed
    assert batch_fill_target("b", 7.2, 8).passed and not batch_fill_target("b", 7.1, 8).passed
    assert idle_latency_target("i", 33.0, 20.0, 10.0).passed
    assert not idle_latency_target("i", 33.1, 20.0, 10.0).passed
    assert effective_batch_wait_ms(1, 0.01) == 0.0 and effective_batch_wait_ms(8, 0.01) == 10.0


def test_request_counts_scale_with_concurrency() -> None:
    assert request_counts(1, 1, 1.0) == (3, 60)
    assert request_counts(1, 64, 1.0) == (32, 384)
    assert request_counts(8, 32, 1.0) == (16, 48)
    assert request_counts(1, 32, 0.01)[1] == 4


def test_bench_config_overrides_model_port_and_user_config() -> None:
    base = {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "name": "vision",
                "args": {"model": {"name": "resnet50", "weights": "DEFAULT", "torch_threads": 1}},
                "deployments": [
                    {
                        "name": "Model",
                        "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
                    }
                ],
            }
        ],
    }
    config = bench_config(
        base, 8100, {"max_batch_size": 1}, {"applications.vision.deployments.Model.num_replicas": 2}
    )
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8100}
    app = config["applications"][0]
    assert app["args"]["model"] == {
        "name": "resnet18",
        "weights": "none",
        "seed": 0,
        "torch_threads": 1,
    }
    assert app["deployments"][0] == {
        "name": "Model",
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.01},
        "num_replicas": 2,
    }
    assert base["http_options"]["port"] == 8000  # the base is not modified
    set_path(config, "applications.0.args.decode_threads", 1)
    assert config["applications"][0]["args"]["decode_threads"] == 1
