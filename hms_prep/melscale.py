"""The slaney mel scale (Slaney's Auditory Toolbox, librosa's and torchaudio's "slaney"): linear below
1 kHz, logarithmic above it. Without torch, so that a build's driver can label a mel array's bands
(`EegMel.coordinates`) without importing it; hms_prep/kinds/mel.py builds the filterbank on it."""

from __future__ import annotations

import math

import numpy as np

SLANEY_HZ_PER_MEL = 200.0 / 3
SLANEY_LOG_HZ = 1000.0
SLANEY_LOG_MEL = SLANEY_LOG_HZ / SLANEY_HZ_PER_MEL
SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_slaney_mel(freq: float) -> float:
    if freq >= SLANEY_LOG_HZ:
        return SLANEY_LOG_MEL + math.log(freq / SLANEY_LOG_HZ) / SLANEY_LOG_STEP
    return freq / SLANEY_HZ_PER_MEL


def slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    return np.where(mels >= SLANEY_LOG_MEL, SLANEY_LOG_HZ * np.exp(SLANEY_LOG_STEP * (mels - SLANEY_LOG_MEL)),
                    SLANEY_HZ_PER_MEL * mels)


def mel_centres_hz(f_min: float, f_max: float, n_mels: int) -> np.ndarray:
    """Each filter's centre frequency in Hz: the points `hms_prep.kinds.mel.mel_filterbank` puts its triangles' peaks at."""
    points = np.linspace(hz_to_slaney_mel(f_min), hz_to_slaney_mel(f_max), n_mels + 2)
    return slaney_mel_to_hz(points)[1:-1]
