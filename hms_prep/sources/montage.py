"""The double-banana bipolar montage and NaN repair of bipolar signals."""

from __future__ import annotations

import numpy as np

from hms_prep.domain import CHAINS
from hms_prep.sources.kaggle import EEG_COLUMNS

# Electrodes of each chain, front to back, in Kaggle's block order (LL, RL, LP, RP).
CHAIN_ELECTRODES = {
    "LL": ("Fp1", "F7", "T3", "T5", "O1"),
    "RL": ("Fp2", "F8", "T4", "T6", "O2"),
    "LP": ("Fp1", "F3", "C3", "P3", "O1"),
    "RP": ("Fp2", "F4", "C4", "P4", "O2"),
}
assert tuple(CHAIN_ELECTRODES) == CHAINS

# 16 consecutive differences, four per chain, chain-major: signal 4*c + k belongs to CHAINS[c].
BIPOLAR_PAIRS = tuple(
    (chain[k], chain[k + 1]) for chain in CHAIN_ELECTRODES.values() for k in range(4)
)
MIDLINE_PAIRS = (("Fz", "Cz"), ("Cz", "Pz"))

_INDEX = {name: i for i, name in enumerate(EEG_COLUMNS)}


def pair_names(midline: bool = False) -> tuple[str, ...]:
    pairs = BIPOLAR_PAIRS + (MIDLINE_PAIRS if midline else ())
    return tuple(f"{a}-{b}" for a, b in pairs)


def bipolar_signals(eeg: np.ndarray, midline: bool = False) -> np.ndarray:
    """(samples, 20) referential EEG -> (16 or 18, samples) float32 bipolar differences; NaN kept."""
    pairs = BIPOLAR_PAIRS + (MIDLINE_PAIRS if midline else ())
    first = [_INDEX[a] for a, _ in pairs]
    second = [_INDEX[b] for _, b in pairs]
    return np.ascontiguousarray((eeg[:, first] - eeg[:, second]).T, dtype=np.float32)


# How NaN samples are repaired, recorded in the params of every array cut from EEG recordings.
NAN_REPAIR = "each bipolar signal's NaNs -> its mean over the whole recording (0 when none is finite)"


def finite_means(signals: np.ndarray) -> np.ndarray:
    """(C, 1) float64: each signal's mean over its finite samples (0 when none are finite)."""
    nan = np.isnan(signals)
    finite_count = (~nan).sum(axis=-1, keepdims=True)
    sums = np.where(nan, 0.0, signals).sum(axis=-1, keepdims=True, dtype=np.float64)
    return np.divide(sums, finite_count, out=np.zeros_like(sums), where=finite_count > 0)


def fill_nan(signals: np.ndarray, means: np.ndarray | None = None) -> np.ndarray:
    """Replace NaNs of each signal by `means` ((C, 1), default: the signal's own finite mean).

    The build passes the means of the whole recording (NAN_REPAIR), so a repaired sample's value is a
    function of its file alone, never of the span a build task happens to read. Returns a new array;
    the input is not modified.
    """
    out = np.array(signals, dtype=np.float32, copy=True)
    nan = np.isnan(out)
    if not nan.any():
        return out
    means = finite_means(out) if means is None else means
    np.copyto(out, np.broadcast_to(means, out.shape).astype(np.float32), where=nan)
    return out
