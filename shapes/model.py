"""Compact anchor-free detector for the shapes domain (CenterNet-style, stride 4, ltrb regression).

A small conv backbone down to stride 32, a top-down feature pyramid back to stride 4, and two heads:
a per-class centre heatmap and, per cell, distances from the cell centre to the four box edges.
Decoding (3x3 max-pool peaks, top-k, per-class NMS) runs inside `forward` in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from shapes import CATEGORIES

STRIDE = 4
_REG_CLAMP = 6.0  # exp(6) * 4 = 1600 px: beyond any box a 1024 px input can hold


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    """Two 3x3 convs with a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ShapesDetector(nn.Module):
    """Detector following the service's custom-model contract (see `forward`)."""

    task = "detection"

    def __init__(
        self,
        input_size: int = 384,
        widths: tuple[int, int, int, int, int] = (16, 32, 64, 96, 128),
        neck: int = 48,
        score_floor: float = 0.05,
        max_detections: int = 100,
        nms_iou: float = 0.5,
    ) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, not {input_size}")
        self.categories: list[str] = list(CATEGORIES)
        self.input_size = input_size
        self.mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
        self.std: tuple[float, float, float] = (0.229, 0.224, 0.225)
        self.score_floor = score_floor
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        w2, w4, w8, w16, w32 = widths
        self.stem = nn.Sequential(_conv(3, w2, 2), _conv(w2, w4, 2), _Residual(w4))
        self.down8 = nn.Sequential(_conv(w4, w8, 2), _Residual(w8))
        self.down16 = nn.Sequential(_conv(w8, w16, 2), _Residual(w16), _Residual(w16))
        self.down32 = nn.Sequential(_conv(w16, w32, 2), _Residual(w32), _Residual(w32))
        self.lat32 = nn.Conv2d(w32, neck, 1)
        self.lat16 = nn.Conv2d(w16, neck, 1)
        self.lat8 = nn.Conv2d(w8, neck, 1)
        self.lat4 = nn.Conv2d(w4, neck, 1)
        self.smooth16 = _conv(neck, neck)
        self.smooth8 = _conv(neck, neck)
        self.smooth4 = _conv(neck, neck)
        self.heatmap = nn.Sequential(_conv(neck, neck), nn.Conv2d(neck, len(self.categories), 1))
        self.regress = nn.Sequential(_conv(neck, neck), nn.Conv2d(neck, 4, 1))
        # Focal-loss prior: every cell starts at p = 0.01 so negatives do not swamp early training.
        last_hm = self.heatmap[-1]
        assert isinstance(last_hm, nn.Conv2d) and last_hm.bias is not None
        nn.init.constant_(last_hm.bias, -math.log(99.0))
        last_reg = self.regress[-1]
        assert isinstance(last_reg, nn.Conv2d) and last_reg.bias is not None
        nn.init.constant_(last_reg.bias, math.log(2.0))

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Head outputs at stride 4: heatmap logits (N, C, H, W), log-distances (N, 4, H, W)."""
        c4 = self.stem(x)
        c8 = self.down8(c4)
        c16 = self.down16(c8)
        c32 = self.down32(c16)
        p = self.lat32(c32)
        p = self.smooth16(self.lat16(c16) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        p = self.smooth8(self.lat8(c8) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        p = self.smooth4(self.lat4(c4) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        return self.heatmap(p), self.regress(p)

    def decode_boxes(self, regression: Tensor) -> Tensor:
        """Boxes (N, 4, H, W) xyxy in input pixels from log-distances, anchored at cell centres."""
        _, _, h, w = regression.shape
        dist = torch.exp(regression.clamp(max=_REG_CLAMP)) * STRIDE
        ys = (torch.arange(h, device=regression.device, dtype=regression.dtype) + 0.5) * STRIDE
        xs = (torch.arange(w, device=regression.device, dtype=regression.dtype) + 0.5) * STRIDE
        cx, cy = xs.view(1, 1, w), ys.view(1, h, 1)
        return torch.stack(
            (cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]), dim=1
        )

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        """Detect objects in a normalised batch (N, 3, S, S).

        Returns:
            One dict per image: ``boxes`` (K, 4) float xyxy in input pixels, ``scores`` (K,) in
            [0, 1] sorted descending and >= ``score_floor``, ``labels`` (K,) int64 indexes into
            ``categories``; K <= ``max_detections``.
        """
        logits, regression = self.features(x)
        heat = torch.sigmoid(logits)
        # A cell is a candidate only where it is the maximum of its 3x3 neighbourhood.
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
        boxes = self.decode_boxes(regression)
        n, c, h, w = heat.shape
        k = min(self.max_detections * 2, c * h * w)
        scores, index = peaks.flatten(1).topk(k, dim=1)
        labels = index // (h * w)
        cells = index % (h * w)
        flat_boxes = boxes.flatten(2).transpose(1, 2)  # (N, H*W, 4)
        size = float(self.input_size)
        results: list[dict[str, Tensor]] = []
        for i in range(n):
            keep = scores[i] >= self.score_floor
            b = flat_boxes[i, cells[i, keep]].clamp(0.0, size)
            s, lab = scores[i, keep], labels[i, keep]
            kept = batched_nms(b, s, lab, self.nms_iou)[: self.max_detections]
            results.append({"boxes": b[kept], "scores": s[kept], "labels": lab[kept]})
        return results


def build_detector(**kwargs: object) -> ShapesDetector:
    """Factory the service imports as ``shapes.model:build_detector``; kwargs go to the class."""
    return ShapesDetector(**kwargs)  # type: ignore[arg-type]


def load_detector(
    path: str, device: str | torch.device = "cpu", **kwargs: object
) -> ShapesDetector:
    """Build a detector and load a state_dict saved by `shapes.train` (fp16 or fp32)."""
    model = build_detector(**kwargs)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()
