"""Models for the six-class vote distribution: a 2D spectrogram net, a 1D raw-EEG net, and both joined.

All backbones come from timm (backbones.py). Every model returns raw logits (B, 6); the loss applies the
softmax. Each is registered (kinds.py `register_model`) with the inputs its forward takes by keyword
(`image`, `signals`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from timm.layers import NormMlpClassifierHead
from torch import nn

from hms_train.model.backbones import NET_FORMS, POOLS, create_backbone, create_pool, feature_map_shape
from hms_train.model.kinds import IMAGE, SIGNALS, Probability, model_kind, register_model

NUM_CLASSES = 6
# Where a SpectrogramNet's dropout acts: on the pooled features before the head (the default), or on the
# backbone's 4-D feature map before the pool (Richard's: timm's forward_head dropout with an identity pool).
DROPOUT_PLACES = ("pooled", "map")
# The 1D net halves the time axis until at most this many steps are left for its GRU.
GRU_MAX_STEPS = 400


class SpectrogramNet(nn.Module):
    """timm backbone on a (B, 1, H, W) spectrogram image -> pool -> dropout -> Linear(C -> 6), or with
    `dropout_at="map"` backbone -> dropout -> pool -> Linear.

    `backbone` must return its unpooled feature map (see `timm_backbone`). `image_size` (H, W) is the
    size the model will see; it fixes the attention pool's width. With num_classes=0 the head is an
    identity and forward returns the pooled features (timm's convention).

    Richard's model (Train_V4_Pseudo_Label.ipynb cell 1) built timm's model with `drop_rate` and replaced
    its global_pool and classifier by identities, so timm's forward_head dropped elements of the 4-D map
    (`F.dropout` after the identity pool) before his attention and pool: `dropout_at="map"` (element-wise,
    as nn.Dropout on any tensor).

    A backbone whose timm head normalises the pooled vector (ConvNeXt's NormMlpClassifierHead: pool,
    LayerNorm, dropout, fc) keeps that order: the map is its `forward_features`, pooled, then the head's
    own norm (its weights stay at `backbone.head.norm`), so a "plain timm ConvNeXt" (Richard's
    seed_richard_convnext, R/Valid.ipynb c1) is timm's model. (timm's forward with global_pool="" would
    normalise every position of the map before the pool instead.)
    """

    def __init__(
        self,
        backbone: nn.Module,
        image_size: tuple[int, int],
        pool: str = "attention",
        drop_rate: float = 0.2,
        num_classes: int = NUM_CLASSES,
        dropout_at: str = "pooled",
        head_bias: bool = True,
    ):
        super().__init__()
        if dropout_at not in DROPOUT_PLACES:
            raise ValueError(f"unknown dropout_at {dropout_at!r}; expected one of {DROPOUT_PLACES}")
        self.backbone = backbone
        self.norm_after_pool = isinstance(getattr(backbone, "head", None), NormMlpClassifierHead)
        channels, _, width = feature_map_shape(backbone, image_size)
        self.num_features = channels
        self.pool = create_pool(pool, channels, width)
        self.dropout_at = dropout_at
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(channels, num_classes, bias=head_bias) if num_classes else nn.Identity()

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C) pooled backbone features (the map dropped out first with dropout_at="map")."""
        if self.norm_after_pool:  # timm's order: pool, then the head's LayerNorm (per channel of the vector)
            feature_map = self.backbone.forward_features(image)
        else:
            feature_map = self.backbone(image)
        if self.dropout_at == "map":
            feature_map = self.dropout(feature_map)
        pooled = self.pool(feature_map)
        if self.norm_after_pool:
            pooled = self.backbone.head.norm(pooled[:, :, None, None].float()).flatten(1).to(pooled.dtype)
        return pooled

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(image)
        if self.dropout_at == "pooled":
            features = self.dropout(features)
        return self.head(features)


class ResidualBlock1d(nn.Module):
    """ResNet basic block in 1D: two convs with BatchNorm, a projected shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int = 7):
        super().__init__()
        padding = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(out_channels, out_channels, kernel_size, 1, padding, bias=False),
            nn.BatchNorm1d(out_channels),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm1d(out_channels)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def downsampling_blocks(samples: int, max_steps: int = GRU_MAX_STEPS) -> int:
    """How many stride-2 blocks after the stride-2 stem bring `samples` down to at most `max_steps`."""
    steps = math.ceil(samples / 2)
    blocks = 0
    while steps > max_steps:
        steps = math.ceil(steps / 2)
        blocks += 1
    return blocks


class RawEEGNet(nn.Module):
    """ResNet1D-GRU on raw bipolar EEG (B, S, T) -> (B, 6), after the seed's 1D pipeline.

    A stride-2 conv stem and stride-2 residual blocks shorten T (10,000 samples = 50 s at 200 Hz) to at
    most GRU_MAX_STEPS steps (313 for 10,000); a bidirectional GRU reads them, and the mean and max of its
    outputs over time are the features (D = 4 * gru_hidden). Any length T works; `samples` only sets the
    depth. With num_classes=0 forward returns the features.
    """

    def __init__(
        self,
        channels: int = 18,
        samples: int = 10000,
        width: int = 64,
        gru_hidden: int = 64,
        drop_rate: float = 0.2,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.channels = channels
        self.stem = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=15, stride=2, padding=7, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *[ResidualBlock1d(width, width, stride=2) for _ in range(downsampling_blocks(samples))],
            ResidualBlock1d(width, width, stride=1),
        )
        self.gru = nn.GRU(width, gru_hidden, batch_first=True, bidirectional=True)
        self.num_features = 4 * gru_hidden  # mean and max of the 2 * gru_hidden GRU outputs
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def features(self, signals: torch.Tensor) -> torch.Tensor:
        """(B, S, T) bipolar EEG -> (B, D)."""
        if signals.shape[1] != self.channels:
            raise ValueError(f"RawEEGNet was built for {self.channels} signals but got {signals.shape[1]}")
        steps = self.blocks(self.stem(signals)).transpose(1, 2)  # (B, L, width): the GRU wants time second
        sequence, _ = self.gru(steps)
        return torch.cat([sequence.mean(dim=1), sequence.amax(dim=1)], dim=1)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(signals)))


class MultimodalNet(nn.Module):
    """A SpectrogramNet and a RawEEGNet trained jointly: their features concatenated into one head.

    Both branches should be built with num_classes=0 so that their own heads are identities.
    """

    def __init__(
        self, spectrogram: SpectrogramNet, raw: RawEEGNet, drop_rate: float = 0.2, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.spectrogram = spectrogram
        self.raw = raw
        self.num_features = spectrogram.num_features + raw.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, image: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.spectrogram.features(image), self.raw.features(signals)], dim=1)

    def forward(self, image: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(image, signals)))


@register_model("2d", inputs=(IMAGE,))
def spectrogram_model(
    image_size: Sequence[int],
    backbone: str = "efficientnet_b0",
    pool: Literal[POOLS] = "attention",
    drop_rate: Probability = 0.2,
    pretrained: bool = False,  # timm's weights: the local Hugging Face cache, else a download when online
    weights: str | None = None,  # a local backbone state dict
    drop_path_rate: Probability = 0.0,  # timm's stochastic depth
    dropout_at: Literal[DROPOUT_PLACES] = "pooled",  # on the pooled features, or on the map (Richard)
    conv_head: bool = True,
    net_form: Literal[NET_FORMS] = "timm",
) -> SpectrogramNet:
    """SpectrogramNet on (H, W) = `image_size` images (the layout's); `weights` is a local pretrained
    file for the backbone and takes precedence over `pretrained` (timm's cache, else a download).
    `dropout_at`, `conv_head` and `net_form` default to the models built before they existed (old model
    specs); "seed_exact" is David's torchvision form, with a bias-free head (D/model.py: nn.Linear(cnn_ch,
    num_classes, bias=False))."""
    backbone_net = create_backbone(backbone, pretrained, weights, drop_path_rate, conv_head, net_form)
    return SpectrogramNet(backbone_net, tuple(image_size), pool, drop_rate, dropout_at=dropout_at,
                          head_bias=net_form != "seed_exact")


@register_model("1d", inputs=(SIGNALS,))
def raw_model(raw_channels: int = 18, raw_samples: int = 10000, drop_rate: Probability = 0.2) -> RawEEGNet:
    """RawEEGNet on (B, raw_channels, raw_samples) bipolar signals (16 or 18 channels)."""
    return RawEEGNet(raw_channels, raw_samples, drop_rate=drop_rate)


@register_model("multimodal", inputs=(IMAGE, SIGNALS))
def multimodal_model(
    image_size: Sequence[int], backbone: str = "efficientnet_b0", pool: Literal[POOLS] = "attention",
    pretrained: bool = False, weights: str | None = None, drop_path_rate: Probability = 0.0,  # the 2D branch
    conv_head: bool = True,
    raw_channels: int = 18, raw_samples: int = 10000,  # the 1D branch, as for "1d"
    drop_rate: Probability = 0.2,
) -> MultimodalNet:
    """The 2D and 1D branches (their own heads off) joined in one head."""
    image_backbone = create_backbone(backbone, pretrained, weights, drop_path_rate, conv_head)
    spectrogram = SpectrogramNet(image_backbone, tuple(image_size), pool, drop_rate, num_classes=0)
    raw = RawEEGNet(raw_channels, raw_samples, drop_rate=drop_rate, num_classes=0)
    return MultimodalNet(spectrogram, raw, drop_rate)


def model_inputs(kind: str) -> tuple[str, ...]:
    """The batch keys a model of this kind takes, in forward-argument order."""
    return model_kind(kind).inputs
