"""Compact semantic segmenter for the shapes domain: a light U-Net to stride 2.

The encoder is the detector's backbone (`shapes.model`, the same modules and names, so training
starts from the detector's weights: it already tells circles from squares) plus one more stage to
stride 64, so one cell sees a whole 0.4-of-the-image shape. A top-down pyramid goes back to
stride 2, whose class logits are upsampled bilinearly to the input: the logits vary smoothly, so
their zero crossings land between stride-2 cells, on the right input pixel. The service brings the
label map back to displayed pixels by nearest sampling, so a boundary one input pixel off costs
`source / input_size` displayed pixels on a large image; that is why the output is not coarser. (A
3x3 head at full input resolution measured 4x the training time on CPU.)

`forward` follows torchvision's segmentation contract: ``{"out": logits N x C x H x W}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shapes import CATEGORIES
from shapes.model import _conv, _Residual

BACKGROUND = "background"
BACKBONE = ("stem.", "down8.", "down16.", "down32.")  # modules shared with the detector


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ShapesSegmenter(nn.Module):
    """Semantic segmenter following the service's custom-model contract (see `forward`)."""

    task = "segmentation"

    def __init__(
        self,
        input_size: int = 512,
        widths: tuple[int, int, int, int, int, int] = (16, 32, 64, 96, 128, 128),
        neck: int = 32,
        fine: int = 16,
    ) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, not {input_size}")
        self.categories: list[str] = [BACKGROUND, *CATEGORIES]
        self.input_size = input_size
        self.mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
        self.std: tuple[float, float, float] = (0.229, 0.224, 0.225)
        w2, w4, w8, w16, w32, w64 = widths
        self.stem = nn.Sequential(_conv(3, w2, 2), _conv(w2, w4, 2), _Residual(w4))
        self.down8 = nn.Sequential(_conv(w4, w8, 2), _Residual(w8))
        self.down16 = nn.Sequential(_conv(w8, w16, 2), _Residual(w16), _Residual(w16))
        self.down32 = nn.Sequential(_conv(w16, w32, 2), _Residual(w32), _Residual(w32))
        self.down64 = nn.Sequential(_conv(w32, w64, 2), _Residual(w64))
        self.lat = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in (w2, w4, w8, w16, w32, w64))
        self.smooth = nn.ModuleList(_conv(neck, neck) for _ in range(4))
        self.head = nn.Sequential(_conv(neck, fine), nn.Conv2d(fine, len(self.categories), 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Segment a normalised batch (N, 3, H, W) of any size (the service uses input_size).

        Returns:
            ``{"out": logits}``, float (N, C, H, W) at the input resolution, C = len(categories),
            class 0 the background.
        """
        c2 = self.stem[0](x)
        c4 = self.stem[2](self.stem[1](c2))
        c8 = self.down8(c4)
        c16 = self.down16(c8)
        c32 = self.down32(c16)
        c64 = self.down64(c32)
        features = (c2, c4, c8, c16, c32)
        p = self.lat[5](c64)
        for level in range(4, 0, -1):
            skip = features[level]
            p = self.smooth[level - 1](self.lat[level](skip) + _up(p, skip))
        p = self.lat[0](c2) + _up(p, c2)
        return {"out": _up(self.head(p), x)}

    def load_backbone(self, detector_state: dict[str, Tensor]) -> int:
        """Copy the shared backbone from a detector state_dict; returns how many tensors."""
        shared = {
            k: v.float() if v.is_floating_point() else v
            for k, v in detector_state.items()
            if k.startswith(BACKBONE)
        }
        self.load_state_dict(shared, strict=False)
        return len(shared)


def build_segmenter(**kwargs: object) -> ShapesSegmenter:
    """Factory the service imports as ``shapes.segmenter:build_segmenter``; kwargs to the class."""
    return ShapesSegmenter(**kwargs)  # type: ignore[arg-type]


def load_segmenter(
    path: str, device: str | torch.device = "cpu", **kwargs: object
) -> ShapesSegmenter:
    """Build a segmenter and load a state_dict saved by `shapes.train_segmenter` (fp16 or fp32)."""
    model = build_segmenter(**kwargs)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()
