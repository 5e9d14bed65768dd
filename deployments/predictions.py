"""Turn a model's raw output into the client's predictions: top-k, thresholds, boxes mapped back.

Pure functions, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deployments.geometry import boxes_to_source
from deployments.types import Geometry, Prediction, RawOutput


def label_for(labels: Sequence[str], class_id: int) -> str:
    """The class name, or `class_<id>` when the model has more classes than named labels."""
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"


def top_k(raw: RawOutput, labels: Sequence[str], k: int) -> tuple[Prediction, ...]:
    """The k most probable classes, best first (the model already sorted them)."""
    n = min(k, len(raw.scores))
    return tuple(
        Prediction(label=label_for(labels, int(c)), class_id=int(c), score=float(s))
        for c, s in zip(raw.class_ids[:n], raw.scores[:n], strict=True)
    )


def detections(
    raw: RawOutput,
    geometry: Geometry,
    labels: Sequence[str],
    score_threshold: float,
    max_detections: int,
) -> tuple[Prediction, ...]:
    """Boxes at or above the threshold, mapped to displayed-image pixels, best first.

    Boxes that fall entirely into letterbox padding (zero area once clipped) are dropped.
    """
    if raw.boxes is None or len(raw.scores) == 0:
        return ()
    order = np.argsort(-raw.scores, kind="stable")
    keep = order[raw.scores[order] >= score_threshold]
    if len(keep) == 0:
        return ()
    boxes = boxes_to_source(raw.boxes[keep], geometry)
    out: list[Prediction] = []
    for idx, box in zip(keep, boxes, strict=True):
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        c = int(raw.class_ids[idx])
        out.append(
            Prediction(
                label=label_for(labels, c),
                class_id=c,
                score=float(raw.scores[idx]),
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            )
        )
        if len(out) == max_detections:
            break
    return tuple(out)
