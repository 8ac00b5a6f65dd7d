"""The synthetic dataset: Kaggle's exact layout, realistic geometry and votes, learnable planted classes."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.signal import welch

from hms_prep.domain import CLASSES, SAMPLE_RATE, VOTE_COLUMNS
from hms_prep.sources.kaggle import (
    SPEC_FREQS,
    eeg_path,
    read_eeg,
    read_labels,
    read_spectrogram,
    spectrogram_path,
)
from hms_prep.sources.montage import bipolar_signals, fill_nan
from hms_prep.synth.dataset import synthesize

from conftest import REAL, needs_real_sample

LEFT = [0, 1, 2, 3, 8, 9, 10, 11]  # bipolar pairs of LL and LP (BIPOLAR_PAIRS is chain-major)
RIGHT = [4, 5, 6, 7, 12, 13, 14, 15]  # RL and RP


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize(out, n_eegs=60, seed=3, n_test=4)
    assert summary.out_dir == out and summary.train_eegs == 60 and summary.test_eegs == 4
    return out


@pytest.fixture(scope="module")
def labels(data):
    table = read_labels(data, "train")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def planted(labels):
    """Each row's planted class: an EEG carries one class, the one its rows' summed votes favour."""
    votes = np.stack([labels[c] for c in VOTE_COLUMNS], axis=1)
    eeg_ids = labels["eeg_id"]
    by_eeg = {e: int(np.argmax(votes[eeg_ids == e].sum(axis=0))) for e in np.unique(eeg_ids)}
    return np.array([by_eeg[e] for e in eeg_ids])


@pytest.fixture(scope="module")
def spectrograms(data, labels):
    """spectrogram_id -> (times, power) of every train spectrogram file."""
    ids = np.unique(labels["spectrogram_id"])
    return {s: read_spectrogram(spectrogram_path(data, "train", s)) for s in ids}


@pytest.fixture(scope="module")
def window_features(data, labels):
    """Per label row, from the EEG's 20 s around the label centre: band powers of the bipolar pairs."""
    eegs = {}
    features = []
    for eeg_id, offset in zip(labels["eeg_id"], labels["eeg_label_offset_seconds"]):
        if eeg_id not in eegs:
            eegs[eeg_id] = fill_nan(bipolar_signals(read_eeg(eeg_path(data, "train", eeg_id))))
        centre = int((offset + 25) * SAMPLE_RATE)
        freqs, psd = welch(eegs[eeg_id][:, centre - 2000 : centre + 2000], fs=SAMPLE_RATE, nperseg=512)

        def band(low, high):
            return psd[:, (freqs >= low) & (freqs < high)].sum(axis=1) * (freqs[1] - freqs[0])

        broad = band(0.5, 20)
        features.append((
            band(1, 3).mean(),
            band(3, 8).mean(),
            band(8, 20).mean(),
            abs(np.log(broad[LEFT].mean() / broad[RIGHT].mean())),
        ))
    return np.array(features)


def first_line(path):
    return Path(path).read_text().splitlines()[0]
@needs_real_sample
def test_files_match_the_genuine_layout(data, labels):
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        assert first_line(data / name) == first_line(REAL / name)
    for folder in ("train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"):
        real_schema = pq.read_schema(next((REAL / folder).glob("*.parquet"))).remove_metadata()
        files = sorted((data / folder).glob("*.parquet"))
        assert files, folder
        for path in files:
            assert pq.read_schema(path).remove_metadata().equals(real_schema), path
            assert pq.ParquetFile(path).metadata.row_group(0).column(1).compression == "SNAPPY"
    assert pq.read_schema(next((data / "test_spectrograms").glob("*.parquet"))).field("time").type == "int16"
    # train.csv references exactly the files written, and every one of them reads back
    for folder, column in (("train_eegs", "eeg_id"), ("train_spectrograms", "spectrogram_id")):
        assert {int(p.stem) for p in (data / folder).glob("*.parquet")} == set(labels[column].tolist())
    for path in sorted(data.glob("*_eegs/*.parquet")):
        assert read_eeg(path).shape[1] == 20
    for path in sorted(data.glob("*_spectrograms/*.parquet")):
        times, power = read_spectrogram(path)
        assert power.shape == (times.size, 400)
        np.testing.assert_array_equal(times, 2 * np.arange(times.size) + 1)


def test_test_split_is_fifty_seconds_and_ten_minutes(data):
    test = read_labels(data, "test").to_pydict()
    assert len(test["eeg_id"]) == 4
    assert not set(test["patient_id"]) & set(read_labels(data, "train").column("patient_id").to_pylist())
    for eeg_id, spectrogram_id in zip(test["eeg_id"], test["spectrogram_id"]):
        assert read_eeg(eeg_path(data, "test", eeg_id)).shape == (50 * SAMPLE_RATE, 20)
        times, power = read_spectrogram(spectrogram_path(data, "test", spectrogram_id))
        assert power.shape == (300, 400) and times[0] == 1 and times[-1] == 599
    lines = (data / "sample_submission.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == test["eeg_id"]
    for line in lines:
        assert line.split(",")[1:] == ["0.16666666666666666"] * 6


def test_eeg_values_are_realistic_microvolts(data, labels):
    eeg = read_eeg(eeg_path(data, "train", labels["eeg_id"][0]))
    finite = eeg[np.isfinite(eeg)].astype(np.float64)
    np.testing.assert_allclose(finite * 100, np.round(finite * 100), atol=1e-3)  # 0.01 uV resolution
    spread = np.nanstd(bipolar_signals(eeg), axis=1)
    assert 5 < np.median(spread) < 200  # tens of microvolts, like the genuine files


def test_label_rows_have_valid_geometry(data, labels, planted):
    assert np.unique(labels["label_id"]).size == labels["label_id"].size
    offsets = labels["eeg_label_offset_seconds"]
    spec_offsets = labels["spectrogram_label_offset_seconds"]
    assert np.mean(offsets % 2 == 0) > 0.8 and np.all(offsets % 1 == 0)
    inside = []
    for eeg_id in np.unique(labels["eeg_id"]):
        rows = np.flatnonzero(labels["eeg_id"] == eeg_id)
        np.testing.assert_array_equal(labels["eeg_sub_id"][rows], np.arange(rows.size))
        assert np.all(np.diff(offsets[rows]) > 0)
        samples = read_eeg(eeg_path(data, "train", eeg_id)).shape[0]
        assert np.all(offsets[rows] >= 0) and np.all((offsets[rows] + 50) * SAMPLE_RATE <= samples)
        # one EEG sits at one place in its spectrogram, 275 s before its first window's spectrogram offset
        starts = np.unique(spec_offsets[rows] - offsets[rows] + 275)
        assert starts.size == 1 and starts[0] >= 0
        (spectrogram_id,) = np.unique(labels["spectrogram_id"][rows])
        times, _ = read_spectrogram(spectrogram_path(data, "train", spectrogram_id))
        assert starts[0] + samples / SAMPLE_RATE <= times[-1] + 1  # the spectrogram covers the EEG
        for spec_offset in spec_offsets[rows]:
            inside.append(np.sum((times >= spec_offset) & (times < spec_offset + 600)) == 300)
    assert np.all(spec_offsets >= 0) and np.mean(inside) > 0.9
    votes = np.stack([labels[c] for c in VOTE_COLUMNS], axis=1)
    assert list(labels["expert_consensus"]) == [CLASSES[i] for i in np.argmax(votes, axis=1)]
    assert np.mean(labels["expert_consensus"] == np.array(CLASSES)[planted]) > 0.7


def test_votes_are_bimodal_and_mostly_on_the_planted_class(labels, planted):
    votes = np.stack([labels[c] for c in VOTE_COLUMNS], axis=1)
    totals = votes.sum(axis=1)
    assert totals.min() >= 1 and totals.max() <= 28
    assert not np.any((totals >= 8) & (totals <= 9))
    assert 0.25 < np.mean(totals <= 7) < 0.75
    share = votes[np.arange(len(totals)), planted] / totals
    assert 0.6 < share.mean() < 0.95  # learnable, yet not a one-hot target
    assert set(planted) == set(range(len(CLASSES)))


def test_eegs_have_several_rows_and_patients_several_eegs(labels):
    eeg_ids, rows_per_eeg = np.unique(labels["eeg_id"], return_counts=True)
    assert rows_per_eeg.mean() > 3 and rows_per_eeg.max() > 8
    first_rows = np.unique(labels["eeg_id"], return_index=True)[1]
    _, eegs_per_patient = np.unique(labels["patient_id"][first_rows], return_counts=True)
    assert eegs_per_patient.size >= 5 and eegs_per_patient.max() >= 4
    # like the real set, some spectrogram files cover two EEGs
    pairs = {(s, e) for s, e in zip(labels["spectrogram_id"], labels["eeg_id"])}
    _, eegs_per_spectrogram = np.unique([s for s, _ in pairs], return_counts=True)
    assert eegs_per_spectrogram.max() == 2


def test_some_files_have_nans(data, spectrograms):
    partial_eeg = False
    for path in data.glob("train_eegs/*.parquet"):
        nan = np.isnan(read_eeg(path))
        partial_eeg |= bool(nan.any() and not nan.all(axis=1).any())  # NaN spans, never a whole row
    assert partial_eeg
    nan_rows = [np.isnan(power).any(axis=1) for _, power in spectrograms.values()]
    assert any(rows.any() and not rows.all() for rows in nan_rows)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = synthesize(tmp_path / "a", n_eegs=8, seed=5, n_test=2).out_dir
    again = synthesize(tmp_path / "b", n_eegs=8, seed=5, n_test=2).out_dir
    other = synthesize(tmp_path / "c", n_eegs=8, seed=6, n_test=2).out_dir
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "train.csv").read_bytes() != (other / "train.csv").read_bytes()
    files = sorted(p.relative_to(first) for p in first.glob("*/*.parquet"))
    assert files == sorted(p.relative_to(again) for p in again.glob("*/*.parquet"))
    for relative in files:
        read = read_eeg if "eegs" in relative.parent.name else lambda p: read_spectrogram(p)[1]
        np.testing.assert_array_equal(read(first / relative), read(again / relative))
    with pytest.raises(FileExistsError):
        synthesize(first, n_eegs=8, seed=5, n_test=2)


def group_mean(values, planted, name):
    return values[planted == CLASSES.index(name)].mean()


def test_planted_classes_differ_in_the_eeg(window_features, planted):
    delta, theta, beta, asymmetry = window_features.T
    other_delta = group_mean(delta, planted, "Other")
    assert group_mean(delta, planted, "GRDA") > 3 * other_delta
    assert group_mean(delta, planted, "LRDA") > 3 * other_delta
    assert group_mean(theta, planted, "Seizure") > 3 * group_mean(theta, planted, "Other")
    # sharp discharges carry power above the delta band, rhythmic delta does not
    assert group_mean(beta, planted, "LPD") > 1.5 * group_mean(beta, planted, "LRDA")
    assert group_mean(beta, planted, "GPD") > 1.5 * group_mean(beta, planted, "GRDA")
    # lateralized patterns make one hemisphere stronger (|log ratio| > 0.5: more than 1.6x)
    generalized = max(group_mean(asymmetry, planted, name) for name in ("GRDA", "GPD", "Other"))
    for name in ("LRDA", "LPD"):
        assert group_mean(asymmetry, planted, name) > max(0.5, 3 * generalized)
    assert generalized < 0.3


def test_kaggle_spectrogram_is_the_eeg_power_where_the_eeg_is(data, labels, spectrograms):
    """Recompute a Hann 1024-point STFT of the bipolar chains by hand at each row's time."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic Hann
    checked = 0
    for eeg_id in np.unique(labels["eeg_id"])[:10]:
        row = np.flatnonzero(labels["eeg_id"] == eeg_id)[0]
        eeg = read_eeg(eeg_path(data, "train", eeg_id))
        times, power = spectrograms[labels["spectrogram_id"][row]]
        if np.isnan(eeg).any() or np.isnan(power).any():
            continue
        offset = labels["eeg_label_offset_seconds"][row]
        # the spectrogram second at which the EEG's sample 0 sits
        start = labels["spectrogram_label_offset_seconds"][row] - offset + 275
        pairs = bipolar_signals(eeg).astype(np.float64)
        for time, kaggle_row in zip(times, power):
            centre = int(round((time - start) * SAMPLE_RATE))
            if centre < 512 or centre + 512 > eeg.shape[0]:
                continue
            spectrum = np.fft.rfft(pairs[:, centre - 512 : centre + 512] * window)[:, 3:103]
            psd = np.abs(spectrum) ** 2 / (SAMPLE_RATE * np.sum(window**2))  # two-sided, uV^2/Hz
            expected = psd.reshape(4, 4, 100).mean(axis=1)  # average the 4 pairs of each chain
            np.testing.assert_allclose(kaggle_row, expected.ravel(), rtol=1e-4, atol=0.006)
            checked += 1
    assert checked > 100


def test_kaggle_spectrogram_carries_the_planted_class(labels, planted, spectrograms):
    delta_bins = (SPEC_FREQS >= 1) & (SPEC_FREQS < 3)
    delta, asymmetry = [], []
    spec_offsets = labels["spectrogram_label_offset_seconds"]
    for spectrogram_id, spec_offset in zip(labels["spectrogram_id"], spec_offsets):
        times, power = spectrograms[spectrogram_id]
        centre = power[(times >= spec_offset + 290) & (times < spec_offset + 310)].reshape(-1, 4, 100)
        chains = np.nanmean(centre[:, :, delta_bins], axis=(0, 2))  # LL, RL, LP, RP
        delta.append(chains.mean())
        asymmetry.append(abs(np.log((chains[0] + chains[2]) / (chains[1] + chains[3]))))
    delta, asymmetry = np.array(delta), np.array(asymmetry)
    assert group_mean(delta, planted, "GRDA") > 3 * group_mean(delta, planted, "Other")
    assert group_mean(delta, planted, "LRDA") > 3 * group_mean(delta, planted, "Other")
    assert group_mean(asymmetry, planted, "LRDA") > 3 * group_mean(asymmetry, planted, "GRDA")
