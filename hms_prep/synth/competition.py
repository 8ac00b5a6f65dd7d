"""The competition's train.csv structure (rows per EEG, EEGs per spectrogram, patients), at a fraction:
what `hms-prep synth --like competition` plants its recordings into (`synthesize_like_competition`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TableStructure:
    """The real train.csv's structure (issue 27: measured from a public copy of the competition's ids)."""

    rows: int
    eegs: int
    spectrograms: int
    patients: int
    max_rows_per_eeg: int  # median 3, mean 6.25
    max_eegs_per_spectrogram: int  # three quarters of the spectrograms hold one EEG


COMPETITION = TableStructure(
    rows=106_800, eegs=17_089, spectrograms=11_138, patients=1_950, max_rows_per_eeg=743, max_eegs_per_spectrogram=107
)
SINGLE_EEG_SHARE = 0.75


@dataclass(frozen=True)
class CompetitionPlan:
    """Counts at a fraction: rows of each EEG, EEG count of each spectrogram, patient of each spectrogram.

    EEG i belongs to spectrogram `owner[i]`; the EEGs of one spectrogram are consecutive.
    """

    rows_per_eeg: np.ndarray
    eegs_per_spectrogram: np.ndarray
    patient_of_spectrogram: np.ndarray  # patient index, 0..patients-1

    @property
    def owner(self) -> np.ndarray:
        return np.repeat(np.arange(self.eegs_per_spectrogram.size), self.eegs_per_spectrogram)


def _tail_profile(count: int, low: int, scale: float, power: float, cap: int) -> np.ndarray:
    """`count` sorted integers >= low: a power-law quantile function low + scale((1-u)^-power - 1), capped."""
    u = (np.arange(count) + 0.5) / count
    return np.minimum(low + np.floor(scale * ((1 - u) ** -power - 1)), cap).astype(np.int64)


def _full_rows_per_eeg() -> np.ndarray:
    """17,089 sorted row counts with median 3 and maximum 743, summing to 106,858 (`competition_plan` makes
    it exactly 106,800, mean 6.25): scale 5.55 and power 0.51 were fitted to the three together."""
    return _tail_profile(COMPETITION.eegs, 1, 5.55, 0.51, COMPETITION.max_rows_per_eeg)


def _full_eegs_per_spectrogram() -> np.ndarray:
    """11,138 sorted EEG counts: three quarters 1, the rest 2..107 (scale 0.8 and power 0.675 fitted to the
    maximum and the sum), summing to 17,086 (`competition_plan` makes it 17,089)."""
    singles = round(SINGLE_EEG_SHARE * COMPETITION.spectrograms)
    shared = _tail_profile(COMPETITION.spectrograms - singles, 2, 0.8, 0.675, COMPETITION.max_eegs_per_spectrogram)
    return np.concatenate([np.ones(singles, np.int64), shared])


def _exact_sum(values: np.ndarray, total: int) -> np.ndarray:
    """Sorted `values` with +-1 on the largest ones strictly between the median and the maximum, to sum to `total`.

    The median and the maximum stay as they are (where there are enough values between them).
    """
    values = values.copy()
    missing = int(total - values.sum())
    between = np.flatnonzero((values > np.median(values)) & (values < values.max()))[::-1]
    if between.size == 0:
        between = np.arange(values.size)[::-1]
    step = 1 if missing > 0 else -1
    for k in range(abs(missing)):
        i = between[k % between.size]
        if values[i] + step >= 1:
            values[i] += step
    return np.sort(values)


def _quantile_sample(full: np.ndarray, count: int) -> np.ndarray:
    """`count` values of a sorted full-size profile at evenly spaced quantiles (all of it at full count)."""
    return full[((np.arange(count) + 0.5) / count * full.size).astype(np.int64)]


def competition_plan(fraction: float, seed: int = 0) -> CompetitionPlan:
    """The real table's structure at `fraction` of its EEGs.

    At fraction F the spectrograms' EEG counts and the EEGs' row counts are the full-size profiles'
    values at round(F * 11,138) and round(F * 17,089) evenly spaced quantiles, summed to exactly
    round(F * 17,089) EEGs and round(F * 106,800) rows: medians and the share of single-EEG
    spectrograms hold at every F, and each maximum is the profile's top quantile at that count, so it
    reaches 743 rows and 107 EEGs at F = 1. EEGs are dealt to spectrograms and row counts to EEGs at
    random (seeded); each spectrogram belongs to one patient.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    n_spectrograms = max(1, round(fraction * COMPETITION.spectrograms))
    n_eegs = max(n_spectrograms, round(fraction * COMPETITION.eegs))
    n_rows = max(n_eegs, round(fraction * COMPETITION.rows))
    n_patients = max(min(n_spectrograms, 6), round(fraction * COMPETITION.patients))  # enough for 5 folds
    rng = np.random.default_rng([seed, 2])
    per_spectrogram = _exact_sum(_quantile_sample(_full_eegs_per_spectrogram(), n_spectrograms), n_eegs)
    per_eeg = _exact_sum(_quantile_sample(_full_rows_per_eeg(), n_eegs), n_rows)
    return CompetitionPlan(
        rows_per_eeg=rng.permutation(per_eeg),
        eegs_per_spectrogram=rng.permutation(per_spectrogram),
        patient_of_spectrogram=assign_patients(rng, n_spectrograms, n_patients),
    )


def assign_patients(rng, n_eegs: int, n_patients: int) -> np.ndarray:
    """Patient index of each EEG: each patient has one, the rest go to patients with skewed weights."""
    weights = rng.gamma(0.8, size=n_patients)
    extra = rng.choice(n_patients, size=n_eegs - n_patients, p=weights / weights.sum())
    return rng.permutation(np.concatenate([np.arange(n_patients), extra]))
