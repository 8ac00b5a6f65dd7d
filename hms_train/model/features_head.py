"""Model kinds `features_head_spec`, `features_head_wave`, `features_head_hybrid`: the Keras "features-head"
models of the seed's "balance" ensemble (RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification,
Ensemble_Notebook/HMS_balance.py, "Model 2", after Chris Deotte's features-head starter), in torch.

- spec (K, E, KE): an EfficientNetB2 on a 512 x 512 x 3 image, global average pool, Dense(6)
  (`build_spec_model`). The image is made inside the model from the layout's image, whose rows hold one
  (K or E) or two (K over E, for KE) blocks of 4 chains x 100 rows x 300 columns: each block min-max
  scaled over all its values, its middle 256 columns (`img[:, 22:-22]`) placed as the notebook's
  `generate_specs` / `generate_all_specs` place them (`SPEC_PLACES`, `ALL_SPEC_PLACES`), then the ImageNet
  normalisation Keras' EfficientNetB2 applies to its 0..255 input.
- wave (R): the notebook's WaveNet (`build_wave_model`): four gated dilated blocks (8, 16, 32, 64 filters,
  kernel 4, dilations 1 ... 32) shared by the eight map features, each globally averaged, the two of a
  chain averaged, the four chains concatenated (256), Dense(64, relu), Dense(6). Its input is the eight
  map features (hms_train.model.resnet1d_gru.MAP_FEATURES) of the 50 s window taken every 5th sample
  (`X[::5, :]`: 2,000 steps at 40 Hz).
- hybrid (KR, ER, KER): both without their heads, concatenated (1,408 + 256), Dense(6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hms_train.model.backbones import create_backbone
from hms_train.model.kinds import IMAGE, SIGNALS, register_model
from hms_train.model.models import NUM_CLASSES
from hms_train.model.resnet1d_gru import MAP_FEATURES, map_features

BLOCK_ROWS = 400  # a block of the layout's image: 4 chains x 100 (Kaggle's frequencies or 100 mels)
CHAIN_ROWS = 100
CANVAS = 512
TOP = 56  # HMS_balance.py: X[0_0+56:100+56, ...]: the 4 x 100 rows start 56 rows down
HALF = 256  # the two 256-column halves of the canvas; each block keeps its middle 256 columns
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # Keras EfficientNet's Normalization layer (tf.keras.applications)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNSAMPLE = 5  # HMS_balance.py generate_raw: X = X[::5, :]

# Their chain order is LL, LP, RL, RP (spec[..., k*100:(k+1)*100] for k in [0, 2, 1, 3]: "to match kaggle with
# eeg"); the store's is LL, RL, LP, RP. Their chain j is the store's chain THEIRS[j].
THEIRS = (0, 2, 1, 3)
# (canvas row band 0-3, column half 0-1, colour channel, their chain) of HMS_balance.py generate_specs (K or E)
SPEC_PLACES = (
    (0, 0, 0, 0), (1, 0, 0, 2), (0, 0, 1, 1), (1, 0, 1, 3), (0, 0, 2, 2), (1, 0, 2, 1),
    (0, 1, 0, 0), (1, 1, 0, 1), (0, 1, 1, 2), (1, 1, 1, 3),
    (2, 0, 0, 0), (3, 0, 0, 1), (2, 0, 1, 2), (3, 0, 1, 3), (2, 0, 2, 3), (3, 0, 2, 2),
    (2, 1, 0, 0), (3, 1, 0, 2), (2, 1, 1, 1), (3, 1, 1, 3),
)
# generate_all_specs (KE): (band, half, channel, block 0 = K / 1 = E, their chain)
ALL_SPEC_PLACES = (
    (0, 0, 0, 0, 0), (1, 0, 0, 0, 2), (0, 0, 1, 0, 1), (1, 0, 1, 0, 3), (0, 0, 2, 0, 2), (1, 0, 2, 0, 1),
    (0, 1, 0, 0, 0), (1, 1, 0, 0, 2), (0, 1, 1, 0, 1), (1, 1, 1, 0, 3),
    (2, 0, 0, 1, 0), (3, 0, 0, 1, 2), (2, 0, 1, 1, 1), (3, 0, 1, 1, 3), (2, 0, 2, 1, 2), (3, 0, 2, 1, 1),
    (2, 1, 0, 1, 0), (3, 1, 0, 1, 2), (2, 1, 1, 1, 1), (3, 1, 1, 1, 3),
)


def minmax(block: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each sample's block scaled to [0, 1] over all its values (HMS_balance.py: 255 * (img - mn) / (mx - mn
    + ep); the 255 is undone by Keras EfficientNet's Rescaling(1/255))."""
    flat = block.flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1)
    high = flat.amax(1).view(-1, 1, 1, 1)
    return (block - low) / (high - low + eps)


def features_head_canvas(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, 400 or 800, W >= 256) layout image -> (B, 3, 512, 512) the notebook's image, ImageNet-normalised."""
    batch, _, height, width = image.shape
    blocks = height // BLOCK_ROWS
    if height % BLOCK_ROWS or blocks not in (1, 2) or width < HALF:
        raise ValueError(f"the features-head image needs 400 (K or E) or 800 (K over E) rows of at least {HALF} "
                         f"columns; got {height} x {width}")
    left = (width - HALF) // 2  # img[:, 22:-22] of 300 columns
    scaled = [minmax(image[:, :, b * BLOCK_ROWS : (b + 1) * BLOCK_ROWS]) for b in range(blocks)]
    chains = [block[:, 0, :, left : left + HALF].reshape(batch, 4, CHAIN_ROWS, HALF) for block in scaled]
    canvas = image.new_zeros(batch, 3, CANVAS, CANVAS)
    places = ALL_SPEC_PLACES if blocks == 2 else tuple((b, h, c, 0, j) for b, h, c, j in SPEC_PLACES)
    for band, half, channel, block, chain in places:
        rows = slice(TOP + band * CHAIN_ROWS, TOP + (band + 1) * CHAIN_ROWS)
        canvas[:, channel, rows, half * HALF : (half + 1) * HALF] = chains[block][:, THEIRS[chain]]
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (canvas - mean) / std


class SpecBranch(nn.Module):
    """EfficientNetB2 (3 channels) on the features-head canvas, globally averaged (`build_spec_model`)."""

    def __init__(self, backbone: str, pretrained: bool, weights: str | None, drop_path_rate: float = 0.0):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, weights, drop_path_rate, in_chans=3)
        self.backbone.eval()  # one dry pass for the channel count (1,408 for EfficientNet-B2), statistics untouched
        with torch.no_grad():
            self.num_features = self.backbone(torch.zeros(1, 3, 64, 64)).shape[1]
        self.backbone.train()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(features_head_canvas(image)).mean(dim=(2, 3))


class CausalSameConv1d(nn.Conv1d):
    """Keras Conv1D(padding="same") for any kernel: (k - 1) * dilation zeros, the smaller half on the left."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = (self.kernel_size[0] - 1) * self.dilation[0]
        return super().forward(F.pad(x, (total // 2, total - total // 2)))


class WaveBlock(nn.Module):
    """`wave_block(x, filters, kernel_size, n)`: a 1x1 conv, then per dilation 2^i a gated (tanh x sigmoid)
    conv and a 1x1 conv whose outputs are summed onto the first 1x1 conv's output."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int = 4, n: int = 6):
        super().__init__()
        self.entry = nn.Conv1d(in_channels, filters, 1)
        dilations = [2**i for i in range(n)]
        self.tanh = nn.ModuleList(CausalSameConv1d(filters, filters, kernel_size, dilation=d) for d in dilations)
        self.sigm = nn.ModuleList(CausalSameConv1d(filters, filters, kernel_size, dilation=d) for d in dilations)
        self.mix = nn.ModuleList(nn.Conv1d(filters, filters, 1) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        residual = x
        for tanh, sigm, mix in zip(self.tanh, self.sigm, self.mix):
            x = mix(torch.tanh(tanh(x)) * torch.sigmoid(sigm(x)))
            residual = residual + x
        return residual


class WaveBranch(nn.Module):
    """The shared WaveNet over each map feature, chains averaged pairwise and concatenated (256 features)."""

    def __init__(self, raw_channels: int):
        super().__init__()
        self.raw_channels = raw_channels
        self.extractor = nn.Sequential(WaveBlock(1, 8), WaveBlock(8, 16), WaveBlock(16, 32), WaveBlock(32, 64))
        self.num_features = 64 * len(MAP_FEATURES) // 2

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        if signals.shape[1] != self.raw_channels:
            raise ValueError(f"the wave branch was built for {self.raw_channels} signals but got {signals.shape[1]}")
        x = map_features(signals)[..., ::DOWNSAMPLE]  # (B, 8, 2000)
        batch, features, steps = x.shape
        pooled = self.extractor(x.reshape(batch * features, 1, steps)).mean(dim=2).view(batch, features, -1)
        chains = (pooled[:, 0::2] + pooled[:, 1::2]) / 2  # the two map features of each chain: Average()
        return chains.flatten(1)


class FeaturesHeadSpec(nn.Module):
    def __init__(self, backbone: str, pretrained: bool, weights: str | None, num_classes: int = NUM_CLASSES,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.spec = SpecBranch(backbone, pretrained, weights, drop_path_rate)
        self.head = nn.Linear(self.spec.num_features, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.spec(image))


class FeaturesHeadWave(nn.Module):
    def __init__(self, raw_channels: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.wave = WaveBranch(raw_channels)
        self.head = nn.Sequential(nn.Linear(self.wave.num_features, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.head(self.wave(signals))


class FeaturesHeadHybrid(nn.Module):
    def __init__(self, backbone: str, pretrained: bool, weights: str | None, raw_channels: int,
                 num_classes: int = NUM_CLASSES, drop_path_rate: float = 0.0):
        super().__init__()
        self.spec = SpecBranch(backbone, pretrained, weights, drop_path_rate)
        self.wave = WaveBranch(raw_channels)
        self.head = nn.Linear(self.spec.num_features + self.wave.num_features, num_classes)

    def forward(self, image: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.spec(image), self.wave(signals)], dim=1))


def _check_image(image_size: Sequence[int]) -> None:
    height, width = image_size
    if height not in (BLOCK_ROWS, 2 * BLOCK_ROWS) or width < HALF:
        raise ValueError(f"features-head models take 400 (K or E) or 800 (K over E) rows of >= {HALF} columns; "
                         f"the layout gives {height} x {width}")


@register_model("features_head_spec", inputs=(IMAGE,))
def features_head_spec(image_size: Sequence[int], backbone: str = "efficientnet_b2", pretrained: bool = False,
                       weights: str | None = None, drop_path_rate: float = 0.0) -> FeaturesHeadSpec:
    """K, E or KE: HMS_balance.py build_spec_model (EfficientNetB2.h5, GAP, Dense(6)); `drop_path_rate`: the
    Keras EfficientNet's drop_connect_rate (its default 0.2, ramped over the blocks as timm ramps it)."""
    _check_image(image_size)
    return FeaturesHeadSpec(backbone, pretrained, weights, drop_path_rate=drop_path_rate)


@register_model("features_head_wave", inputs=(SIGNALS,))
def features_head_wave(raw_channels: int = 18, raw_samples: int = 10000) -> FeaturesHeadWave:
    """R: HMS_balance.py build_wave_model on the 50 s window at 40 Hz."""
    return FeaturesHeadWave(raw_channels)


@register_model("features_head_hybrid", inputs=(IMAGE, SIGNALS))
def features_head_hybrid(image_size: Sequence[int], backbone: str = "efficientnet_b2", pretrained: bool = False,
                         weights: str | None = None, raw_channels: int = 18,
                         raw_samples: int = 10000, drop_path_rate: float = 0.0) -> FeaturesHeadHybrid:
    """KR, ER or KER: HMS_balance.py build_hybrid_model (both branches' features, Dense(6))."""
    _check_image(image_size)
    return FeaturesHeadHybrid(backbone, pretrained, weights, raw_channels, drop_path_rate=drop_path_rate)
