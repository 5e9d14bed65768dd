"""The benchmark's pure maths: percentiles, batch-size histograms, summaries and the targets."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench import report
from bench.images import multipart_body
from bench.loadgen import parse_response
from bench.peers import rayserve_batch
from bench.peers.rayserve_plain import serve_config as plain_serve_config
from bench.peers.torchserve_handler import ClassifierHandler
from bench.run import request_counts
from bench.service import bench_config, torchserve_properties
from bench.stats import (
    SCORE_TOLERANCE,
    Sample,
    arrival_offsets,
    batch_fill_target,
    best_of,
    ceiling_target,
    cores_per_1000_ips,
    effective_batch_wait_ms,
    forward_cpu_per_image,
    forward_passes,
    histogram,
    idle_latency_target,
    mismatch_target,
    not_measured,
    open_loop_plan,
    p99_target,
    pass_mean_batch,
    peer_latency_target,
    percentile,
    process_group,
    ratio_target,
    serving_overhead,
    summarise,
    throughput_target,
    top_k_matches,
    weighted_mean_batch,
    with_join_tolerances,
)
from deployments.transports.http_io import image_parts, parse_multipart
from tests import settings
from tools.serve_process import set_path


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
    parts = image_parts(
        parse_multipart(multipart_body(images, "b0undary"), "b0undary", settings.limits()), 64
    )
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
    assert request_counts(8, 4, 1.0) == (3, 12)
    assert request_counts(8, 32, 1.0) == (16, 96)
    assert request_counts(1, 32, 0.01)[1] == 4


def test_bench_config_overrides_model_port_and_user_config() -> None:
    base = {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "name": "vision",
                "args": {
                    "models": [
                        {
                            "name": "resnet",
                            "model": {"name": "resnet50", "weights": "DEFAULT", "torch_threads": 1},
                        },
                        {"name": "other", "model": {"name": "resnet34"}},
                    ],
                    "default_model": "resnet",
                },
                "deployments": [
                    {
                        "name": "Model",
                        "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
                    },
                    {"name": "Model-other", "num_replicas": 1},
                ],
            }
        ],
    }
    config = bench_config(
        base, 8100, {"max_batch_size": 1}, {"applications.vision.deployments.Model.num_replicas": 2}
    )
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8100}
    app = config["applications"][0]
    (served,) = app["args"]["models"]  # the benchmark's model alone, as the default
    assert app["args"]["default_model"] == served["name"]
    assert served["model"] == {
        "name": "resnet18",
        "weights": "none",
        "seed": 0,
        "channels_last": True,
        "torch_threads": 1,
    }
    assert [d["name"] for d in app["deployments"]] == ["Model"]
    assert app["deployments"][0] == {
        "name": "Model",
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.01},
        "num_replicas": 2,
    }
    assert base["http_options"]["port"] == 8000  # the base is not modified
    set_path(config, "applications.0.args.decode_threads", 1)
    assert config["applications"][0]["args"]["decode_threads"] == 1


REF_A = {
    "class_ids": [238, 58, 381, 590, 76, 10, 11],
    "scores": [0.0137, 0.0118, 0.0105, 0.0077, 0.0067, 0.006, 0.005],
}
REF_B = {
    "class_ids": [238, 58, 381, 590, 76, 10, 11],
    "scores": [0.0235, 0.0171, 0.0152, 0.0095, 0.0081, 0.007, 0.006],
}


def _preds(
    ref: dict[str, list[float]], order: tuple[int, ...] = (0, 1, 2, 3, 4)
) -> list[dict[str, float]]:
    return [{"class_id": ref["class_ids"][i], "score": ref["scores"][i] + 1e-8} for i in order]


def test_top_k_matches_by_scores_not_just_classes() -> None:
    assert top_k_matches(_preds(REF_A), REF_A)
    assert top_k_matches(_preds(REF_A, (0, 2, 1, 3, 4)), REF_A)  # a near-tie swapped
    # Same five classes (a random model ranks them first for every image), other scores.
    assert not top_k_matches(_preds(REF_B), REF_A)
    assert not top_k_matches(_preds(REF_A)[:4], REF_A)  # too few
    wrong = _preds(REF_A)
    wrong[4] = {"class_id": 999, "score": REF_A["scores"][4]}
    assert not top_k_matches(wrong, REF_A)


def test_join_tolerance_is_half_the_distance_to_the_nearest_other_image() -> None:
    # A deep random model on a GPU: peaky scores that move by ~1e-2 between batch compositions.
    a = {"class_ids": [713, 440, 568, 988, 92, 11], "scores": [0.6, 0.24, 0.09, 0.03, 0.02, 0.01]}
    b = {"class_ids": [713, 568, 440, 92, 988, 11], "scores": [0.79, 0.11, 0.08, 0.01, 0.005, 0.0]}
    c = {"class_ids": [713, 440, 568, 988, 92, 11], "scores": [0.6, 0.24, 0.09, 0.03, 0.02, 1e-5]}
    refs = with_join_tolerances({"a": a, "b": b})
    assert refs["a"]["tolerance"] == pytest.approx(0.095) == refs["b"]["tolerance"]
    noisy_a = [{"class_id": p["class_id"], "score": p["score"] + 0.01} for p in _preds(a)]
    assert top_k_matches(noisy_a, refs["a"]) and not top_k_matches(noisy_a, refs["b"])
    assert not top_k_matches(noisy_a, a)  # the fixed CPU tolerance would call it a mis-join
    # Two images whose top-5 scores agree keep the floor (a `c` answer is never called `a`'s).
    assert with_join_tolerances({"a": a, "c": c})["a"]["tolerance"] == SCORE_TOLERANCE


def test_parse_response_counts_mis_joined_items() -> None:
    single = orjson.dumps({"predictions": _preds(REF_A), "batch_size": 8})
    ok = parse_response(200, single, 0.0, 1.0, 1, (REF_A,))
    assert (ok.checked, ok.mismatched) == (1, 0)
    swapped = parse_response(200, single, 0.0, 1.0, 1, (REF_B,))
    assert (swapped.checked, swapped.mismatched) == (1, 1)
    multi = orjson.dumps(
        {
            "results": [
                {"predictions": _preds(REF_B), "batch_size": 2},
                {"item_id": "x", "error": {}},
                {"predictions": _preds(REF_B), "batch_size": 2},
            ]
        }
    )
    m = parse_response(200, multi, 0.0, 1.0, 3, (REF_A, REF_B, REF_B))
    assert (m.images, m.failed_items, m.checked, m.mismatched) == (2, 1, 2, 1)
    # An answer without batch_size (a peer) still counts; no refs means no check.
    bare = parse_response(200, orjson.dumps({"predictions": []}), 0.0, 1.0, 1)
    assert (bare.images, bare.batch_sizes, bare.checked) == (1, [], 0)
    assert summarise([ok, swapped], 1.0)["mismatched_items"] == 1


def test_process_groups() -> None:
    for role in ("Ingress", "Preprocessor", "Model", "Postprocessor", "Classifier"):
        assert process_group(role) == role
    assert process_group("HTTP proxy") == "HTTP proxy" and process_group("raylet") == "raylet"
    for role in ("gcs_server", "controller", "dashboard", "ray::DashboardAgent", "other (sh)"):
        assert process_group(role) == "GCS/controller/other"
    assert process_group("LitServe worker") == "LitServe worker"


def test_forward_cpu_per_image_picks_the_nearest_size() -> None:
    table = {"1": 60.0, "2": 50.0, "8": 40.0}
    assert forward_cpu_per_image(table, 8) == 40.0
    assert forward_cpu_per_image(table, 7) == 40.0
    assert forward_cpu_per_image(table, 3) == 50.0
    assert math.isnan(forward_cpu_per_image({}, 1))


def test_serving_overhead_takes_forward_and_decode_out_of_their_processes() -> None:
    # 10 images: 8 in a pass of 8, 2 in passes of 1; forward 40 ms/img at 8, 60 at 1; decode 4.
    by_role = {
        "Model": 0.440 + 0.012 * 10,  # forward 8 x 40 + 2 x 60 = 440 ms, + 12 ms/img
        "Preprocessor": 0.04 + 0.02,  # decode 40 ms + 2 ms/img
        "Ingress": 0.05,
        "HTTP proxy": 0.03,
        "raylet": 0.01,
        "gcs_server": 0.005,
        "controller": 0.005,
    }
    o = serving_overhead(
        by_role, 10, {"8": 8, "1": 2}, 4.0, {"1": 60.0, "8": 40.0}, "Model", "Preprocessor"
    )
    assert o["forward_ms"] == pytest.approx(44.0) and o["decode_ms"] == pytest.approx(4.0)
    g = o["by_group_ms"]
    assert g["Model"] == pytest.approx(12.0) and g["Preprocessor"] == pytest.approx(2.0)
    assert g["Ingress"] == pytest.approx(5.0) and g["GCS/controller/other"] == pytest.approx(1.0)
    assert list(g) == [
        "Ingress",
        "Preprocessor",
        "Model",
        "HTTP proxy",
        "raylet",
        "GCS/controller/other",
    ]
    assert o["total_ms"] == pytest.approx(12 + 2 + 5 + 3 + 1 + 1)
    # A peer that does both in one process; items without a batch size count at the largest.
    p = serving_overhead(
        {"Classifier": 0.5}, 10, {}, 4.0, {"1": 60.0, "8": 40.0}, "Classifier", "Classifier"
    )
    assert p["by_group_ms"] == {"Classifier": pytest.approx(50 - 40 - 4)}
    # A renamed process is not silently dropped: the work lands in "unattributed".
    q = serving_overhead({"Worker": 0.5}, 10, {}, 4.0, {"8": 40.0}, "Model", "Model")
    assert q["by_group_ms"]["unattributed"] == pytest.approx(-44.0)
    assert math.isnan(serving_overhead({}, 0, {}, 4.0, {"8": 40.0}, "M", "M")["total_ms"])


def test_arrivals_and_open_loop_plan() -> None:
    uniform = arrival_offsets(4.0, 5, "uniform")
    assert uniform == [0.0, 0.25, 0.5, 0.75, 1.0]
    poisson = arrival_offsets(20.0, 4000, "poisson", seed=3)
    assert poisson == arrival_offsets(20.0, 4000, "poisson", seed=3)  # seeded
    assert poisson[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(poisson))
    assert 4000 / poisson[-1] == pytest.approx(20.0, rel=0.05)
    assert arrival_offsets(0.0, 10) == []
    with pytest.raises(ValueError, match="poisson or uniform"):
        arrival_offsets(1.0, 3, "bursty")
    plan = open_loop_plan(20.0, (0.5, 1.2), 10.0)
    assert plan == [(0.5, 10.0, 100), (1.2, 24.0, 240)]
    assert open_loop_plan(1.0, (0.5,), 10.0, min_requests=20) == [(0.5, 0.5, 20)]
    assert open_loop_plan(0.0, (0.5,), 10.0) == []


def test_new_target_forms() -> None:
    assert ratio_target("r", 34.0, 40.0, 0.85, "raw").passed
    assert not ratio_target("r", 33.9, 40.0, 0.85, "raw").passed
    assert not ratio_target("r", 1.0, math.nan, 1.0, "plain").passed
    assert ceiling_target("c", 10.0, 10.0, "ms/img").passed
    assert not ceiling_target("c", math.nan, 10.0, "ms/img").passed
    assert peer_latency_target("l", 95.0, 90.0, 5.0).passed
    assert not peer_latency_target("l", 95.1, 90.0, 5.0).passed
    assert mismatch_target("m", 0, 10).passed
    assert not mismatch_target("m", 1, 10).passed and not mismatch_target("m", 0, 0).passed


def test_plain_peer_config_takes_the_graph_model_args() -> None:
    graph = {
        "proxy_location": "EveryNode",
        "applications": [{"name": "vision", "args": {"model": {"name": "resnet18"}}}],
    }
    cfg = plain_serve_config(graph, 8100)
    assert cfg["http_options"] == {"host": "127.0.0.1", "port": 8100}
    app = cfg["applications"][0]
    assert app["import_path"] == "bench.peers.rayserve_plain:build_app"
    assert app["args"] == {"app_args": {"model": {"name": "resnet18"}}}
    assert app["deployments"] == [{"name": "Classifier", "ray_actor_options": {"num_cpus": 1}}]


def test_plain_peer_is_placed_on_a_gpu_when_the_graph_model_is() -> None:
    model = {"name": "Model", "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.5}}
    graph = {"applications": [{"name": "vision", "args": {}, "deployments": [model]}]}
    (deployment,) = plain_serve_config(graph, 8100)["applications"][0]["deployments"]
    assert deployment["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}


def _point(c: int, ips: float, p50: float, batch: float, cpu_s: float, images: int) -> dict:
    summary = {
        "requests": images,
        "ok_requests": images,
        "images": images,
        "throughput_ips": ips,
        "throughput_rps": ips,
        "latency_ms": {"mean": p50, "p50": p50, "p90": p50, "p99": 2 * p50, "max": 2 * p50},
        "errors": 0,
        "errors_by_status": {},
        "checked_items": images,
        "mismatched_items": 0,
        "batch_size_hist": {"8": images} if batch == 8 else {"1": images},
        "batch_size_mean": batch,
        "server_ms": dict.fromkeys(
            ("preprocess", "batch_wait", "inference", "postprocess", "total"), 1.0
        ),
    }
    cpu = {"wall_s": 1.0, "service_s": cpu_s, "client_s": 0.0, "other_s": 0.0, "by_role_s": {}}
    return {
        "loop": "closed",
        "concurrency": c,
        "summary": summary,
        "cpu": cpu,
        "wall_s": 1.0,
        "cores_per_1000_ips": cores_per_1000_ips(cpu_s, images),
    }


def _open(p50: float, fraction: float = 0.5) -> dict:
    return dict(
        _point(0, 30.0, p50, 8, 1.0, 100),
        loop="open",
        fraction_of_peak=fraction,
        offered_rps=28.0,
        marks={"send_lag_ms_p99": 0.5},
    )


def _cfg(system: str, per_request: int, points: list[dict]) -> dict:
    return {
        "system": system,
        "description": system,
        "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        "images_per_request": per_request,
        "image_set": "target",
        "forward_role": "Model",
        "decode_role": "Preprocessor",
        "points": points,
        "open_loop": [],
        "peak_rps": 0.0,
    }


META = {
    "label": "t",
    "started": "now",
    "cpus": 2,
    "model": "resnet18",
    "ray": "r",
    "torch": "t",
    "commit": "c",
    "command": "x",
}


def test_report_targets_and_tables_from_one_run() -> None:
    batch8 = _cfg(
        "graph", 1, [_point(1, 11.0, 90.0, 1, 1.0, 60), _point(32, 35.0, 900.0, 8, 2.0, 192)]
    )
    batch8["points"][1]["overhead"] = {
        "total_ms": 7.5,
        "by_group_ms": {"Ingress": 7.5},
        "forward_ms": 40.0,
        "decode_ms": 4.0,
    }
    batch8["open_loop"] = [_open(200.0, 0.8), _open(200.0)]
    multi = _cfg("graph", 8, [_point(4, 39.0, 800.0, 8, 2.0, 96)])
    multi["points"][0]["overhead"] = {
        "total_ms": 5.0,
        "by_group_ms": {},
        "forward_ms": 40.0,
        "decode_ms": 4.0,
    }
    # Two plain Ray Serve apps: plain-batch has the better throughput, plain the better p50.
    plain = _cfg(
        "plain", 1, [_point(1, 12.0, 86.0, 1, 1.0, 60), _point(32, 30.0, 1000.0, 3, 2.0, 192)]
    )
    plain["points"][1]["summary"]["mismatched_items"] = 1
    plain["open_loop"] = [_open(190.0)]
    plain_batch = _cfg(
        "plain-batch", 1, [_point(1, 10.0, 80.0, 1, 1.0, 60), _point(32, 33.0, 970.0, 8, 2.0, 192)]
    )
    plain_batch["open_loop"] = [_open(250.0)]
    lit = _cfg(
        "litserve", 1, [_point(1, 12.0, 85.0, 1, 1.0, 60), _point(32, 36.0, 880.0, 8, 1.0, 192)]
    )
    result = {
        "meta": META,
        "raw": {
            "throughput_ips": 40.0,
            "single_p50_ms": 30.0,
            "decode_cpu_ms_per_image": 4.0,
            "forward_cpu_ms_per_image_by_batch": {"1": 60.0, "8": 40.0},
            "cores_per_1000_ips": 48.0,
        },
        "configs": {
            "batch8": batch8,
            "multipart8": multi,
            "plain": plain,
            "plain-batch": plain_batch,
            "litserve": lit,
        },
    }
    targets = report.targets(result)
    verdicts = {t.name: t for t in targets}
    assert [t.verdict for t in targets] == [
        "PASS",  # 1 in flight: 90 <= LitServe 85 + 10
        "MISS",  # 32 in flight: 35 < LitServe 36
        "PASS",  # 32 in flight: 35 >= plain-batch 33 (the better plain app by img/s)
        "MISS",  # multipart8: 39 < 1.0 x in-process 40
        "PASS",  # batch8 overhead 7.5 <= 8
        "MISS",  # multipart8 overhead 5.0 > 3
        "MISS",  # open loop at 0.5: 200 > plain 190 (the better plain app by p50)
        "PASS",  # batch8 c=32 mean batch 8
        "PASS",  # multipart8 c=4 (32 images in flight) mean batch 8
        "PASS",  # graph: 0 mis-joined
        "MISS",  # plain: 1 mis-joined
        "PASS",  # plain-batch
        "PASS",  # LitServe
    ]
    better = verdicts["32 in flight: batch8 img/s >= 1.0 x the better plain Ray Serve app"]
    assert "plain-batch" in better.detail and "33.0" in better.detail
    opened = verdicts["open loop at 0.5 x peak: batch8 p50 <= the better plain Ray Serve app's p50"]
    assert "(the better: plain)" in opened.detail and opened.limit == 190.0
    assert not any("c=1 " in n for n in verdicts)  # 1 image in flight cannot fill a batch
    assert not verdicts["plain Ray Serve (plain): 0 mis-joined items"].passed
    md = report.markdown(result, targets)
    assert "## Open loop" in md and "| batch8 | 0.80 | 28.0 |" in md
    assert "**7.5**" in md  # the headline overhead
    # x plain at 32 in flight is against plain-batch, the better there: 35 / 33.
    assert "| batch8 | 32 | 35.0 | 0.88 | 1.06 | 7.5 |" in md
    assert "against plain-batch (33.0 img/s at 32 in flight)" in md
    assert "1 in flight: plain, 32 in flight: plain-batch" in md  # plain: 12 img/s at 1
    # Cores per 1,000 img/s: 2.0 CPU s over 192 images; the raw pipeline's 48 ms/img.
    assert "| graph (batch8) | 35.0 | 0.88 | 1.06 | **7.5** | **10.4** |" in md
    assert (
        "| in-process pipeline (batch 8) | 40.0 | 1.00 | 1.21 | 0 by definition | **48.0** |" in md
    )
    assert "| LitServe | 36.0 |" in md and "| plain Ray Serve (plain-batch) | 33.0 |" in md


def test_targets_without_a_peer_read_not_measured() -> None:
    batch8 = _cfg(
        "graph", 1, [_point(1, 11.0, 90.0, 1, 1.0, 60), _point(32, 35.0, 900.0, 8, 2.0, 192)]
    )
    result = {"meta": META, "raw": {}, "configs": {"batch8": batch8}}
    targets = report.targets(result)
    verdict = {t.name: t.verdict for t in targets}
    assert verdict["1 in flight: batch8 p50 <= LitServe p50 + 10 ms"] == "not measured"
    assert verdict["32 in flight: batch8 img/s >= 1.0 x LitServe"] == "not measured"
    assert (
        verdict["32 in flight: batch8 img/s >= 1.0 x the better plain Ray Serve app"]
        == "not measured"
    )
    assert verdict["multipart8 32 images in flight: img/s >= 1.0 x in-process"] == "not measured"
    assert (
        verdict["batch8 32 images in flight: serving CPU outside forward+decode <= 8 ms/img"]
        == "not measured"
    )
    assert verdict["batch8 c=32 (32 images in flight) mean batch >= 0.9 x 8"] == "PASS"
    assert verdict["graph: 0 mis-joined items"] == "PASS"
    lines = [t.line() for t in targets]
    assert "not measured  32 in flight: batch8 img/s >= 1.0 x LitServe: " in "\n".join(lines)
    assert not any(t.passed for t in targets if t.verdict == "not measured")
    # One plain app alone is the better of what was measured.
    result["configs"]["plain"] = _cfg("plain", 1, [_point(32, 30.0, 1000.0, 3, 2.0, 192)])
    (better,) = [t for t in report.targets(result) if "img/s >= 1.0 x the better" in t.name]
    assert better.verdict == "PASS" and "(the better: plain)" in better.detail
    assert "against plain (30.0 img/s" in report.headline(result)


def test_best_of_and_best_plain_pick_by_the_metric() -> None:
    assert best_of({"plain": 30.0, "plain-batch": 33.0}) == ("plain-batch", 33.0)
    assert best_of({"plain": 30.0, "plain-batch": 33.0}, higher=False) == ("plain", 30.0)
    assert best_of({"plain": math.nan, "plain-batch": 33.0}, higher=False) == ("plain-batch", 33.0)
    assert best_of({"a": 1.0, "b": 1.0}) == ("a", 1.0)  # a tie goes to the first
    assert best_of({}) is None and best_of({"plain": math.nan}) is None
    configs = {
        "plain": _cfg("plain", 1, [_point(1, 12.0, 86.0, 1, 1.0, 60)]),
        "plain-batch": _cfg("plain-batch", 1, [_point(1, 10.0, 80.0, 1, 1.0, 60)]),
        "litserve": _cfg("litserve", 1, [_point(1, 50.0, 20.0, 1, 1.0, 60)]),  # not a plain app
    }
    assert report.best_plain_ips(configs, 1) == ("plain", 12.0)
    p50 = report.best_plain(
        configs, lambda cfg: cfg["points"][0]["summary"]["latency_ms"]["p50"], higher=False
    )
    assert p50 == ("plain-batch", 80.0)
    assert report.best_plain_ips(configs, 32) is None  # no point at 32 in flight


def test_cores_per_1000_images_per_second() -> None:
    # 0.05 CPU s per image: 1,000 img/s need 50 cores.
    assert cores_per_1000_ips(10.0, 200) == pytest.approx(50.0)
    assert cores_per_1000_ips(2.0, 192) == pytest.approx(10.4167, rel=1e-4)
    assert math.isnan(cores_per_1000_ips(1.0, 0))


def test_not_measured_target_is_never_a_pass() -> None:
    t = not_measured("x", "no LitServe in this run")
    assert (t.passed, t.verdict) == (False, "not measured")
    assert t.line() == "not measured  x: no LitServe in this run"
    assert ceiling_target("c", 1.0, 2.0, "ms").line().startswith("PASS  c: ")


def test_plain_batch_peer_config_and_batch() -> None:
    model = {"name": "Model", "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}
    graph = {"applications": [{"name": "vision", "args": {"a": 1}, "deployments": [model]}]}
    (app,) = rayserve_batch.serve_config(graph, 8150)["applications"]
    assert app["name"] == "plain-batch" and app["args"] == {"app_args": {"a": 1}}
    assert app["import_path"] == "bench.peers.rayserve_batch:build_app"
    assert app["deployments"] == [
        {"name": "BatchClassifier", "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}
    ]

    class Work:
        def decode(self, data: bytes) -> bytes:
            if data == b"bad":
                raise ValueError("not an image")
            return data

        def forward(self, pixels: list[bytes]) -> list[dict]:
            return [{"pixels": p, "batch_size": len(pixels)} for p in pixels]

    peer = object.__new__(rayserve_batch.BatchClassifier.func_or_class)
    peer.work = Work()
    out = peer._predict_batch([b"a", b"bad", b"c"])
    assert out == [
        {"pixels": b"a", "batch_size": 2},
        {"error": "not an image"},
        {"pixels": b"c", "batch_size": 2},
    ]

    class Context:
        def __init__(self) -> None:
            self.statuses: dict[int, int] = {}

        def set_response_status(self, code: int, phrase: str, idx: int) -> None:
            self.statuses[idx] = code

    handler = ClassifierHandler()
    handler.work = Work()  # type: ignore[assignment]
    context = Context()
    rows = [{"body": bytearray(b"a")}, {"data": b"bad"}, {"body": b"c"}]
    assert handler.handle(rows, context) == out
    assert context.statuses == {1: 400}


def test_torchserve_stays_on_loopback_with_one_worker_batching_8_in_10_ms() -> None:
    props = dict(
        line.split("=", 1) for line in torchserve_properties(8150, Path("/s"), "c.mar").splitlines()
    )
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:815")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("8153", "8154")
    assert props["disable_token_authorization"] == "true"
    (version,) = orjson.loads(props["models"])["classifier"].values()
    assert (version["batchSize"], version["maxBatchDelay"]) == (8, 10)
    assert (version["minWorkers"], version["maxWorkers"], version["marName"]) == (1, 1, "c.mar")
