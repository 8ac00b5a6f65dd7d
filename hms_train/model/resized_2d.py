"""Model kind `resized_2d`: a timm backbone that first resizes the layout's image to a fixed size, as the
seed's public 2D notebooks did before their networks (RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-
Classification, Ensemble_Notebook/):

- HMS_LB31.ipynb cell 23: the 800 x 700 image (50 s | 10 s over Kaggle) flipped upside down
  (`imagem_final[::-1]`) and `cv2.resize(..., (512, 512), interpolation=cv2.INTER_AREA)`; then an
  EfficientNetB0, GlobalAveragePooling2D, Dense(6) (cell 16 build_EfficientNetB0). Its 3 identical
  channels (`np.repeat(..., 3, axis=2)`) are one channel here: timm's in_chans=1 sums the stem's weights.
- HMS_balance.py "Model 3": `transforms.Resize((512, 512))` (bilinear) of the spectrogram, then
  `timm.create_model('efficientnet_b0' | 'efficientnet_b1', num_classes=6, in_chans=1)`.

After the resize it is the "2d" kind's SpectrogramNet (backbone, pool, dropout, Linear(-> 6)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hms_train.model.backbones import create_backbone
from hms_train.model.kinds import IMAGE, register_model
from hms_train.model.models import SpectrogramNet

RESIZE_MODES = ("area", "bilinear")  # cv2.INTER_AREA (HMS_LB31); torchvision Resize's bilinear (HMS_balance)


def area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights of cv2.resize's INTER_AREA along one axis when it shrinks (OpenCV
    imgproc/src/resize.cpp `computeResizeAreaTab`, transcribed): output pixel d averages the source
    interval [d * scale, (d + 1) * scale), scale = source / target, the border pixels by the part of them
    inside it. torch's mode="area" (adaptive average pooling) averages whole pixels instead: on 800 x 700 ->
    512 x 512 the two differ by up to 1.7 on unit-variance pixels."""
    if not 0 < target <= source:
        raise ValueError(f"INTER_AREA's area table shrinks only: {source} -> {target} pixels")
    scale = source / target
    weights = np.zeros((target, source), dtype=np.float64)
    for d in range(target):
        start = d * scale
        end = start + scale
        cell = min(scale, source - start)
        first, last = math.ceil(start), min(math.floor(end), source - 1)
        first = min(first, last)
        if first - start > 1e-3:
            weights[d, first - 1] += np.float32((first - start) / cell)  # OpenCV keeps the alphas in float32
        weights[d, first:last] += np.float32(1.0 / cell)
        if end - last > 1e-3:
            weights[d, last] += np.float32(min(end - last, 1.0, cell) / cell)
    return weights


class ResizedNet(nn.Module):
    def __init__(self, net: SpectrogramNet, size: tuple[int, int], resize_mode: str, flip_rows: bool,
                 image_size: Sequence[int] | None = None):
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}")
        self.net = net
        self.size = size
        self.resize_mode = resize_mode
        self.flip_rows = flip_rows
        if resize_mode == "area":  # cv2.INTER_AREA as two matrices (not saved: they follow from the sizes)
            if image_size is None:
                raise ValueError("resize_mode 'area' needs the image size")
            height, width = image_size
            if height < size[0] or width < size[1]:
                raise ValueError(f"resize_mode 'area' shrinks only (cv2.INTER_AREA's area table): the image is "
                                 f"{height} x {width}, resize_to {size[0]}")
            self.register_buffer("rows_area", torch.from_numpy(area_weights(height, size[0])).float(), persistent=False)
            self.register_buffer("cols_area", torch.from_numpy(area_weights(width, size[1])).float(), persistent=False)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        if self.flip_rows:  # HMS_LB31: low frequencies at the bottom
            image = image.flip(2)
        if self.resize_mode == "area":  # in float32 under autocast too: a weighted mean, as cv2's
            with torch.autocast(image.device.type, enabled=False):
                return self.rows_area @ image.float() @ self.cols_area.T
        return F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(self.resize(image))


def build_resized(image_size: Sequence[int], backbone: str, pool: str, drop_rate: float, pretrained: bool,
                  weights: str | None, drop_path_rate: float, resize_to: int, resize_mode: str,
                  flip_rows: bool) -> ResizedNet:
    """The layout's `image_size` image resized to `resize_to` x `resize_to` with `resize_mode`, flipped upside
    down first when `flip_rows`, into a timm backbone + `pool` + Linear."""
    if resize_to < 32:
        raise ValueError(f"resize_to must be at least 32 pixels, got {resize_to}")
    size = (resize_to, resize_to)
    backbone_net = create_backbone(backbone, pretrained, weights, drop_path_rate)
    return ResizedNet(SpectrogramNet(backbone_net, size, pool, drop_rate), size, resize_mode, flip_rows, image_size)


@register_model("resized_2d", inputs=(IMAGE,))
def resized_2d(image_size: Sequence[int], backbone: str = "efficientnet_b0", pool: str = "avg",
               drop_rate: float = 0.2, pretrained: bool = False, weights: str | None = None,
               drop_path_rate: float = 0.0, resize_to: int = 512, resize_mode: str = "bilinear",
               flip_rows: bool = False) -> ResizedNet:
    """HMS_balance.py "Model 3": Resize((512, 512)) (bilinear), then the timm model; HMS_LB31.ipynb with
    resize_mode = "area" (cv2.INTER_AREA), flip_rows = true (`imagem_final[::-1]`), drop_rate 0."""
    return build_resized(image_size, backbone, pool, drop_rate, pretrained, weights, drop_path_rate, resize_to,
                         resize_mode, flip_rows)
