"""Detection metrics: IoU, greedy matching, all-point AP, and error counts.

All boxes are xyxy in one coordinate system (the caller's choice, normally displayed pixels).

Definitions used by `evaluate` (per ground-truth object, using predictions with
score >= `score_threshold` only):
- ``missed``: no prediction of any class has IoU >= 0.5 with it.
- ``misclassified``: a prediction of another class has IoU >= 0.5, but none of its own class does.
- ``mislocalised``: no prediction of its class has IoU >= 0.5, and the best one of its class has
  0.1 <= IoU < 0.5 (found, but the box is wrong). An object can be both missed and mislocalised.
- ``loose``: the best prediction of its class has 0.5 <= IoU < 0.75 (counts at AP50, not at AP75).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from shapes import CATEGORIES

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """One true object: label, xyxy box and, when known, its brightness contrast (0..255 luma)."""

    label: str
    box: Box
    contrast: float | None = None


@dataclasses.dataclass(frozen=True)
class Detection:
    """One predicted object: label, xyxy box and confidence."""

    label: str
    box: Box
    score: float


@dataclasses.dataclass(frozen=True)
class Report:
    """Result of `evaluate`; per-class dicts hold only classes with at least one true object."""

    ap50: dict[str, float]
    ap75: dict[str, float]
    num_images: int
    num_objects: int
    missed: int
    mislocalised: int
    misclassified: int
    loose: int
    score_threshold: float

    @property
    def map50(self) -> float:
        """Mean AP at IoU 0.5 over classes present in the ground truth."""
        return _mean(self.ap50.values())

    @property
    def map75(self) -> float:
        """Mean AP at IoU 0.75 over classes present in the ground truth."""
        return _mean(self.ap75.values())

    def facts(self) -> dict[str, object]:
        """The numbers, rounded, for a JSON record."""
        return {
            "objects": self.num_objects,
            "map50": round(self.map50, 4),
            "map75": round(self.map75, 4),
            "ap50": {k: round(v, 4) for k, v in self.ap50.items()},
            "ap75": {k: round(v, 4) for k, v in self.ap75.items()},
            "missed": self.missed,
            "mislocalised": self.mislocalised,
            "misclassified": self.misclassified,
            "loose": self.loose,
            "counted_at_score": self.score_threshold,
        }

    def format_table(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"{'class':<10} {'AP50':>7} {'AP75':>7}"]
        for label in self.ap50:
            lines.append(f"{label:<10} {self.ap50[label]:>7.4f} {self.ap75[label]:>7.4f}")
        lines.append(f"{'mean':<10} {self.map50:>7.4f} {self.map75:>7.4f}")
        lines.append(
            f"images={self.num_images} objects={self.num_objects} "
            f"(at score>={self.score_threshold:g}) missed={self.missed} "
            f"mislocalised={self.mislocalised} misclassified={self.misclassified} "
            f"loose(0.5<=IoU<0.75)={self.loose}"
        )
        return "\n".join(lines)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes (0 when either is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_image(
    predictions: Sequence[Detection],
    truths: Sequence[GroundTruth],
    label: str,
    iou_threshold: float,
) -> list[tuple[float, bool]]:
    """Greedy COCO-style matching for one image and class: (score, is true positive) per prediction.

    Predictions go in descending score order; each takes the unmatched true object of its class with
    the highest IoU, if that IoU >= `iou_threshold`. Each true object is matched at most once.
    """
    preds = sorted((p for p in predictions if p.label == label), key=lambda p: -p.score)
    gts = [t.box for t in truths if t.label == label]
    taken = [False] * len(gts)
    out: list[tuple[float, bool]] = []
    for p in preds:
        best, best_iou = -1, iou_threshold
        for k, g in enumerate(gts):
            if taken[k]:
                continue
            v = iou(p.box, g)
            if v >= best_iou:
                best, best_iou = k, v
        if best >= 0:
            taken[best] = True
        out.append((p.score, best >= 0))
    return out


def average_precision(scored: Sequence[tuple[float, bool]], num_truths: int) -> float:
    """All-point interpolated AP from (score, is true positive) pairs pooled over images."""
    if num_truths == 0:
        return float("nan")
    # Stable sort keeps ties in input order, like COCO's mergesort.
    ordered = sorted(scored, key=lambda s: -s[0])
    recalls: list[float] = []
    precisions: list[float] = []
    tp = 0
    for rank, (_, hit) in enumerate(ordered, start=1):
        tp += hit
        recalls.append(tp / num_truths)
        precisions.append(tp / rank)
    # Precision envelope: best precision at any recall at least this high.
    for k in range(len(precisions) - 2, -1, -1):
        precisions[k] = max(precisions[k], precisions[k + 1])
    ap, prev_recall = 0.0, 0.0
    for r, p in zip(recalls, precisions, strict=True):
        ap += (r - prev_recall) * p
        prev_recall = r
    return ap


def class_ap(
    predictions: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[GroundTruth]],
    label: str,
    iou_threshold: float,
) -> float:
    """AP of one class over a set of images at one IoU threshold."""
    scored: list[tuple[float, bool]] = []
    for preds, gts in zip(predictions, truths, strict=True):
        scored.extend(match_image(preds, gts, label, iou_threshold))
    num = sum(1 for gts in truths for t in gts if t.label == label)
    return average_precision(scored, num)


def evaluate(
    predictions: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[GroundTruth]],
    *,
    categories: Sequence[str] = CATEGORIES,
    score_threshold: float = 0.3,
) -> Report:
    """Per-class AP50/AP75 over all predictions, plus error counts at `score_threshold`."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truths)} images")
    present = [c for c in categories if any(t.label == c for gts in truths for t in gts)]
    ap50 = {c: class_ap(predictions, truths, c, 0.5) for c in present}
    ap75 = {c: class_ap(predictions, truths, c, 0.75) for c in present}
    missed = mislocalised = misclassified = loose = 0
    for preds, gts in zip(predictions, truths, strict=True):
        confident = [p for p in preds if p.score >= score_threshold]
        for t in gts:
            same = max((iou(p.box, t.box) for p in confident if p.label == t.label), default=0.0)
            other = max((iou(p.box, t.box) for p in confident if p.label != t.label), default=0.0)
            if max(same, other) < 0.5:
                missed += 1
            if same < 0.5 <= other:
                misclassified += 1
            if 0.1 <= same < 0.5:
                mislocalised += 1
            if 0.5 <= same < 0.75:
                loose += 1
    return Report(
        ap50=ap50,
        ap75=ap75,
        num_images=len(truths),
        num_objects=sum(len(g) for g in truths),
        missed=missed,
        mislocalised=mislocalised,
        misclassified=misclassified,
        loose=loose,
        score_threshold=score_threshold,
    )
