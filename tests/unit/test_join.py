"""Post-processing: top-k, thresholds, box mapping, and the join that refuses mismatched ids."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deployments import tasks
from deployments.errors import ERRORS_BY_CODE, CorruptImage, JoinMismatch
from deployments.flow.catalogue import ModelAnswers
from deployments.items import (
    Bundle,
    ImageInfo,
    ItemError,
    Meta,
    Options,
    RawOutput,
    Result,
    Sample,
)
from deployments.pixels.geometry import boxes_to_input, plan
from deployments.stages.postprocessor import join, join_bundle
from deployments.transports.schema import ERRORS, ItemErrorOut, ResultOut
from tests import settings

LABELS = ("circle", "square", "triangle")
CLASSIFICATION = tasks.get("classification")
DETECTION = tasks.get("detection")


def _raw(
    item_id: str, scores: list[float], ids: list[int], boxes: list[list[float]] | None = None
) -> RawOutput:
    arrays = {
        "class_ids": np.array(ids, dtype=np.int64),
        "scores": np.array(scores, dtype=np.float32),
    }
    if boxes is not None:
        arrays["boxes"] = np.array(boxes, dtype=np.float32)
    return RawOutput(
        item_id=item_id,
        arrays=arrays,
        batch_size=4,
        inference_ms=3.0,
    )


def _sample(
    item_id: str, width: int = 400, height: int = 200, options: Options | None = None
) -> Sample:
    meta = Meta(
        item_id=item_id,
        request_id="req",
        image=ImageInfo(width, height, "PNG"),
        geometry=plan("letterbox", width, height, 320, 320),
        options=options or Options(),
    )
    return Sample(meta=meta, pixels=np.zeros((320, 320, 3), dtype=np.uint8))


def _answer(task: tasks.Task, raw: RawOutput, sample: Sample, **options: Any) -> Any:
    predictions, extra = task.answer(raw.arrays, sample.meta, LABELS, options)
    assert extra == {}
    return predictions


def test_top_k_keeps_order_and_labels_unknown_ids() -> None:
    raw = _raw("a", [0.6, 0.3, 0.1], [2, 7, 0])
    preds = _answer(CLASSIFICATION, raw, _sample("a"), top_k=2)
    assert [(p.label, p.class_id) for p in preds] == [("triangle", 2), ("class_7", 7)]
    assert preds[0].score == pytest.approx(0.6)


def test_detections_map_back_threshold_and_cap() -> None:
    sample = _sample("a", 400, 200)
    truth = [[10, 20, 110, 120], [200, 50, 390, 190], [0, 0, 5, 5]]
    model_boxes = boxes_to_input(truth, sample.meta.geometry).tolist()
    raw = _raw("a", [0.9, 0.8, 0.2], [0, 1, 2], model_boxes)
    preds = _answer(DETECTION, raw, sample, score_threshold=0.5, max_detections=10)
    assert [p.label for p in preds] == ["circle", "square"]
    np.testing.assert_allclose([p.box for p in preds], truth[:2], atol=1e-4)
    assert len(_answer(DETECTION, raw, sample, score_threshold=0.0, max_detections=1)) == 1


def test_boxes_in_the_padding_are_dropped_and_others_clipped() -> None:
    sample = _sample("a", 400, 200)  # 320x160 content, 80 px padding above and below
    raw = _raw("a", [0.9, 0.8], [0, 1], [[10, 0, 50, 70], [100, 70, 400, 120]])
    preds = _answer(DETECTION, raw, sample, score_threshold=0.0, max_detections=10)
    assert len(preds) == 1
    assert preds[0].box is not None and preds[0].box[2] == 400.0  # clipped to the image width


def test_join_builds_the_result_from_the_items_own_metadata() -> None:
    sample = _sample("a", options=Options.of({"top_k": 1}))
    out = join(
        _raw("a", [0.7, 0.2], [1, 0]),
        sample,
        model="m",
        task=CLASSIFICATION,
        labels=LABELS,
        defaults=settings.task_defaults(CLASSIFICATION),
    )
    assert isinstance(out, Result)
    assert (out.item_id, out.request_id, out.batch_size, out.image.width) == ("a", "req", 4, 400)
    assert [p.label for p in out.predictions] == ["square"]


def test_join_uses_defaults_for_unset_options() -> None:
    raw = _raw("a", [0.5, 0.3, 0.2], [0, 1, 2])
    out = join(
        raw,
        _sample("a"),
        model="m",
        task=CLASSIFICATION,
        labels=LABELS,
        defaults=settings.task_defaults(CLASSIFICATION, top_k=2),
    )
    assert isinstance(out, Result) and len(out.predictions) == 2


def test_join_refuses_mismatched_ids() -> None:
    with pytest.raises(JoinMismatch, match="item b"):
        join(
            _raw("a", [1.0], [0]),
            _sample("b"),
            model="m",
            task=CLASSIFICATION,
            labels=LABELS,
            defaults=settings.task_defaults(CLASSIFICATION),
        )


def test_errors_pass_through_the_join() -> None:
    err = ItemError.from_exception("a", CorruptImage("broken"))
    assert (
        join(
            err,
            err,
            model="m",
            task=DETECTION,
            labels=LABELS,
            defaults=settings.task_defaults(DETECTION),
        )
        is err
    )
    model_err = ItemError("a", "inference_failed", "boom", 500)
    assert (
        join(
            model_err,
            _sample("a"),
            model="m",
            task=DETECTION,
            labels=LABELS,
            defaults=settings.task_defaults(DETECTION),
        )
        is model_err
    )
    assert isinstance(err.to_exception(), CorruptImage)


def _bundle_join(outputs: list[RawOutput | ItemError], bundle: Bundle) -> tuple[Any, ...]:
    return join_bundle(
        outputs,
        bundle,
        models={("", ""): ModelAnswers("m", "classification", LABELS)},
        defaults={"classification": settings.task_defaults(CLASSIFICATION)},
    )


def test_a_bundle_joins_item_by_item_with_each_items_own_options() -> None:
    broken = ItemError.from_exception("b", CorruptImage("broken"))
    bundle = Bundle(
        items=(
            _sample("a", options=Options.of({"top_k": 1})),
            broken,
            _sample("c", 640, 480, Options()),
        )
    )
    outputs: list[RawOutput | ItemError] = [
        _raw("a", [0.7, 0.2, 0.1], [1, 0, 2]),
        broken,
        _raw("c", [0.5, 0.3, 0.2], [2, 1, 0]),
    ]
    a, b, c = _bundle_join(outputs, bundle)
    assert isinstance(a, Result) and isinstance(c, Result)
    assert [p.label for p in a.predictions] == ["square"]
    assert b is broken
    assert [p.label for p in c.predictions] == ["triangle", "square", "circle"]  # default top 5
    assert (a.image.width, c.image.width) == (400, 640)


def test_a_bundle_refuses_swapped_or_missing_outputs() -> None:
    bundle = Bundle(items=(_sample("a"), _sample("b")))
    with pytest.raises(JoinMismatch, match="item b"):
        _bundle_join([_raw("b", [1.0], [0]), _raw("a", [1.0], [1])], bundle)
    with pytest.raises(JoinMismatch, match="1 model outputs met a bundle of 2"):
        _bundle_join([_raw("a", [1.0], [0])], bundle)
    error_for_other = ItemError("b", "inference_failed", "boom", 500)
    with pytest.raises(JoinMismatch):
        _bundle_join([error_for_other, _raw("a", [1.0], [1])], bundle)


def test_bodies_match_the_documented_schema() -> None:
    out = join(
        _raw("a", [0.7, 0.2], [1, 0]),
        _sample("a"),
        model="m",
        task=CLASSIFICATION,
        labels=LABELS,
        defaults=settings.task_defaults(CLASSIFICATION),
    )
    assert isinstance(out, Result)
    body = out.to_dict()
    assert ResultOut.model_validate(body).model_dump(exclude_none=True) == body
    err = ItemError.from_exception("b", CorruptImage("broken"))
    assert ItemErrorOut.model_validate(err.to_dict()).model_dump() == err.to_dict()
    documented = {c for d in ERRORS.values() for c in d["description"].split(": ")[1].split(", ")}
    assert documented == set(ERRORS_BY_CODE)
