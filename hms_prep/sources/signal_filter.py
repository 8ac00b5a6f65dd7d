"""Filtering and scaling of whole bipolar recordings, before any window is cut from them.

Filtering a whole recording once (rather than each window) is both faster and free of the edge
transients a short window would get. The filter is zero-phase, so events stay where they were.
"""

from __future__ import annotations

import functools

import numpy as np

from hms_prep.domain import SAMPLE_RATE

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
    from scipy import signal as sps  # 1.4 s of imports: only where signals are filtered

    sos = band_pass_sos(float(band[0]), float(band[1]), int(fs), int(order))
    return sps.sosfiltfilt(sos, signals, axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def band_pass_sos(low: float, high: float, fs: int, order: int) -> np.ndarray:
    """The second-order sections of one band, designed once per (band, fs, order)."""
    from scipy import signal as sps

    check_band(low, high, fs)
    return sps.butter(order, (low, high), btype="bandpass", fs=fs, output="sos")


def check_band(low: float, high: float, fs: int = SAMPLE_RATE) -> None:
    """ValueError unless 0 < low < high < fs/2 (without importing scipy: parameters are checked in
    the driver, which filters nothing)."""
    if not 0 < low < high < fs / 2:
        raise ValueError(
            f"band-pass band ({low}, {high}) Hz is invalid at {fs} Hz: "
            f"need 0 < low < high < {fs / 2} (the Nyquist frequency)"
        )


def scale_raw(signals: np.ndarray, params) -> np.ndarray:
    """Clip to +-params.clip_uv then divide by params.divide_by (the 3rd place recipe; params: a
    `hms_prep.kinds.raw.RawParams`); float32 out.

    With the defaults the result lies in [-32, 32], which float16 stores without overflow.
    """
    clipped = np.clip(signals, -params.clip_uv, params.clip_uv)
    return (clipped / np.float32(params.divide_by)).astype(np.float32, copy=False)

