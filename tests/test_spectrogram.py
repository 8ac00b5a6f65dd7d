"""Mel spectrograms of EEG windows: agreement with librosa and torch.stft, shapes, chains, identity."""

import json

import librosa
import numpy as np
import pytest
import torch

from hms_prep.domain import SAMPLE_RATE
from hms_prep.sources.kaggle import read_eeg
from hms_prep.sources.montage import bipolar_signals, fill_nan
from hms_prep.kinds import MelParams
from hms_prep.kinds.mel import mel_filterbank, mel_windows

from conftest import REAL
LABEL_CENTRE_S = 25  # the real train.csv row has offset 0; its window is centred at offset + 25 s


@pytest.fixture(autouse=True)
def one_thread():
    """The build runs one torch thread per worker; the math must be right there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_bipolar() -> np.ndarray:
    if not REAL.is_dir():
        pytest.skip(f"needs the genuine Kaggle sample at {REAL} (../shared beside the checkout)")
    return fill_nan(bipolar_signals(read_eeg(REAL / "train_eegs" / "1628180742.parquet")))


def centred_window(signals: np.ndarray, window_s: int) -> np.ndarray:
    start = (LABEL_CENTRE_S * 2 - window_s) * SAMPLE_RATE // 2
    return signals[:, start : start + window_s * SAMPLE_RATE]


def librosa_reference(window: np.ndarray, params: MelParams) -> np.ndarray:
    """The public notebook's per-signal loop, with librosa's defaults (pad_mode 'constant' in 0.11)."""
    per_signal = []
    for x in window:
        power = librosa.feature.melspectrogram(
            y=x, sr=SAMPLE_RATE, n_fft=1024, win_length=128, hop_length=params.resolved().hop_length,
            n_mels=params.n_mels, fmin=0, fmax=20, power=2, center=True,
        )
        db = librosa.power_to_db(power, ref=np.max)[:, : params.frames]
        per_signal.append((db + 40) / 40)
    return np.stack(per_signal).reshape(4, 4, params.n_mels, params.frames).mean(axis=1)


@pytest.mark.parametrize("window_s", [10, 30])
def test_agrees_with_librosa_on_real_eeg(real_bipolar, window_s):
    params = MelParams(window_s)
    window = centred_window(real_bipolar, window_s)
    expected = librosa_reference(window, params)
    result = mel_windows(window[None], params.recipe())[0]
    diff = np.abs(result - expected)
    print(f"W={window_s}: mean abs diff {diff.mean():.2e}, max {diff.max():.2e}")
    assert diff.mean() <= 0.02
    assert diff.max() <= 1e-3  # measured about 2e-6: only float32 rounding separates them


# The DFT folds each frame about its window's centre: odd and even window lengths, more bins. The reference
# is what torchaudio's MelSpectrogram did (torchaudio is no longer installed): torch.stft of the centred,
# zero-padded frames with a periodic Hann window, power 2, then the filterbank (tests/test_mel_filterbank.py).
@pytest.mark.parametrize("win_length, fmax", [(128, 20.0), (127, 20.0), (256, 40.0)])
def test_agrees_with_a_full_stft(win_length, fmax):
    params = MelParams(10, win_length=win_length, fmax=fmax).resolved()
    windows = torch.randn(3, 16, 2000, generator=torch.Generator().manual_seed(0)) * 30
    stft = torch.stft(windows.reshape(48, 2000), n_fft=1024, hop_length=params.hop_length, win_length=win_length,
                      window=torch.hann_window(win_length), center=True, pad_mode="constant", return_complex=True)
    fbank = mel_filterbank(513, 0.0, fmax, 100, SAMPLE_RATE)
    power = (stft.abs().pow(2).transpose(-1, -2) @ fbank).transpose(-1, -2)  # (48, n_mels, frames)
    db = 10 * torch.log10(power.clamp(min=1e-10))
    db = (db - db.amax(dim=(1, 2), keepdim=True)).clamp(min=-80)
    expected = ((db[..., :256] + 40) / 40).reshape(3, 4, 4, 100, 256).mean(dim=2).numpy()
    np.testing.assert_allclose(mel_windows(windows, params.recipe()), expected, atol=1e-4)


@pytest.mark.parametrize("window_s, n_mels", [(10, 100), (30, 128)])
def test_shape_dtype_and_range(real_bipolar, window_s, n_mels):
    window = centred_window(real_bipolar, window_s)
    result = mel_windows(np.stack([window, window[::-1]]), MelParams(window_s, n_mels=n_mels).recipe())
    assert result.shape == (2, 4, n_mels, 256)
    assert result.dtype == np.float32
    assert result.min() >= -1.0 and result.max() <= 1.0
    assert result.max() > 0.5  # a real signal reaches near its own maximum (1.0) somewhere


def test_each_chain_is_the_average_of_its_four_signals():
    rng = np.random.default_rng(1)
    signals = rng.normal(size=(16, 2000)).astype(np.float32)
    params = MelParams(10)
    result = mel_windows(signals[None], params.recipe())[0]
    # a window repeating one signal 16 times gives that signal's own spectrogram in every block
    alone = mel_windows(np.stack([np.tile(s, (16, 1)) for s in signals]), params.recipe())[:, 0]
    for chain in range(4):
        np.testing.assert_allclose(result[chain], alone[4 * chain : 4 * chain + 4].mean(axis=0), atol=1e-5)


def test_sinusoid_in_chain_rl_shows_only_in_block_1():
    rng = np.random.default_rng(2)
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    signals = rng.normal(size=(16, t.size)).astype(np.float32)
    signals[4:8] += 20 * np.sin(2 * np.pi * 5.0 * t).astype(np.float32)  # RL = signals 4..7
    result = mel_windows(signals[None], MelParams(10).recipe())[0]
    profile = result.mean(axis=2)  # (chain, mel band): time-averaged level
    band_5hz = round(5.0 * 101 / 20 - 1)  # slaney mels are linear below 1 kHz: centre i at (i+1)*20/101 Hz
    assert abs(int(profile[1].argmax()) - band_5hz) <= 1
    contrast = profile[:, band_5hz] - np.median(profile, axis=1)
    assert contrast[1] > 0.5  # more than 20 dB above the chain's median band
    assert np.all(np.abs(contrast[[0, 2, 3]]) < 0.1)  # flat noise elsewhere


def test_fewer_frames_are_a_prefix():
    window = np.random.default_rng(3).normal(size=(1, 16, 6000)).astype(np.float32)
    full = mel_windows(window, MelParams(30).recipe())
    short = mel_windows(window, MelParams(30, frames=200).recipe())
    assert short.shape == (1, 4, 100, 200)
    # dB is relative to the maximum over all frames, so keeping fewer frames changes no value
    np.testing.assert_array_equal(short, full[..., :200])


def test_digest_is_stable_and_follows_every_parameter():
    base = MelParams(10)
    assert base.resolved().hop_length == 7 and MelParams(30).resolved().hop_length == 23
    assert base.digest() == MelParams(10, hop_length=7, fmin=0, fmax=20).digest()
    # pinned: a change here means the parameters' identity changed (a store's array of the old digest is
    # refused by name, never mixed). e15fd0a0fe19f562 until NaN repair was fixed per recording (nan_repair).
    assert base.digest() == "616d89cfed41175a"
    others = [
        MelParams(30), MelParams(10, n_mels=128), MelParams(10, hop_length=6), MelParams(10, frames=200),
        MelParams(10, band_pass=(0.5, 20)), MelParams(10, fmax=25.0), MelParams(10, win_length=256),
    ]
    digests = {base.digest()} | {p.digest() for p in others}
    assert len(digests) == len(others) + 1
    as_dict = json.loads(json.dumps(MelParams(10, band_pass=(0.5, 20)).to_dict()))
    assert as_dict["band_pass"] == [0.5, 20.0] and as_dict["hop_length"] == 7
    assert as_dict["mel_scale"] == "slaney" and as_dict["scaling"] == "(dB+40)/40"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="fewer than frames"):
        MelParams(10, hop_length=8)  # 1 + 2000 // 8 = 251 frames < 256
    with pytest.raises(ValueError, match="hop_length"):
        MelParams(1)  # 200 // 256 = 0
    with pytest.raises(ValueError, match=r"\(B, 16, 2000\)"):
        mel_windows(np.zeros((2, 16, 1999), np.float32), MelParams(10).recipe())
    nan_window = np.zeros((1, 16, 2000), np.float32)
    nan_window[0, 3, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mel_windows(nan_window, MelParams(10).recipe())
