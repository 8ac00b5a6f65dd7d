"""The signals of a synthetic dataset: background EEG, each class's planted pattern, the Kaggle spectrogram
computed from them, and NaN spans. Geometry and scale follow the genuine pair in shared/real-sample (the
package's docstring, hms_prep/synth/dataset.py)."""

from __future__ import annotations

import numpy as np
from scipy.signal import ShortTimeFFT, oaconvolve
from scipy.signal.windows import hann

from hms_prep.domain import CHAINS, CLASSES, LABEL_WINDOW_S, SAMPLE_RATE, SPEC_ROW_S
from hms_prep.sources.kaggle import EEG_COLUMNS, SPEC_FREQS
from hms_prep.sources.montage import bipolar_signals
from hms_prep.synth.manifest import PlannedRecording, PlannedSpectrogram

# Kaggle's spectrogram: FFT bins 3..102 of a 1024-point FFT, one row per 2 s, Hann window, PSD scale.
_KAGGLE_BINS = slice(3, 103)
_KAGGLE_STFT = ShortTimeFFT(
    hann(1024, sym=False), hop=SPEC_ROW_S * SAMPLE_RATE, fs=SAMPLE_RATE, mfft=1024, scale_to="psd"
)
_FIRST_FRAME = _KAGGLE_STFT.lower_border_end[1]  # first frame whose window starts at or after sample 0

# Scalp positions on a unit grid (x: left -2 .. right 2, y: back -2 .. front 2); the last column, EKG,
# is not on the scalp and never carries a brain pattern.
_POSITIONS = {
    "Fp1": (-1, 2), "Fp2": (1, 2),
    "F7": (-2, 1), "F3": (-1, 1), "Fz": (0, 1), "F4": (1, 1), "F8": (2, 1),
    "T3": (-2, 0), "C3": (-1, 0), "Cz": (0, 0), "C4": (1, 0), "T4": (2, 0),
    "T5": (-2, -1), "P3": (-1, -1), "Pz": (0, -1), "P4": (1, -1), "T6": (2, -1),
    "O1": (-1, -2), "O2": (1, -2),
}
_SCALP = len(EEG_COLUMNS) - 1
_XY = np.array([_POSITIONS[name] for name in EEG_COLUMNS[:_SCALP]], dtype=np.float64)


def background_eeg(rng, n: int) -> np.ndarray:
    """(n, 20) float64 background EEG in uV: pink noise, posterior alpha, line noise, DC, an ECG lead.

    Levels follow the genuine sample files: bipolar PSD about 20-60 uV^2/Hz at 1 Hz falling to about
    1 at 10-20 Hz, bipolar std of tens of uV, referential channels partly correlated.
    """
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    pink = np.maximum(freqs, 0.5) ** -rng.uniform(1.4, 2.0)  # flat below 0.5 Hz: bounded drift
    level = rng.uniform(10, 30)  # per-electrode PSD at 1 Hz, uV^2/Hz
    alpha = rng.uniform(0, 6) * np.exp(-0.5 * ((freqs - rng.uniform(8.5, 10.5)) / 0.6) ** 2)
    posterior = ((2 - _XY[:, 1]) / 4) ** 2  # alpha grows from frontal (0) to occipital (1)
    local_psd = level * rng.lognormal(0, 0.15, (_SCALP, 1)) * pink + posterior[:, None] * alpha + 0.3
    scalp = _noise_with_psd(rng, local_psd, n)
    scalp += (1 + 0.1 * rng.standard_normal((_SCALP, 1))) * _noise_with_psd(rng, 2 * level * pink[None], n)
    scalp += rng.normal(0, 20, (_SCALP, 1))  # electrode DC offsets
    if rng.random() < 0.5:  # 60 Hz mains pick-up, unequal across electrodes so it survives bipolar
        scalp += rng.uniform(0, 3, (_SCALP, 1)) * np.sin(2 * np.pi * 60 * np.arange(n) / SAMPLE_RATE)
    return np.vstack([scalp, _ekg(rng, n)]).T


def _noise_with_psd(rng, psd: np.ndarray, n: int) -> np.ndarray:
    """(channels, n) Gaussian noise whose one-sided PSD (uV^2/Hz) is `psd` (channels, n // 2 + 1)."""
    # E|rfft(x)_k|^2 = n * fs * PSD / 2, and the complex normal below has E|z|^2 = 2.
    spectrum = rng.standard_normal(psd.shape) + 1j * rng.standard_normal(psd.shape)
    spectrum *= np.sqrt(psd * n * SAMPLE_RATE / 4)
    spectrum[:, 0] = 0
    return np.fft.irfft(spectrum, n, axis=-1)


def _ekg(rng, n: int) -> np.ndarray:
    """An ECG lead: QRS spikes and T waves at 60-110 beats/min with slight variability, plus noise."""
    period = 60 / rng.uniform(60, 110)
    beats = np.cumsum(rng.normal(period, 0.03 * period, int(n / SAMPLE_RATE / period) + 2))
    beats = np.round(beats * SAMPLE_RATE).astype(int)
    impulses = np.zeros(n)
    impulses[beats[beats < n]] = rng.choice([-1, 1]) * rng.uniform(200, 800)
    t = np.arange(-0.1, 0.5, 1 / SAMPLE_RATE)
    beat = np.exp(-0.5 * (t / 0.012) ** 2) + 0.25 * np.exp(-0.5 * ((t - 0.28) / 0.04) ** 2)
    return oaconvolve(impulses, beat)[20 : 20 + n] + rng.normal(0, 8, n)


def planted_pattern(rng, recording: PlannedRecording) -> np.ndarray:
    """(n, 20) uV of the recording's class pattern, covering every label row's central 30 s and more."""
    t = np.arange(recording.seconds * SAMPLE_RATE) / SAMPLE_RATE
    start = recording.offsets[0] + 5
    stop = recording.offsets[-1] + LABEL_WINDOW_S - 5
    return _PATTERNS[CLASSES[recording.label]](rng, t, start, stop)


def _seizure(rng, t, start, stop):
    """Evolving rhythm: 5-8 Hz slowing to 2.5-4 Hz, growing in amplitude, focal onset that generalizes."""
    progress = np.clip((t - start) / (stop - start), 0, 1)
    first_freq, last_freq = rng.uniform(5, 8), rng.uniform(2.5, 4)
    freq = first_freq + (last_freq - first_freq) * progress
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    wave = np.sin(phase) + 0.4 * np.sin(2 * phase)  # sharpened, spike-and-wave-like crests
    amplitude = rng.uniform(60, 160) * (0.4 + 0.6 * progress) * _envelope(t, start, stop)
    spread = np.clip(2 * progress, 0, 1)[:, None]
    field = (1 - spread) * _lateral_field(rng, int(rng.integers(2))) + spread * _generalized_field(rng)
    return (amplitude * wave)[:, None] * field


def _lpd(rng, t, start, stop):
    """Lateralized periodic discharges: sharp waves about once a second over one hemisphere."""
    return _periodic_discharges(rng, t, start, stop)[:, None] * _lateral_field(rng, int(rng.integers(2)))


def _gpd(rng, t, start, stop):
    """Generalized periodic discharges: the same sharp waves over both hemispheres."""
    return _periodic_discharges(rng, t, start, stop)[:, None] * _generalized_field(rng)


def _lrda(rng, t, start, stop):
    """Lateralized rhythmic delta activity: 1.2-2.8 Hz waves over one hemisphere."""
    return _rhythmic_delta(rng, t, start, stop)[:, None] * _lateral_field(rng, int(rng.integers(2)))


def _grda(rng, t, start, stop):
    """Generalized rhythmic delta activity: 1.2-2.8 Hz waves over both hemispheres, frontal maximum."""
    return _rhythmic_delta(rng, t, start, stop)[:, None] * _generalized_field(rng)


def _other(rng, t, start, stop):
    """Other: background only."""
    return np.zeros((t.size, len(EEG_COLUMNS)))


_PATTERNS = {"Seizure": _seizure, "LPD": _lpd, "GPD": _gpd, "LRDA": _lrda, "GRDA": _grda, "Other": _other}
assert tuple(_PATTERNS) == CLASSES


def _periodic_discharges(rng, t, start, stop) -> np.ndarray:
    """Sharp discharges (a spike of about 35 ms, then a slow after-wave) every 0.7-1.5 s, jittered."""
    period = rng.uniform(0.7, 1.5)
    count = int(t[-1] / period) + 2
    times = rng.uniform(0, period) + np.cumsum(period * (1 + 0.08 * rng.standard_normal(count)))
    at = np.round(times * SAMPLE_RATE).astype(int)
    at = at[at < t.size]
    impulses = np.zeros(t.size)
    impulses[at] = rng.uniform(150, 300) * (1 + 0.2 * rng.standard_normal(at.size))
    k = np.arange(-0.1, 0.5, 1 / SAMPLE_RATE)
    discharge = -np.exp(-0.5 * (k / 0.015) ** 2) + 0.5 * np.exp(-0.5 * ((k - 0.15) / 0.08) ** 2)
    return oaconvolve(impulses, discharge)[20 : 20 + t.size] * _envelope(t, start, stop)


def _rhythmic_delta(rng, t, start, stop) -> np.ndarray:
    """Skewed 1.2-2.8 Hz waves with slowly wandering frequency and amplitude."""
    freq = rng.uniform(1.2, 2.8) * (1 + 0.05 * _wander(rng, t))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase) + 0.3 * np.sin(2 * phase + 0.8)
    amplitude = rng.uniform(60, 150) * (1 + 0.2 * _wander(rng, t))
    return amplitude * wave * _envelope(t, start, stop)


def _lateral_field(rng, side: int) -> np.ndarray:
    """(20,) weights of a field peaking at a random electrode of one hemisphere (side 0 left, 1 right).

    A focal field, not a uniform one: bipolar chains see differences between neighbours, so a field
    equal on every electrode of a chain would vanish from the montage.
    """
    sign = -1 if side == 0 else 1
    focus = _XY[rng.choice(np.flatnonzero(np.sign(_XY[:, 0]) == sign))]
    weights = np.exp(-((_XY - focus) ** 2).sum(axis=1) / (2 * 1.1**2))
    weights *= np.where(np.sign(_XY[:, 0]) == sign, 1.0, np.where(_XY[:, 0] == 0, 0.3, 0.05))
    return np.append(weights, 0.0)


def _generalized_field(rng) -> np.ndarray:
    """(20,) weights of a bilateral, frontally predominant field, symmetric up to 5 % jitter."""
    front = rng.uniform(0.5, 2.0)
    weights = np.exp(-(_XY[:, 0] ** 2) / (2 * 3.0**2) - (_XY[:, 1] - front) ** 2 / (2 * 1.2**2))
    weights *= 1 + 0.05 * rng.standard_normal(_SCALP)
    return np.append(weights, 0.0)


def _envelope(t: np.ndarray, start: float, stop: float, fade: float = 2.0) -> np.ndarray:
    """1 inside [start + fade, stop - fade], 0 outside [start, stop], raised-cosine ramps between."""
    rise = np.clip((t - start) / fade, 0, 1)
    fall = np.clip((stop - t) / fade, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))


def _wander(rng, t: np.ndarray) -> np.ndarray:
    """A slow random walk in [-1, 1]-ish: unit normals every 5 s, linearly interpolated."""
    knots = np.arange(0, t[-1] + 5, 5.0)
    return np.interp(t, knots, rng.standard_normal(knots.size))


def chain_power(eeg: np.ndarray) -> np.ndarray:
    """(frames, 4, 100) Kaggle-scale power of each chain for every STFT frame fully inside the EEG.

    Frame p is centred on sample p * 400; the first is _FIRST_FRAME. Power is the two-sided PSD
    (uV^2/Hz) averaged over the chain's 4 bipolar pairs.
    """
    last = _KAGGLE_STFT.upper_border_begin(eeg.shape[0])[1]  # first frame reaching past the end
    spectra = _KAGGLE_STFT.stft(bipolar_signals(eeg), p0=_FIRST_FRAME, p1=last)[:, _KAGGLE_BINS]
    power = np.abs(spectra) ** 2
    return power.reshape(len(CHAINS), 4, len(SPEC_FREQS), -1).mean(axis=1).transpose(2, 0, 1)


def spectrogram_power(
    rng, spectrogram: PlannedSpectrogram, eegs: list[np.ndarray], background: np.ndarray
) -> np.ndarray:
    """(rows, 400) float32 Kaggle spectrogram: each EEG's own power where it is, background elsewhere.

    Background rows scatter around the EEGs' background level like an average of 4 periodograms
    (Gamma with shape 4), so the file has no visible seams.
    """
    shape = (spectrogram.rows, len(CHAINS), len(SPEC_FREQS))
    power = background[None] * rng.gamma(4.0, 0.25, shape)
    for recording, eeg in zip(spectrogram.recordings, eegs):
        frames = chain_power(eeg)
        # row i has time 2i + 1 s; frame p of an EEG starting at second `start` has time start + 2p
        first_row = (recording.start_in_spec - 1) // SPEC_ROW_S + _FIRST_FRAME
        power[first_row : first_row + len(frames)] = frames
    return np.round(power.reshape(spectrogram.rows, -1), 2).astype(np.float32)


# Whole-channel NaN only in the channel no array reads (the 16-pair montage and the raw array's midline
# pairs Fz-Cz, Cz-Pz leave out EKG): such files stay repairable, so the synthetic data builds cleanly;
# tests that want failures break files on purpose.
_OFF_MONTAGE = (EEG_COLUMNS.index("EKG"),)


def with_nan_spans(rng, eeg: np.ndarray) -> np.ndarray:
    """A copy with NaN spans of 1-15 s in 1-3 channels; sometimes an off-montage channel is all NaN."""
    eeg = eeg.copy()
    n = eeg.shape[0]
    for channel in rng.choice(len(EEG_COLUMNS), size=int(rng.integers(1, 4)), replace=False):
        if rng.random() < 0.2:
            eeg[:, rng.choice(_OFF_MONTAGE)] = np.nan
            continue
        length = min(n, int(rng.uniform(1, 15) * SAMPLE_RATE))
        begin = int(rng.integers(0, n - length + 1))
        eeg[begin : begin + length, channel] = np.nan
    return eeg


def with_nan_rows(rng, power: np.ndarray) -> np.ndarray:
    """A copy with a run of 1-10 rows NaN, in all 400 columns or in one chain's 100."""
    power = power.copy()
    length = int(rng.integers(1, 11))
    begin = int(rng.integers(0, power.shape[0] - length + 1))
    chain = int(rng.integers(len(CHAINS) + 1))  # len(CHAINS) means every chain
    columns = slice(None) if chain == len(CHAINS) else slice(chain * 100, (chain + 1) * 100)
    power[begin : begin + length, columns] = np.nan
    return power

