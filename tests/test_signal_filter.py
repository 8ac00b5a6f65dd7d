"""Band-pass filtering and raw-signal scaling of whole recordings."""

import json

import numpy as np
import pytest

from hms_prep.kinds import RawParams
from hms_prep.sources.signal_filter import band_pass, scale_raw

FS = 200


def amplitude_at(signal: np.ndarray, freq: float) -> float:
    """Amplitude of the sinusoid at `freq` (an exact FFT bin of the signal's length)."""
    spectrum = np.abs(np.fft.rfft(signal)) * 2 / signal.size
    return float(spectrum[round(freq * signal.size / FS)])


def test_keeps_2_hz_and_removes_60_hz():
    t = np.arange(60 * FS) / FS
    mixture = np.stack([np.sin(2 * np.pi * 2 * t) + np.sin(2 * np.pi * 60 * t)] * 2).astype(np.float32)
    filtered = band_pass(mixture, (0.5, 20.0))
    assert filtered.shape == mixture.shape and filtered.dtype == np.float32
    kept, removed = amplitude_at(filtered[0], 2.0), amplitude_at(filtered[0], 60.0)
    print(f"2 Hz gain {kept:.4f}, 60 Hz gain {removed:.2e} ({20 * np.log10(removed):.0f} dB)")
    assert 0.98 < kept < 1.02
    assert removed < 1e-3  # at least 60 dB down
    np.testing.assert_array_equal(filtered[0], filtered[1])  # channels are filtered alike


def test_zero_phase_keeps_a_burst_in_place():
    t = np.arange(60 * FS) / FS
    centre = 6000
    burst = np.exp(-(((t - centre / FS) / 0.5) ** 2)) * np.cos(2 * np.pi * 3 * (t - centre / FS))
    filtered = band_pass(burst[None].astype(np.float32), (0.5, 20.0))[0]
    assert abs(int(np.abs(filtered).argmax()) - centre) <= 1
    assert filtered.max() > 0.8  # the 3 Hz burst is in the pass band


def test_no_band_passes_through():
    signals = np.random.default_rng(0).normal(size=(16, 1000)).astype(np.float32)
    assert band_pass(signals, None) is signals


@pytest.mark.parametrize("band", [(0.0, 20.0), (-1.0, 20.0), (0.5, 100.0), (0.5, 150.0), (20.0, 10.0)])
def test_bad_bands_raise_naming_the_band(band):
    signals = np.zeros((2, 1000), np.float32)
    with pytest.raises(ValueError, match=rf"\({band[0]}, {band[1]}\)"):
        band_pass(signals, band)
    with pytest.raises(ValueError, match="band"):
        RawParams(band_pass=band)


def test_scale_raw_clips_then_divides():
    signals = np.array([[-5000.0, -1024.0, -32.0, 0.0, 16.0, 1024.0, 2000.0]], np.float32)
    scaled = scale_raw(signals, RawParams())
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, [[-32.0, -32.0, -1.0, 0.0, 0.5, 32.0, 32.0]])
    halved = scale_raw(signals, RawParams(clip_uv=100, divide_by=2))
    np.testing.assert_array_equal(halved, [[-50.0, -50.0, -16.0, 0.0, 8.0, 50.0, 50.0]])


def test_raw_params_identity():
    params = RawParams()
    assert params.digest() == RawParams(band_pass=[0.5, 20], clip_uv=1024, divide_by=32).digest()
    as_dict = json.loads(json.dumps(params.to_dict()))
    assert as_dict["band_pass"] == [0.5, 20.0] and len(as_dict["pairs"]) == 18
    others = [RawParams(midline=False), RawParams(band_pass=None), RawParams(margin_s=5), RawParams(clip_uv=500)]
    assert len({params.digest()} | {p.digest() for p in others}) == len(others) + 1
