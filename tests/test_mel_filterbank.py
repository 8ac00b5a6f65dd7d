"""The project's slaney mel filterbank: torchaudio's `melscale_fbanks` (recorded), librosa's `filters.mel`."""

import json
from pathlib import Path

import librosa
import numpy as np
import pytest

from hms_prep.kinds import MelParams
from hms_prep.kinds.mel import mel_filterbank

# Recorded by scripts/capture_mel_fbanks.py from torchaudio 2.11.0 beside torch 2.11.0, the last pair that
# loaded together; the cases cover every recipe's filterbank (n_fft 1024, 0-20 Hz, 100 and 50 mels).
RECORDED = np.load(Path(__file__).parent / "data" / "torchaudio_mel_fbanks.npz")
CASES = [tuple(case) for case in json.loads(str(RECORDED["meta"]))["cases"]]


def case_id(case) -> str:
    return "fft{}_fmin{:g}_fmax{:g}_mels{}_sr{}".format(*case)


def ours(case) -> np.ndarray:
    n_fft, f_min, f_max, n_mels, sample_rate = case
    return mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate).numpy()


def test_the_recording_covers_every_recipes_filterbank():
    recipes = {(p.n_fft, p.fmin, p.fmax, p.n_mels, 200) for p in (MelParams(10), MelParams(14, n_mels=50))}
    assert recipes <= set(CASES)
    assert json.loads(str(RECORDED["meta"]))["torchaudio"].startswith("2.11.0")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_equals_torchaudios_melscale_fbanks(case):
    """Same float32 operations in the same order: the same bits, so a store built before keeps its values."""
    result = ours(case)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, RECORDED[case_id(case)])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_equals_librosa_filters_mel_to_float32_rounding(case):
    n_fft, f_min, f_max, n_mels, sample_rate = case
    expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                                   htk=False, norm="slaney", dtype=np.float64).T  # (n_freqs, n_mels)
    result = ours(case)
    assert result.shape == expected.shape
    # librosa computes in float64, we in float32 as torchaudio did: each band edge carries a rounding error
    # of about one float32 ulp of f_max, and the slopes divide by band widths (0.2 Hz for the recipes' 100
    # mels up to 20 Hz): float32 rounding is (a few ulps of f_max) / (narrowest band) of the largest weight.
    # Measured for the recipes: 5e-6 of the largest weight; allowed here 4e-5.
    edges = librosa.mel_frequencies(n_mels + 2, fmin=f_min, fmax=f_max, htk=False)
    rounding = 4 * np.spacing(np.float32(f_max)) / np.diff(edges).min()
    np.testing.assert_allclose(result, expected, rtol=0, atol=rounding * expected.max())
