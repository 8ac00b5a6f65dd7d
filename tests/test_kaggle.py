"""The Kaggle-layout readers on the genuine competition files and on broken copies of them."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hms_prep.sources import kaggle
from hms_prep.sources.kaggle import KaggleDataError
from hms_prep.sources.montage import BIPOLAR_PAIRS, bipolar_signals, fill_nan, pair_names

from conftest import REAL, needs_real_sample
@needs_real_sample
def test_real_train_csv_row():
    table = kaggle.read_labels(REAL, "train")
    assert table.column_names == list(kaggle.TRAIN_COLUMNS)
    row = table.to_pylist()[0]
    assert (row["eeg_id"], row["spectrogram_id"], row["label_id"], row["patient_id"]) == (
        1628180742, 353733, 127492639, 42516)
    assert row["expert_consensus"] == "Seizure" and row["seizure_vote"] == 3
    assert table.schema.field("eeg_label_offset_seconds").type == pa.float64()
@needs_real_sample
def test_real_test_csv():
    table = kaggle.read_labels(REAL, "test")
    assert table.to_pylist() == [{"spectrogram_id": 853520, "eeg_id": 3911565283, "patient_id": 6885}]
@needs_real_sample
def test_real_eegs():
    train = kaggle.read_eeg(kaggle.eeg_path(REAL, "train", 1628180742))
    test = kaggle.read_eeg(kaggle.eeg_path(REAL, "test", 3911565283))
    assert train.shape == (18_000, 20) and train.dtype == np.float32  # 90 s at 200 Hz
    assert test.shape == (10_000, 20)  # test EEGs are exactly 50 s
    assert np.isfinite(train).all()
    # values are microvolts at 0.01 resolution
    assert np.allclose(np.round(train[:100] * 100), train[:100] * 100, atol=1e-2)
@needs_real_sample
def test_real_spectrograms_int64_and_int16_time():
    time_train, power_train = kaggle.read_spectrogram(kaggle.spectrogram_path(REAL, "train", 353733))
    time_test, power_test = kaggle.read_spectrogram(kaggle.spectrogram_path(REAL, "test", 853520))
    assert pq.read_schema(kaggle.spectrogram_path(REAL, "test", 853520)).field("time").type == pa.int16()
    assert power_train.shape == (320, 400) and power_test.shape == (300, 400)
    assert time_train.dtype == np.int64 and time_test.dtype == np.int64
    assert list(time_train[:3]) == [1, 3, 5] and time_train[-1] == 639
    assert (power_train > 0).all()
@needs_real_sample
def test_bipolar_montage_on_real_eeg():
    eeg = kaggle.read_eeg(kaggle.eeg_path(REAL, "train", 1628180742))
    signals = bipolar_signals(eeg, midline=True)
    assert signals.shape == (18, 18_000)
    col = {n: i for i, n in enumerate(kaggle.EEG_COLUMNS)}
    np.testing.assert_array_equal(signals[0], eeg[:, col["Fp1"]] - eeg[:, col["F7"]])  # LL first pair
    np.testing.assert_array_equal(signals[4], eeg[:, col["Fp2"]] - eeg[:, col["F8"]])  # RL first pair
    np.testing.assert_array_equal(signals[17], eeg[:, col["Cz"]] - eeg[:, col["Pz"]])
    assert pair_names()[:4] == ("Fp1-F7", "F7-T3", "T3-T5", "T5-O1") and len(BIPOLAR_PAIRS) == 16


def test_fill_nan_uses_signal_mean_or_zero():
    signals = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]], dtype=np.float32)
    filled = fill_nan(signals)
    np.testing.assert_array_equal(filled, [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert np.isnan(signals[0, 1])  # input untouched


@pytest.fixture
def broken(tmp_path):
    """A writable copy of the real sample to break in various ways."""
    if not REAL.is_dir():
        pytest.skip(f"needs the genuine Kaggle sample at {REAL}")
    shutil.copytree(REAL, tmp_path / "data")
    return tmp_path / "data"


def test_missing_files_are_named(broken):
    (broken / "train_eegs" / "1628180742.parquet").unlink()
    with pytest.raises(KaggleDataError, match=r"1628180742\.parquet: file not found"):
        kaggle.read_eeg(kaggle.eeg_path(broken, "train", 1628180742))
    (broken / "train.csv").unlink()
    with pytest.raises(KaggleDataError, match=r"train\.csv: file not found"):
        kaggle.read_labels(broken, "train")


def test_misordered_missing_and_mistyped_columns(broken):
    path = kaggle.eeg_path(broken, "train", 1628180742)
    table = pq.read_table(path)
    pq.write_table(table.select(["F3", "Fp1"] + table.column_names[2:]), path)
    with pytest.raises(KaggleDataError, match="out of order: position 0 is 'F3', expected 'Fp1'"):
        kaggle.read_eeg(path)
    pq.write_table(table.drop_columns(["Cz"]), path)
    with pytest.raises(KaggleDataError, match=r"missing \['Cz'\]"):
        kaggle.read_eeg(path)
    pq.write_table(table.set_column(0, "Fp1", pa.array(np.zeros(table.num_rows, np.int32))), path)
    with pytest.raises(KaggleDataError, match="'Fp1' has type int32, expected float32"):
        kaggle.read_eeg(path)


def test_empty_truncated_and_garbage_parquet(broken):
    path = kaggle.eeg_path(broken, "train", 1628180742)
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)
    with pytest.raises(KaggleDataError, match=r"empty file \(0 rows\)"):
        kaggle.read_eeg(path)
    pq.write_table(table, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated download
    with pytest.raises(KaggleDataError, match="unreadable parquet"):
        kaggle.read_eeg(path)
    path.write_text("not a parquet file")
    with pytest.raises(KaggleDataError, match="unreadable parquet"):
        kaggle.read_eeg(path)


def test_csv_without_rows_or_with_wrong_columns(broken):
    csv = broken / "train.csv"
    header, row = csv.read_text().splitlines()[:2]
    csv.write_text(header + "\n")
    with pytest.raises(KaggleDataError, match="train.csv: no rows"):
        kaggle.read_labels(broken, "train")
    csv.write_text(header.replace("label_id,", "") + "\n" + row + "\n")
    with pytest.raises(KaggleDataError, match="train.csv"):
        kaggle.read_labels(broken, "train")
    csv.write_text(header + "\n" + row.replace(",Seizure,3,", ",Seizure,x,") + "\n")
    with pytest.raises(KaggleDataError, match="cannot parse"):
        kaggle.read_labels(broken, "train")


def test_nan_values_are_kept_as_nan(broken):
    path = kaggle.spectrogram_path(broken, "train", 353733)
    table = pq.read_table(path)
    values = table.column("LL_0.59").to_numpy().copy()
    values[:5] = np.nan
    pq.write_table(table.set_column(1, "LL_0.59", pa.array(values)), path)
    _, power = kaggle.read_spectrogram(path)
    assert np.isnan(power[:5, 0]).all() and np.isfinite(power[5:, 0]).all()
