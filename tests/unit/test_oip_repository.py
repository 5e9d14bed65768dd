"""Triton's extensions: the model configuration, statistics and repository index builders, and the
counts behind the statistics (several replicas' summed once each), read with tritonclient's own
messages.

Every answer must be Triton's JSON: it is parsed here into tritonclient's `ModelConfig`,
`ModelStatistics` and `RepositoryIndexResponse` (unknown fields fail), and, in a subprocess (the
two sets of messages share names in protobuf's pool), into ours, whose bytes tritonclient reads
back as the same message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_pb
from google.protobuf import json_format

from deployments import tasks
from deployments.flow.health import ModelState
from deployments.flow.stats import Reporter, StatsBoard
from deployments.flow.tally import Counts, Tally, merged
from deployments.items import ImageInfo, ItemError, ModelInfo, Result
from deployments.transports.oip_repository import (
    index_entry,
    model_config,
    model_statistics,
)
from tests.serving import ROOT

DETECTION = tasks.get("detection")


def _info(device: str = "cpu", batch: int = 8, wait_s: float = 0.0) -> ModelInfo:
    return ModelInfo(
        name="shapes.model:build_detector",
        task="detection",
        labels=("circle", "square"),
        input_width=320,
        input_height=256,
        resize="letterbox",
        weights="shapes/shapes_detector.pt",
        device=device,
        max_batch_size=batch,
        batch_wait_timeout_s=wait_s,
    )


def _result(item_id: str, **timings_ms: float) -> Result:
    return Result(
        request_id="r",
        item_id=item_id,
        model="m",
        task="detection",
        image=ImageInfo(10, 10, "JPEG"),
        predictions=(),
        batch_size=2,
        timings_ms=timings_ms,
    )


def test_config_is_tritons_with_the_deployed_batching_and_instances() -> None:
    config = model_config("det", DETECTION, _info("cuda:0", batch=16, wait_s=0.0025), replicas=3)
    message = json_format.ParseDict(config, triton_config.ModelConfig())  # Triton's own schema
    assert message.name == "det"
    assert message.max_batch_size == 16
    assert message.dynamic_batching.max_queue_delay_microseconds == 2500
    assert list(message.dynamic_batching.preferred_batch_size) == [16]
    (group,) = message.instance_group
    assert (group.count, group.kind) == (3, triton_config.ModelInstanceGroup.KIND_GPU)
    (image,) = message.input
    assert (image.name, image.data_type) == ("image", triton_config.TYPE_STRING)
    # One image per element: the batch dimension alone, in Triton's form.
    assert list(image.dims) == [1] and list(image.reshape.shape) == []
    outputs = {o.name: o for o in message.output}
    assert list(outputs["boxes"].dims) == [4]
    assert outputs["boxes"].data_type == triton_config.TYPE_FP32
    assert outputs["class_ids"].data_type == triton_config.TYPE_INT64
    assert outputs["labels"].data_type == triton_config.TYPE_STRING
    assert "counts" in outputs
    assert message.parameters["input_size"].string_value == "320x256"


def test_a_work_conserving_cpu_model_has_no_preferred_size() -> None:
    config = model_config("det", DETECTION, _info("cpu", batch=8, wait_s=0.0), replicas=1)
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 0}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_the_ingress_and_model_counts_sum_into_tritons_statistics() -> None:
    ingress_a, ingress_b, model = Tally(lambda: 1000), Tally(lambda: 2000), Tally(lambda: 1500)
    ok = _result("a", total=10.0, batch_wait=1.0, preprocess=2.0, inference=5.0, postprocess=0.5)
    ingress_a.answered(("det", "1"), [ok, ok], 12.0)
    ingress_b.answered(("det", "1"), [ItemError("b", "corrupt_image", "bad", 422)], 3.0)
    model.executed(("det", "1"), 2, 5.0)
    model.executed(("det", "1"), 1, 4.0)
    model.executed(("det", "1"), 2, 6.0)
    totals = merged([ingress_a.snapshot(), ingress_b.snapshot(), model.snapshot()])
    stats = model_statistics("det", "1", totals[("det", "1")])
    message = json_format.ParseDict(stats, triton_pb.ModelStatistics())
    assert (message.name, message.version, message.last_inference) == ("det", "1", 2000)
    assert (message.inference_count, message.execution_count) == (5, 3)
    inference = message.inference_stats
    assert (inference.success.count, inference.success.ns) == (2, 20_000_000)
    assert (inference.fail.count, inference.fail.ns) == (1, 3_000_000)
    assert (inference.queue.count, inference.queue.ns) == (2, 2_000_000)
    assert inference.compute_input.ns == 4_000_000
    assert inference.compute_infer.ns == 10_000_000
    assert inference.compute_output.ns == 1_000_000
    batches = {b.batch_size: b.compute_infer for b in message.batch_stats}
    assert (batches[1].count, batches[1].ns) == (1, 4_000_000)
    assert (batches[2].count, batches[2].ns) == (2, 11_000_000)


def test_a_model_nothing_reached_has_zero_counts() -> None:
    stats = model_statistics("seg", "2", None)
    assert stats["inference_count"] == stats["execution_count"] == 0
    assert stats["inference_stats"]["success"] == {"count": 0, "ns": 0}
    assert stats["batch_stats"] == []


def test_a_tally_is_safe_from_two_threads() -> None:
    tally = Tally()

    def run() -> None:
        for _ in range(2000):
            tally.executed(("det", "1"), 2, 1.0)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counts.from_data(tally.snapshot()[("det", "1")])
    assert (counts.execution_count, counts.inference_count) == (4000, 8000)


def test_index_entries_say_ready_or_unavailable_and_why() -> None:
    entries = [
        index_entry("a", "1", ModelState(ready=True, state="ready", replicas=2)),
        index_entry("b", "1", ModelState(ready=True, state="scaled_to_zero")),
        index_entry("c", "1", ModelState(ready=False, state="warming")),
        index_entry("d", "1", ModelState(ready=False, state="unavailable")),
    ]
    message = json_format.ParseDict({"models": entries}, triton_pb.RepositoryIndexResponse())
    states = {m.name: (m.version, m.state, m.reason) for m in message.models}
    assert states["a"] == ("1", "READY", "")
    assert states["b"][1] == "READY" and "scaled_to_zero" in states["b"][2]
    assert states["c"][1:] == ("UNAVAILABLE", "warming: its first replica is loading")
    assert states["d"][1] == "UNAVAILABLE" and states["d"][2]


_OURS = """
import json, sys
from google.protobuf import json_format
from deployments.oip_proto import grpc_predict_v2_pb2 as pb
asked = json.load(sys.stdin)
print(json.dumps({
    name: json_format.ParseDict(value, getattr(pb, name)()).SerializeToString().hex()
    for name, value in asked.items()
}))
"""


def test_our_messages_carry_the_same_json_to_tritonclient() -> None:
    config = model_config("det", DETECTION, _info("cuda:0", wait_s=0.01), replicas=2)
    stats = {"model_stats": [model_statistics("det", "1", _some_counts())]}
    index = {"models": [index_entry("det", "1", ModelState(ready=False, state="warming"))]}
    asked: dict[str, Any] = {
        "ModelConfig": config,
        "ModelStatisticsResponse": stats,
        "RepositoryIndexResponse": index,
    }
    done = subprocess.run(
        [sys.executable, "-c", _OURS],
        cwd=ROOT,
        input=json.dumps(asked).encode(),
        capture_output=True,
        check=True,
    )
    serialized = {k: bytes.fromhex(v) for k, v in json.loads(done.stdout).items()}
    theirs = {
        "ModelConfig": triton_config.ModelConfig,
        "ModelStatisticsResponse": triton_pb.ModelStatisticsResponse,
        "RepositoryIndexResponse": triton_pb.RepositoryIndexResponse,
    }
    for name, data in serialized.items():
        read = theirs[name].FromString(data)
        assert read == json_format.ParseDict(asked[name], theirs[name]()), name


def _some_counts() -> Counts:
    tally = Tally(lambda: 123)
    tally.answered(("det", "1"), [_result("a", total=3.0, inference=1.0)], 3.0)
    tally.executed(("det", "1"), 1, 1.0)
    return Counts.from_data(tally.snapshot()[("det", "1")])


# --- several replicas, one board ------------------------------------------------------------


class _Method:
    """A stand-in for an actor method: `.remote(...)` runs it and gives an awaitable."""

    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(self._method(*args))
        return future


def test_the_statistics_are_every_replicas_and_a_resend_counts_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = StatsBoard()
    handle = SimpleNamespace(report=_Method(board.report), totals=_Method(board.totals))
    monkeypatch.setattr(Reporter, "_get_or_create", lambda self: handle)
    ingresses = [Tally(), Tally()]  # two Ingress replicas, each answering some images
    model = Tally()
    reporters = [Reporter(t, "vision", f"Ingress#{i}") for i, t in enumerate(ingresses)]
    model_reporter = Reporter(model, "vision", "Model#0")

    async def run() -> dict[str, Counts]:
        ingresses[0].answered(("det", "1"), [_result("a", total=1.0)] * 3, 1.0)
        ingresses[1].answered(("det", "1"), [ItemError("b", "corrupt_image", "bad", 422)], 1.0)
        model.executed(("det", "1"), 3, 2.0)
        await reporters[1].push()
        await reporters[1].push()  # nothing new: sent once
        await model_reporter.push()
        ingresses[1].answered(("det", "1"), [_result("c", total=1.0)], 1.0)
        await reporters[1].push()  # the whole tally again, not added to the last one
        # The replica answering the stats request sends its own counts first.
        return await reporters[0].totals()

    counts = asyncio.run(run())[("det", "1")]
    assert counts.duration("success")[0] == 4  # 3 from one Ingress replica, 1 from the other
    assert counts.duration("fail")[0] == 1
    assert (counts.inference_count, counts.execution_count) == (3, 1)


def test_each_version_of_a_model_is_counted_apart() -> None:
    tally = Tally()
    tally.executed(("det", "1"), 2, 1.0)
    tally.executed(("det", "2"), 3, 1.0)
    totals = merged([tally.snapshot()])
    assert {key: c.inference_count for key, c in totals.items()} == {
        ("det", "1"): 2,
        ("det", "2"): 3,
    }
