"""A plug-in array kind that lives outside the packages: `band_power`, per row the log power of each
chain's bipolar signals in five EEG bands, in time bins of a window centred on the label.

One module is the whole plug-in (docs/architecture.md, "How to add an array kind"): a frozen params
dataclass and an `ArrayKind` registered at import. Nothing in hms_prep names it. With this folder on
PYTHONPATH:

    hms-prep build --data DIR --plugin extra_kind --array band_power:window_s=10,frames=20

adds `band_power_10s`, (rows, 4 chains, 5 bands, frames) float16, beside the default arrays. It is an
image part (role "image") of unscaled log power, so it declares `normalise = "zscore"`: readers z-score
each sample of it. tests/test_plugins.py builds, verifies and reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hms_prep.domain import CHAINS, SAMPLE_RATE
from hms_prep.kinds import ArrayKind, Cut, register_kind, variant_name
from hms_prep.kinds.base import EEG, KindParams
from hms_prep.sources.montage import BIPOLAR_PAIRS
from hms_prep.store.arrays import NORMALISE_ZSCORE

BANDS_HZ = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 20.0), (20.0, 30.0))  # delta, theta, alpha, beta, gamma
FLOOR = 1e-6  # power added before the log: a flat signal stays finite


@dataclass(frozen=True)
class BandPowerParams(KindParams):
    window_s: int = 10  # seconds, centred on the label window's centre
    frames: int = 20  # time bins; each at least 0.5 s long, so every band holds a frequency bin

    def __post_init__(self):
        if not 1 <= self.window_s <= 50:
            raise ValueError(f"band_power window_s must be 1..50 seconds, got {self.window_s}")
        if not 1 <= self.frames <= 2 * self.window_s or (self.window_s * SAMPLE_RATE) % self.frames:
            raise ValueError(f"band_power frames must divide {self.window_s * SAMPLE_RATE} samples into bins of at "
                             f"least 0.5 s, got {self.frames}")

    def to_dict(self) -> dict:
        return {**asdict(self), "bands_hz": [list(band) for band in BANDS_HZ], "sample_rate": SAMPLE_RATE,
                "scaling": "log10(mean band power + 1e-6), mean of each chain's 4 signals"}


@register_kind
@dataclass(frozen=True)
class BandPower(ArrayKind):
    params: BandPowerParams
    kind = "band_power"
    params_type = BandPowerParams
    source = EEG  # cut from the NaN-repaired bipolar signals, read once per recording with the other kinds
    default_codec = "zstd"
    stage = "band_power"
    normalise = NORMALISE_ZSCORE  # log power, not scaled: readers z-score each sample
    # role stays ArrayKind's default, ROLE_IMAGE: one (4 chains, bands, frames) item per row

    @property
    def name(self) -> str:  # band_power_10s, band_power_10s_f40, band_power_10s_<digest>
        window = self.params.window_s
        return variant_name(f"band_power_{window}s", self.params, BandPowerParams(window), {"frames": "f{}"})

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(CHAINS), len(BANDS_HZ), self.params.frames)

    def cut(self, recording, rows) -> Cut:
        values = {}
        for row in recording.good:
            if row.row in rows:  # the row's centred window, NaN repaired (read once for every EEG kind)
                window = recording.centred_window(row, self.params.window_s)[: len(BIPOLAR_PAIRS)]
                values[row.row] = band_powers(window, self.params.frames)
        return Cut(values=values)

    @staticmethod
    def title(params: dict) -> str:
        return f"band power {params['window_s']} s · {len(params['bands_hz'])} bands × {params['frames']} bins"


def band_powers(window: np.ndarray, frames: int) -> np.ndarray:
    """(16, samples) chain-major bipolar signals -> (4 chains, bands, frames) log10 band power."""
    bins = window.reshape(len(BIPOLAR_PAIRS), frames, -1)
    power = np.abs(np.fft.rfft(bins, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(bins.shape[-1], 1 / SAMPLE_RATE)
    bands = np.stack([power[..., (freqs >= low) & (freqs < high)].mean(-1) for low, high in BANDS_HZ], axis=1)
    return np.log10(bands + FLOOR).reshape(len(CHAINS), -1, len(BANDS_HZ), frames).mean(1)
