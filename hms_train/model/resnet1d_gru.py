"""Model kind `resnet1d_gru`: the public ResNet1D-GRU of the seed's "balance" ensemble, on the store's raw
bipolar signals (docs/recipes.md, "The seed's public half").

The network is the seed's `EEGNet` (RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification,
Ensemble_Notebook/HMS_balance.py, "Model 1", CFG VERSION 88 and the v82 weights it loads) layer for layer:
five parallel unpadded convolutions (kernels 3, 5, 7, 9, 11, 24 planes) concatenated along time,
BatchNorm + SiLU, a stride-2 conv, nine pre-activation residual blocks (BatchNorm, Hardswish, conv, each
halving time by a max-pool), BatchNorm + SiLU, AvgPool1d(6, 6, padding 2); beside it a bidirectional GRU
(hidden 128) over the input itself, its last step; both concatenated into Linear(-> 6).

One quirk is not copied by default: the seed's `nn.GRU` is built without `batch_first` and fed (B, T, 8),
so it recurs over the rows of the batch, and `rnn_out[:, -1, :]` is then each row's state at the batch's
last *time step* (t = 1,999 only): a row's prediction depends on the other rows of its batch. Here the GRU
reads each row's own 2,000 steps (`gru_over_batch = False`); `gru_over_batch = True` is the seed's wiring.

Its input is eight "map features" (HMS_balance.py CFG.map_features): Fp1-T3, T3-O1, Fp1-C3, C3-O1, Fp2-C4,
C4-O2, Fp2-T4, T4-O2. Each is the sum of two of the store's consecutive bipolar signals (Fp1-T3 =
(Fp1-F7) + (F7-T3)), so the model forms them from the raw array (`MAP_FEATURES`), then keeps 10 s of the
50 s label window (`CFG.out_samples = nsamples // 5`): the middle at evaluation, a random offset in
training, as the notebook's `EEGDataset.__data_generation`.
"""

from __future__ import annotations

import torch
from torch import nn

from hms_train.model.kinds import SIGNALS, register_model
from hms_train.model.models import NUM_CLASSES

# The store's bipolar signals, chain-major in Kaggle's chain order LL, RL, LP, RP (hms_prep.sources.montage
# BIPOLAR_PAIRS; tests/test_public_models.py holds this table to it): signal 4 * chain + k is the k-th pair.
# Each map feature of HMS_balance.py CFG.map_features as the sum of two consecutive pairs of one chain.
MAP_FEATURES = (
    ("Fp1-T3", (0, 1)),    # (Fp1-F7) + (F7-T3)
    ("T3-O1", (2, 3)),     # (T3-T5) + (T5-O1)
    ("Fp1-C3", (8, 9)),    # (Fp1-F3) + (F3-C3)
    ("C3-O1", (10, 11)),   # (C3-P3) + (P3-O1)
    ("Fp2-C4", (12, 13)),  # (Fp2-F4) + (F4-C4)
    ("C4-O2", (14, 15)),   # (C4-P4) + (P4-O2)
    ("Fp2-T4", (4, 5)),    # (Fp2-F8) + (F8-T4)
    ("T4-O2", (6, 7)),     # (T4-T6) + (T6-O2)
)
SAMPLE_RATE = 200
CROP_SAMPLES = 2000  # HMS_balance.py CFG.out_samples = nsamples // 5: 10 s of the 50 s window


def map_features(signals: torch.Tensor) -> torch.Tensor:
    """(B, 16 or 18, T) store signals -> (B, 8, T) the public notebooks' eight map features."""
    if signals.shape[1] < 16:
        raise ValueError(f"the map features need the 16 bipolar signals of the store's raw array, got {signals.shape[1]}")
    first = torch.tensor([pair[0] for _, pair in MAP_FEATURES], device=signals.device)
    second = torch.tensor([pair[1] for _, pair in MAP_FEATURES], device=signals.device)
    return signals.index_select(1, first) + signals.index_select(1, second)


def crop_time(signals: torch.Tensor, samples: int, random: bool) -> torch.Tensor:
    """`samples` of each row's time axis: the middle ((T - samples) // 2), or in training a random start
    ((T - samples) * randint(0, 1000)) // 1000 per row, as HMS_balance.py's EEGDataset draws it."""
    total = signals.shape[-1]
    if total < samples:
        raise ValueError(f"the signals hold {total} samples, fewer than the {samples} the model crops")
    if not random:
        start = (total - samples) // 2
        return signals[..., start : start + samples]
    draws = torch.randint(0, 1001, (signals.shape[0],), device=signals.device)
    starts = ((total - samples) * draws) // 1000
    index = starts[:, None] + torch.arange(samples, device=signals.device)  # (B, samples)
    return torch.gather(signals, 2, index[:, None, :].expand(-1, signals.shape[1], -1))


class ResNet1DBlock(nn.Module):
    """HMS_balance.py `ResNet_1D_Block`: BN, Hardswish, (dropout), conv, BN, Hardswish, (dropout), conv,
    max-pool /2, plus the max-pooled input."""

    def __init__(self, planes: int, kernel_size: int, dropout: float = 0.0):
        super().__init__()
        padding = kernel_size // 2
        self.bn1 = nn.BatchNorm1d(planes)
        self.relu_1 = nn.Hardswish()
        self.relu_2 = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv1d(planes, planes, kernel_size, 1, padding, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, kernel_size, 1, padding, bias=False)
        self.maxpool = nn.MaxPool1d(kernel_size=2, stride=2)
        self.downsampling = nn.MaxPool1d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.dropout(self.relu_1(self.bn1(x))))
        out = self.conv2(self.dropout(self.relu_2(self.bn2(out))))
        return self.maxpool(out) + self.downsampling(x)


class ResNet1DGRU(nn.Module):
    """HMS_balance.py `EEGNet` on (B, signals, T) store signals -> (B, 6) logits (see the module doc)."""

    def __init__(self, raw_channels: int = 18, kernels: tuple[int, ...] = (3, 5, 7, 9, 11), planes: int = 24,
                 fixed_kernel_size: int = 5, blocks: int = 9, gru_hidden: int = 128,
                 crop_samples: int = CROP_SAMPLES, gru_over_batch: bool = False, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.gru_over_batch = gru_over_batch
        self.raw_channels = raw_channels
        self.crop_samples = crop_samples
        in_channels = len(MAP_FEATURES)
        self.parallel_conv = nn.ModuleList(nn.Conv1d(in_channels, planes, k, bias=False) for k in kernels)
        self.bn1 = nn.BatchNorm1d(planes)
        self.relu_1 = nn.SiLU()
        self.relu_2 = nn.SiLU()
        self.conv1 = nn.Conv1d(planes, planes, fixed_kernel_size, stride=2, padding=2, bias=False)
        self.block = nn.Sequential(*(ResNet1DBlock(planes, fixed_kernel_size) for _ in range(blocks)))
        self.bn2 = nn.BatchNorm1d(planes)
        self.avgpool = nn.AvgPool1d(kernel_size=6, stride=6, padding=2)
        # batch_first=False with (B, T, 8) in is the seed's wiring (the GRU runs over the batch's rows)
        self.rnn = nn.GRU(in_channels, gru_hidden, num_layers=1, bidirectional=True, batch_first=not gru_over_batch)
        with torch.no_grad():  # the conv branch's flattened length (304 features in all for 2,000 samples)
            conv_features = self._conv_branch(torch.zeros(1, in_channels, crop_samples)).shape[1]
        self.num_features = conv_features + 2 * gru_hidden
        self.fc = nn.Linear(self.num_features, num_classes)

    def _conv_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.parallel_conv], dim=2)  # along time, as the seed's dim=2
        out = self.conv1(self.relu_1(self.bn1(out)))
        out = self.avgpool(self.relu_2(self.bn2(self.block(out))))
        return out.reshape(out.shape[0], -1)

    def features(self, signals: torch.Tensor) -> torch.Tensor:
        if signals.shape[1] != self.raw_channels:
            raise ValueError(f"ResNet1DGRU was built for {self.raw_channels} signals but got {signals.shape[1]}")
        x = crop_time(map_features(signals), self.crop_samples, random=self.training)
        rnn_out, _ = self.rnn(x.transpose(1, 2))  # (B, T, 8), as the seed's x.permute(0, 2, 1)
        return torch.cat([self._conv_branch(x), rnn_out[:, -1, :]], dim=1)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(signals))


@register_model("resnet1d_gru", inputs=(SIGNALS,))
def resnet1d_gru(raw_channels: int = 18, raw_samples: int = 10000, gru_over_batch: bool = False,
                 crop_samples: int = CROP_SAMPLES) -> ResNet1DGRU:
    """The seed's public ResNet1D-GRU (HMS_balance.py CFG: kernels [3, 5, 7, 9, 11], fixed_kernel_size 5,
    out_samples 2,000) on the store's raw array; `raw_samples` (the 50 s window) must hold `crop_samples`
    (fewer than 2,000 only for quick runs: the toy seed chain's GRU reads 1,000 steps)."""
    if not 1000 <= crop_samples <= raw_samples:
        raise ValueError(f"resnet1d_gru: crop_samples must be 1000 .. {raw_samples} (the signals window), got {crop_samples}")
    return ResNet1DGRU(raw_channels, crop_samples=crop_samples, gru_over_batch=gru_over_batch)
