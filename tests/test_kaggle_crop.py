"""The 10-minute Kaggle spectrogram crop of a label row, on genuine files and constructed gaps."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from hms_prep.sources.kaggle import read_spectrogram
from hms_prep.kinds.kaggle_crop import kaggle_crop

from conftest import REAL, needs_real_sample

TRAIN_SPEC = REAL / "train_spectrograms" / "353733.parquet"
TEST_SPEC = REAL / "test_spectrograms" / "853520.parquet"


def as_crop(power_rows: np.ndarray) -> np.ndarray:
    """(time, 400) rows -> (4, 100, time) by the documented layout, log1p of NaN-free power."""
    return np.log1p(power_rows).reshape(len(power_rows), 4, 100).transpose(1, 2, 0)


@needs_real_sample
@pytest.mark.parametrize("offset, first_row", [(0.0, 0), (40.0, 20)])
def test_complete_windows_of_a_real_file(offset, first_row):
    time, power = read_spectrogram(TRAIN_SPEC)
    assert len(time) == 320
    crop, n_rows, nan_fraction = kaggle_crop(time, power, offset)
    assert crop.shape == (4, 100, 300) and crop.dtype == np.float32
    assert (n_rows, nan_fraction) == (300, 0.0)
    np.testing.assert_array_equal(crop, as_crop(power[first_row : first_row + 300]))
@needs_real_sample
def test_window_running_past_the_end_is_padded_not_shifted():
    time, power = read_spectrogram(TRAIN_SPEC)
    crop, n_rows, _ = kaggle_crop(time, power, 60.0)  # rows 61..639 s: 290 of 300
    assert n_rows == 290
    np.testing.assert_array_equal(crop[..., :290], as_crop(power[30:320]))
    assert np.all(crop[..., 290:] == 0)
@needs_real_sample
def test_exact_values_of_the_test_file_with_int16_time():
    assert pq.read_schema(TEST_SPEC).field("time").type == "int16"
    time, power = read_spectrogram(TEST_SPEC)
    crop, n_rows, _ = kaggle_crop(time, power, 0.0)
    assert n_rows == 300
    for chain, freq, t in [(0, 0, 0), (1, 50, 123), (2, 7, 150), (3, 99, 299), (0, 99, 1)]:
        assert crop[chain, freq, t] == np.log1p(power[t, chain * 100 + freq])


def test_nan_is_zero_power_and_missing_rows_stay_in_place():
    time = np.arange(1, 600, 2, dtype=np.int64)
    power = np.full((300, 400), np.e - 1, np.float32)  # log1p -> 1
    power[5, :40] = np.nan
    keep = np.ones(300, bool)
    keep[100] = False  # a gap: the row at 201 s is missing
    crop, n_rows, nan_fraction = kaggle_crop(time[keep], power[keep], 0.0)
    assert n_rows == 299
    assert nan_fraction == pytest.approx(40 / (299 * 400))
    assert np.all(crop[0, :40, 5] == 0) and np.all(crop[0, 40:, 5] == pytest.approx(1.0))
    assert np.all(crop[..., 100] == 0)
    assert np.all(crop[..., 101] == pytest.approx(1.0))  # the row after the gap is not shifted left
@needs_real_sample
def test_offset_outside_the_file_raises_with_its_time_range():
    time, power = read_spectrogram(TRAIN_SPEC)
    with pytest.raises(ValueError, match=r"offset 700.0 s is past the end .* 1\.\.639 s"):
        kaggle_crop(time, power, 700.0)
    with pytest.raises(ValueError, match=r"before the start .* 1\.\.639 s"):
        kaggle_crop(time, power, -600.0)
