"""Unit tests for the synthetic-shapes package: generator, metrics, detector contract, weights."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from deployments.pixels.masks import box_of
from shapes import CATEGORIES
from shapes.generate import (
    MAX_ASPECT,
    MAX_OBJECT_FRACTION,
    MAX_SIDE,
    MIN_COLOUR_DISTANCE,
    MIN_HUE_DISTANCE,
    MIN_LUMA_DIFFERENCE,
    MIN_OBJECT_FRACTION,
    MIN_SIDE,
    generate,
    render,
    render_background,
    sample_scene,
)
from shapes.metrics import Detection, GroundTruth, evaluate, iou
from shapes.model import build_detector
from shapes.segmenter import build_segmenter

WEIGHTS = Path(__file__).resolve().parents[2] / "shapes" / "shapes_detector.pt"


def _luma(colour: tuple[int, int, int]) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# --- generator ---------------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed() -> None:
    first, again, other = generate(7), generate(7), generate(8)
    assert first == again
    assert first.data != other.data
    assert [o.contrast for o in first.objects] == [o.contrast for o in again.objects]
    assert np.array_equal(first.labels, again.labels)


def test_low_contrast_objects_differ_in_hue_on_every_background() -> None:
    contrasts: list[float] = []
    hue_only: set[str] = set()
    for seed in range(300):
        scene = sample_scene(seed)
        bg = scene.background
        for s in scene.shapes:
            contrasts.append(s.contrast)
            if bg.kind != "gradient":
                # One background colour (noise is zero-mean around it): contrast is the difference.
                assert math.isclose(
                    s.contrast, abs(_luma(s.colour) - _luma(bg.colour0)), abs_tol=1e-9
                )
            if s.contrast < 8:
                hue_only.add(bg.kind)
                assert math.dist(s.colour, bg.colour0) >= MIN_HUE_DISTANCE
    assert hue_only == {"solid", "gradient", "noise"}
    low = np.mean([c < MIN_LUMA_DIFFERENCE for c in contrasts])
    assert 0.25 <= low <= 0.45
    assert np.mean([c < 16 for c in contrasts]) >= 0.12


@pytest.mark.parametrize(
    ("seed", "size", "fmt", "orientation"),
    [
        (0, (240, 180), "PNG", 1),
        (1, (96, 384), "PNG", 1),
        (2, (300, 200), "JPEG", 6),
        (3, None, None, None),
    ],
)
def test_label_map_agrees_with_boxes_and_pixels(
    seed: int, size: tuple[int, int] | None, fmt: str | None, orientation: int | None
) -> None:
    width, height = size if size else (None, None)
    image = generate(seed, width=width, height=height, fmt=fmt, orientation=orientation)
    labels = image.labels
    assert labels.dtype == np.uint8 and labels.shape == (image.height, image.width)
    outside = np.ones_like(labels, dtype=bool)
    for obj in image.objects:
        x0, y0, x1, y1 = obj.box
        c0, r0 = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
        c1, r1 = math.ceil(x1) + 1, math.ceil(y1) + 1
        outside[r0:r1, c0:c1] = False
        mask = np.zeros_like(outside)
        mask[r0:r1, c0:c1] = labels[r0:r1, c0:c1] == CATEGORIES.index(obj.label) + 1
        tight = box_of(mask)
        assert tight is not None
        assert max(abs(a - b) for a, b in zip(tight, obj.box, strict=True)) <= 1.0
    assert not labels[outside].any(), "a label outside every object's box"
    if fmt == "PNG":
        # At least half covered means visibly blended: every labelled pixel left the background.
        scene = sample_scene(seed, width=width, height=height, fmt=fmt)
        pixels = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))
        assert np.any(pixels != render_background(scene), axis=2)[labels > 0].all()


def test_label_map_at_model_input_comes_back_through_to_source() -> None:
    from deployments.pixels.masks import to_source
    from shapes.evaluate_offline import preprocess
    from shapes.evaluate_segmentation import class_iou, confusion
    from shapes.generate import label_map
    from shapes.train_segmenter import input_centres

    image = generate(5, width=1600, height=400, fmt="JPEG", orientation=8)
    _, geometry = preprocess(image.data, 256)
    target = label_map(image.scene, *input_centres(geometry))
    assert target.shape == (256, 256) and not target[: int(geometry.offset_y)].any()
    back = to_source(target, geometry)
    ious = class_iou(confusion(image.labels, back, len(CATEGORIES) + 1))
    present = [0, *sorted({CATEGORIES.index(o.label) + 1 for o in image.objects})]
    # Only quantisation to 256 px separates them: a misplaced target would lose far more.
    assert all(ious[k] > 0.85 for k in present)


def test_scenes_respect_domain_rules() -> None:
    for seed in range(300):
        scene = sample_scene(seed)
        w, h = scene.width, scene.height
        assert min(w, h) >= MIN_SIDE and max(w, h) <= MAX_SIDE
        assert max(w, h) / min(w, h) <= MAX_ASPECT
        assert 1 <= len(scene.shapes) <= 5
        for s in scene.shapes:
            x0, y0, x1, y1 = s.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            shorter = min(x1 - x0, y1 - y0)
            assert (
                MIN_OBJECT_FRACTION * min(w, h) <= shorter <= MAX_OBJECT_FRACTION * min(w, h) + 1e-9
            )
            for bg in (scene.background.colour0, scene.background.colour1):
                assert math.dist(s.colour, bg) >= MIN_COLOUR_DISTANCE
                # Near the background's brightness, an object must differ all the more in colour.
                if abs(_luma(s.colour) - _luma(bg)) < MIN_LUMA_DIFFERENCE:
                    assert math.dist(s.colour, bg) >= MIN_HUE_DISTANCE
            if s.label == "triangle":
                assert math.isclose(y1 - y0, (x1 - x0) * math.sqrt(3) / 2)
            else:
                assert math.isclose(x1 - x0, y1 - y0)
        for a, b in itertools.combinations(scene.shapes, 2):
            assert not _overlap(a.box, b.box)


def test_size_distribution_reaches_the_extremes() -> None:
    sizes = [(s.width, s.height) for s in map(sample_scene, range(400))]
    assert any(min(wh) == MIN_SIDE for wh in sizes)
    assert any(max(wh) == MAX_SIDE for wh in sizes)
    assert any(w / h == MAX_ASPECT for w, h in sizes)
    assert any(h / w == MAX_ASPECT for w, h in sizes)


@pytest.mark.parametrize("seed", range(6))
def test_png_boxes_are_exact(seed: int) -> None:
    scene = sample_scene(seed, width=240, height=180, fmt="PNG")
    image = generate(seed, width=240, height=180, fmt="PNG")
    pixels = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))
    changed = np.any(pixels != render_background(scene), axis=2)
    covered = np.zeros_like(changed)
    for obj in image.objects:
        x0, y0, x1, y1 = obj.box
        c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        covered[r0:r1, c0:c1] = True
        rows, cols = np.nonzero(changed[r0:r1, c0:c1])
        # The shape reaches each edge of its box to within one pixel (anti-aliasing may leave the
        # outermost, barely covered pixel at its background value).
        assert cols.min() + c0 <= x0 + 1 and cols.max() + c0 + 1 >= x1 - 1
        assert rows.min() + r0 <= y0 + 1 and rows.max() + r0 + 1 >= y1 - 1
    assert not np.any(changed & ~covered), "a shape painted pixels outside its box"


def test_triangles_are_upright_and_equilateral() -> None:
    triangles = 0
    for seed in range(10):
        scene = sample_scene(seed, width=400, height=400, fmt="PNG")
        changed = np.any(render(scene) != render_background(scene), axis=2)
        for shape in scene.shapes:
            if shape.label != "triangle":
                continue
            triangles += 1
            x0, y0, x1, y1 = shape.box
            for fraction in (0.25, 0.5, 0.9):
                y = y0 + fraction * (y1 - y0)
                row = changed[int(y), math.floor(x0) : math.ceil(x1)]
                # An upright equilateral triangle is `fraction * side` wide at that depth.
                assert abs(row.sum() - fraction * (x1 - x0)) <= 2.5
    assert triangles >= 3


def _block_means(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[0] // 8, pixels.shape[1] // 8
    return pixels[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpegs_display_upright(orientation: int) -> None:
    width, height = 160, 96
    image = generate(
        11, width=width, height=height, fmt="JPEG", orientation=orientation, quality=95
    )
    stored = Image.open(io.BytesIO(image.data))
    assert stored.getexif()[0x0112] == orientation
    assert stored.size == ((height, width) if orientation in (6, 8) else (width, height))
    shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), dtype=np.int16)
    assert shown.shape == (height, width, 3) and (image.width, image.height) == (width, height)
    expected = render(
        sample_scene(11, width=width, height=height, fmt="JPEG", orientation=orientation)
    ).astype(np.int16)
    # Compare 8x8 block means: JPEG noise averages out there, a wrong rotation does not.
    assert np.abs(_block_means(shown) - _block_means(expected)).mean() < 3
    # The objects sit where the boxes say: box centres carry the object colour, not the background.
    scene = sample_scene(11, width=width, height=height, fmt="JPEG", orientation=orientation)
    for obj, shape in zip(image.objects, scene.shapes, strict=True):
        assert obj.box == shape.box
        cx, cy = (
            int((obj.box[0] + obj.box[2]) / 2),
            int(obj.box[1] + 0.6 * (obj.box[3] - obj.box[1])),
        )
        assert np.abs(shown[cy, cx] - np.array(shape.colour)).max() < 40


def test_generate_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError):
        generate(0, width=100)
    with pytest.raises(ValueError):
        generate(0, fmt="PNG", orientation=6)


# --- metrics -----------------------------------------------------------------------------------


def _gt(label: str, *box: float) -> GroundTruth:
    return GroundTruth(label, (box[0], box[1], box[2], box[3]))


def _det(label: str, score: float, *box: float) -> Detection:
    return Detection(label, (box[0], box[1], box[2], box[3]), score)


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert math.isclose(iou((0, 0, 10, 10), (0, 0, 10, 6)), 0.6)


def test_perfect_predictions_score_one() -> None:
    truths = [
        [_gt("circle", 0, 0, 10, 10), _gt("square", 20, 20, 40, 40)],
        [_gt("triangle", 5, 5, 25, 22)],
    ]
    preds = [[_det(t.label, 0.9, *t.box) for t in image] for image in truths]
    report = evaluate(preds, truths)
    assert report.ap50 == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
    assert report.map50 == 1.0 and report.map75 == 1.0
    assert report.missed == 0 and report.mislocalised == 0


def test_missed_object_lowers_recall() -> None:
    truths = [[_gt("circle", 0, 0, 10, 10), _gt("circle", 50, 50, 60, 60)]]
    report = evaluate([[_det("circle", 0.9, 0, 0, 10, 10)]], truths)
    assert report.ap50["circle"] == pytest.approx(0.5)
    assert report.missed == 1


def test_false_positive_ranked_first_halves_precision() -> None:
    truths = [[_gt("square", 0, 0, 10, 10)]]
    above = evaluate(
        [[_det("square", 0.9, 50, 50, 60, 60), _det("square", 0.8, 0, 0, 10, 10)]], truths
    )
    below = evaluate(
        [[_det("square", 0.7, 50, 50, 60, 60), _det("square", 0.8, 0, 0, 10, 10)]], truths
    )
    assert above.ap50["square"] == pytest.approx(0.5)
    assert below.ap50["square"] == pytest.approx(1.0)


def test_wrong_class_does_not_match() -> None:
    truths = [[_gt("circle", 0, 0, 10, 10), _gt("square", 30, 30, 40, 40)]]
    preds = [[_det("square", 0.9, 0, 0, 10, 10), _det("square", 0.8, 30, 30, 40, 40)]]
    report = evaluate(preds, truths)
    assert report.ap50["circle"] == 0.0
    assert report.ap50["square"] == pytest.approx(
        0.5
    )  # the mislabelled box ranks first as a false positive
    assert report.misclassified == 1 and report.missed == 0


def test_iou_sixty_counts_at_fifty_not_seventy_five() -> None:
    truths = [[_gt("triangle", 0, 0, 10, 10)]]
    report = evaluate([[_det("triangle", 0.9, 0, 0, 10, 6)]], truths)
    assert report.ap50["triangle"] == 1.0
    assert report.ap75["triangle"] == 0.0
    assert report.loose == 1


def test_mislocalised_and_duplicates() -> None:
    truths = [[_gt("circle", 0, 0, 10, 10)]]
    shifted = evaluate([[_det("circle", 0.9, 6, 0, 16, 10)]], truths)  # IoU 0.25
    assert shifted.mislocalised == 1 and shifted.missed == 1
    # A duplicate is a false positive: one ground truth matches at most one prediction.
    twice = evaluate(
        [[_det("circle", 0.9, 0, 0, 10, 10), _det("circle", 0.95, 0, 0, 10, 9.5)]], truths
    )
    assert twice.ap50["circle"] == 1.0
    assert "mislocalised=0" in twice.format_table()


# --- detector ----------------------------------------------------------------------------------


def test_detector_contract_on_random_weights() -> None:
    torch.manual_seed(0)
    model = build_detector(score_floor=0.0).eval()
    assert model.task == "detection" and model.categories == list(CATEGORIES)
    assert len(model.mean) == 3 and len(model.std) == 3
    size = model.input_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        outputs = model(x)
        again = model(x)
        single = model(x[1:2])
    assert len(outputs) == 3
    for out in outputs:
        assert set(out) == {"boxes", "scores", "labels"}
        boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
        assert (
            boxes.dtype == torch.float32
            and scores.dtype == torch.float32
            and labels.dtype == torch.int64
        )
        k = len(scores)
        assert 0 < k <= 100 and boxes.shape == (k, 4) and labels.shape == (k,)
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.all((scores >= 0) & (scores <= 1))
        assert torch.all((labels >= 0) & (labels < len(CATEGORIES)))
        assert torch.all((boxes >= 0) & (boxes <= size))
        assert torch.all(boxes[:, 2:] >= boxes[:, :2])
    for a, b in zip(outputs, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(outputs[1]["scores"], single[0]["scores"], atol=1e-5)


def test_detector_applies_score_floor() -> None:
    torch.manual_seed(0)
    model = build_detector().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, model.input_size, model.input_size))[0]
    assert torch.all(out["scores"] >= model.score_floor)


def test_committed_weights_load_and_detect() -> None:
    from shapes.evaluate_offline import predict

    assert WEIGHTS.stat().st_size <= 10 * 2**20
    state = torch.load(WEIGHTS, weights_only=True)
    model = build_detector()
    model.load_state_dict(state)
    model.eval()
    image = generate(123_456, width=640, height=360, fmt="JPEG", quality=80)
    detections = predict(model, [image])[0]
    for truth in image.objects:
        assert any(
            d.label == truth.label and iou(d.box, truth.box) >= 0.75 and d.score >= 0.5
            for d in detections
        )


def test_http_evaluation_scores_what_the_service_returned() -> None:
    from shapes.evaluate import check_sizes, score

    images = [generate(s, width=320, height=200, fmt="PNG") for s in (1, 2)]
    exact = [
        {
            "image": {"width": im.width, "height": im.height},
            "predictions": [
                {"label": o.label, "box": list(o.box), "score": 0.9} for o in im.objects
            ],
        }
        for im in images
    ]
    report, groups = score(images, exact)
    assert report.map50 == 1.0 and report.map75 == 1.0 and report.missed == 0
    assert groups and all(r.map50 == 1.0 for r in groups.values())
    # A failed request counts as an image with no detections; a swapped size is reported.
    failed, _ = score(images, [exact[0], None])
    assert failed.missed == len(images[1].objects)
    assert check_sizes(images, exact) == []
    turned = [{**b, "image": {"width": 200, "height": 320}} for b in exact]
    assert len(check_sizes(images, turned)) == 2


def test_contrast_bins_score_their_own_objects() -> None:
    from shapes.evaluate_offline import CONTRAST_BINS, score

    images = [generate(s, width=320, height=200, fmt="PNG") for s in range(12)]
    exact = [[Detection(o.label, o.box, 0.9) for o in im.objects] for im in images]
    _, groups = score(exact, images)
    bins = [b for b in CONTRAST_BINS if b in groups]
    assert len(bins) >= 2 and all(groups[b].map50 == 1.0 for b in bins)
    assert sum(groups[b].num_objects for b in bins) == sum(len(im.objects) for im in images)
    # Dropping the low-contrast objects' detections costs their bin only.
    kept = [
        [d for d, o in zip(dets, im.objects, strict=True) if (o.contrast or 0) >= 16]
        for dets, im in zip(exact, images, strict=True)
    ]
    _, groups = score(kept, images)
    assert groups[CONTRAST_BINS[0]].map50 == 0.0
    assert groups[CONTRAST_BINS[2]].map50 == 1.0


# --- segmenter ---------------------------------------------------------------------------------


def test_segmenter_contract_on_random_weights() -> None:
    torch.manual_seed(0)
    model = build_segmenter().eval()
    assert model.task == "segmentation"
    assert model.categories == ["background", *CATEGORIES]
    assert model.input_size % 32 == 0
    assert len(model.mean) == 3 and len(model.std) == 3
    x = torch.randn(2, 3, 96, 160)
    with torch.inference_mode():
        out = model(x)
    assert set(out) == {"out"}
    logits = out["out"]
    assert logits.shape == (2, len(model.categories), 96, 160) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError):
        build_segmenter(input_size=500)


def test_segmentation_scores_perfect_and_wrong_label_maps() -> None:
    from shapes.evaluate_segmentation import SegmentationReport

    report = SegmentationReport(["background", *CATEGORIES])
    images = [generate(s, width=200, height=120, fmt="PNG") for s in range(4)]
    for image in images:
        report.add(image, image.labels)
    assert all(report.miou(g) == 1.0 for g in report.groups())
    wrong = SegmentationReport(["background", *CATEGORIES])
    for image in images:
        wrong.add(image, np.zeros_like(image.labels))
    assert wrong.iou()["background"] < 1.0
    assert all(wrong.iou()[c] == 0.0 for c in CATEGORIES if not math.isnan(wrong.iou()[c]))


def test_committed_segmenter_weights_load_and_segment() -> None:
    from shapes.evaluate_segmentation import SegmentationReport, predict_labels
    from shapes.segmenter import load_segmenter

    weights = WEIGHTS.with_name("shapes_segmenter.pt")
    assert weights.stat().st_size <= 10 * 2**20
    model = load_segmenter(str(weights))
    image = generate(123_456, width=640, height=360, fmt="JPEG", quality=80)
    report = SegmentationReport(model.categories)
    report.add(image, predict_labels(model, [image])[0])
    assert report.miou() >= 0.9
