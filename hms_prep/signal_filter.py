"""Filtering and scaling of whole bipolar recordings, before any window is cut from them.

Filtering a whole recording once (rather than each window) is both faster and free of the edge
transients a short window would get. The filter is zero-phase, so events stay where they were.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal as sps

from hms_prep.kaggle import SAMPLE_RATE
from hms_prep.montage import pair_names
from hms_prep.store import digest

BAND_PASS_ORDER = 4
# Written into every array's parameters next to its band, so the band's meaning is unambiguous.
BAND_PASS_FILTER = f"butterworth order {BAND_PASS_ORDER}, zero-phase (scipy sosfiltfilt)"


def band_pass(
    signals: np.ndarray,
    band: tuple[float, float] | None,
    fs: int = SAMPLE_RATE,
    order: int = BAND_PASS_ORDER,
) -> np.ndarray:
    """Zero-phase Butterworth band-pass of (C, T) signals along time; float32 out.

    `band` None returns the input unchanged. Signals must be NaN-free (fill them first:
    one NaN would spread over the whole filtered signal).
    """
    if band is None:
        return signals
    sos = _band_pass_sos(float(band[0]), float(band[1]), int(fs), int(order))
    return sps.sosfiltfilt(sos, signals, axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _band_pass_sos(low: float, high: float, fs: int, order: int) -> np.ndarray:
    """The second-order sections of one band, designed once per (band, fs, order)."""
    if not 0 < low < high < fs / 2:
        raise ValueError(
            f"band-pass band ({low}, {high}) Hz is invalid at {fs} Hz: "
            f"need 0 < low < high < {fs / 2} (the Nyquist frequency)"
        )
    return sps.butter(order, (low, high), btype="bandpass", fs=fs, output="sos")


@dataclass(frozen=True)
class RawParams:
    """How the raw bipolar signals of the store are made (for 1D models)."""

    band_pass: tuple[float, float] | None = (0.5, 20.0)
    clip_uv: float = 1024.0
    divide_by: float = 32.0
    midline: bool = True  # 18 signals (16 + Fz-Cz, Cz-Pz) instead of 16
    margin_s: int = 10  # extra seconds kept each side of every label window, for jitter

    def __post_init__(self):
        # Normalise numbers so that equal parameters always give the same digest.
        if self.band_pass is not None:
            low, high = (float(f) for f in self.band_pass)
            _band_pass_sos(low, high, SAMPLE_RATE, BAND_PASS_ORDER)  # validates the band
            object.__setattr__(self, "band_pass", (low, high))
        object.__setattr__(self, "clip_uv", float(self.clip_uv))
        object.__setattr__(self, "divide_by", float(self.divide_by))
        if self.clip_uv <= 0 or self.divide_by <= 0:
            raise ValueError(f"clip_uv and divide_by must be positive, got {self.clip_uv}, {self.divide_by}")
        if not isinstance(self.margin_s, int) or isinstance(self.margin_s, bool) or self.margin_s < 0:
            raise ValueError(f"margin_s must be a non-negative integer, got {self.margin_s!r}")

    def to_dict(self) -> dict:
        """All fields plus the fixed parts of the recipe; JSON-able."""
        return {
            **asdict(self),
            "band_pass": list(self.band_pass) if self.band_pass is not None else None,
            "band_pass_filter": BAND_PASS_FILTER,
            "sample_rate": SAMPLE_RATE,
            "pairs": list(pair_names(self.midline)),
            "scaling": "clip(x, -clip_uv, clip_uv) / divide_by",
        }

    def digest(self) -> str:
        return digest(self.to_dict())


def scale_raw(signals: np.ndarray, params: RawParams) -> np.ndarray:
    """Clip to +-clip_uv then divide by divide_by (the 3rd place recipe); float32 out.

    With the defaults the result lies in [-32, 32], which float16 stores without overflow.
    """
    clipped = np.clip(signals, -params.clip_uv, params.clip_uv)
    return (clipped / np.float32(params.divide_by)).astype(np.float32, copy=False)

