"""hms-prep build end to end: real Zarr stores on disk, real Dask clusters, real parquet files."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from hms_prep.sources import kaggle
from hms_prep.store.audit import store_info, verify_store
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.domain import TARGET_COLUMNS
from hms_prep.sources.montage import bipolar_signals
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import StoreError, open_store

from conftest import REAL, ROOT, needs_real_sample

ARRAYS = ("eeg_10s", "eeg_30s", "kaggle", "raw")


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the module; builds reach it through --scheduler, as a shared cluster would."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def build(data, store, cluster, **kwargs):
    kwargs.setdefault("windows", (10, 30))
    kwargs.setdefault("chunk_rows", 8)
    return run_build(BuildConfig(data_dir=str(data), store=str(store), scheduler=cluster, **kwargs))


def chunk_files(store: Path) -> dict[str, float]:
    """Every data chunk file of the store with its modification time."""
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for name in ARRAYS + ("eeg_50s",) if (store / name).exists()
            for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json"}


def test_store_contents(train_store, synth_data):
    group, layout = open_store(train_store)
    labels = read_labels(train_store)
    source = kaggle.read_labels(synth_data, "train")
    assert layout.n_rows == labels.num_rows == source.num_rows
    assert group["eeg_10s"].shape == (layout.n_rows, 4, 100, 256)
    assert group["eeg_30s"].shape == (layout.n_rows, 4, 100, 256)
    assert group["kaggle"].shape == (layout.n_rows, 4, 100, 300)
    assert group["raw"].shape[0] == 18 and group["eeg_10s"].dtype == np.float16
    # every train.csv column is kept, plus the documented ones
    for column in source.column_names + ["row", "total_votes", "fold", "status", "error", *TARGET_COLUMNS]:
        assert column in labels.column_names, column
    eeg_ids = labels.column("eeg_id").to_numpy()
    assert (np.diff(eeg_ids) >= 0).all(), "rows sharing an EEG sit together"
    targets = np.stack([labels.column(c).to_numpy() for c in TARGET_COLUMNS], 1)
    np.testing.assert_allclose(targets.sum(1), 1, atol=1e-6)
    folds, patients = labels.column("fold").to_numpy(), labels.column("patient_id").to_numpy()
    for patient in np.unique(patients):  # patient-grouped
        assert len(np.unique(folds[patients == patient])) == 1
    assert set(np.unique(folds)) == set(range(5))
    ok = labels.column("status").to_numpy(zero_copy_only=False) == "ok"
    values = group["eeg_10s"][:][ok]
    assert np.isfinite(values).all() and values.min() >= -1.001 and values.max() <= 1.001
    assert verify_store(train_store) == [] or all("failed to build" in p for p in verify_store(train_store))


def test_stored_values_match_the_source_files(train_store, synth_data):
    """Spot-check one row against a direct computation from its files."""
    from hms_prep.kinds.kaggle_crop import kaggle_crop

    group, _ = open_store(train_store)
    labels = read_labels(train_store).to_pylist()
    row = next(r for r in labels if r["status"] == "ok")
    time_s, power = kaggle.read_spectrogram(kaggle.spectrogram_path(synth_data, "train", row["spectrogram_id"]))
    crop, _, _ = kaggle_crop(time_s, power, row["spectrogram_label_offset_seconds"])
    np.testing.assert_allclose(group["kaggle"][row["row"]], crop.astype(np.float16), rtol=1e-3)
    raw = group["raw"][:, row["raw_start"] : row["raw_start"] + 10_000]
    assert raw.shape == (18, 10_000) and np.abs(raw).max() > 0


def test_second_build_does_nothing_and_new_windows_are_added_alone(synth_data, tmp_path, cluster):
    store = tmp_path / "specs.zarr"
    first = build(synth_data, store, cluster)
    assert first.ok and sorted(first.computed) == sorted(ARRAYS)
    before = chunk_files(store)
    labels_mtime = (store / "labels.parquet").stat().st_mtime_ns

    second = build(synth_data, store, cluster)
    assert second.computed == [] and second.rows_computed == 0 and sorted(second.reused) == sorted(ARRAYS)
    assert chunk_files(store) == before, "no array rewritten"
    assert (store / "labels.parquet").stat().st_mtime_ns == labels_mtime

    third = build(synth_data, store, cluster, windows=(10, 30, 50))
    assert third.computed == ["eeg_50s"] and third.ok
    after = chunk_files(store)
    assert {k: v for k, v in after.items() if not k.startswith("eeg_50s")} == before
    assert open_store(str(store))[0]["eeg_50s"].shape[1:] == (4, 100, 256)
    info = store_info(str(store))
    params = info["arrays"]["eeg_50s"]["params"]
    assert (params["window_s"], params["hop_length"], params["n_mels"]) == (50, 50 * 200 // 256, 100)
    for key in ("window_s", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax", "frames", "band_pass"):
        assert key in params


def test_different_parameters_under_one_name_are_refused(synth_data, tmp_path, cluster):
    """Names follow from params, so only a hand-edited store has a name whose params differ: here
    eeg_10s (100 mels) renamed to the name 64 mels would get. Nothing is written on refusal."""
    store = tmp_path / "specs.zarr"
    build(synth_data, store, cluster, windows=(10,), kaggle=False, raw=None)
    from hms_prep.kinds import MelParams

    for folder in (store, store / "_build"):
        (folder / "eeg_10s").rename(folder / "eeg_10s_m64")
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(StoreError, match=r"eeg_10s_m64 exists with other parameters \(n_mels 100 -> 64"):
        build(synth_data, store, cluster, windows=(10, 30), kaggle=False, raw=None, mel=MelParams(10, n_mels=64))
    assert sorted(p.name for p in store.iterdir()) == before, "no eeg_30s_m64 was created"


def test_bad_input_fails_alone_and_is_retried_after_the_fix(synth_data, tmp_path, cluster):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    labels = kaggle.read_labels(data, "train").to_pylist()
    eeg_ids = sorted({r["eeg_id"] for r in labels})
    missing, truncated = eeg_ids[0], eeg_ids[1]
    backup = tmp_path / "backup"
    backup.mkdir()
    for eeg_id in (missing, truncated):
        shutil.copy(kaggle.eeg_path(data, "train", eeg_id), backup)
    kaggle.eeg_path(data, "train", missing).unlink()
    path = kaggle.eeg_path(data, "train", truncated)
    path.write_bytes(path.read_bytes()[:1000])

    store = tmp_path / "specs.zarr"
    summary = build(data, store, cluster)
    bad_rows = {r["label_id"] for r in labels if r["eeg_id"] in (missing, truncated)}
    failed = summary.failed_rows()
    assert {f.label_id for f in failed} == bad_rows
    reasons = " ".join(f.reason for f in failed)
    assert f"{missing}.parquet: file not found" in reasons and f"{truncated}.parquet: unreadable parquet" in reasons
    table = read_labels(str(store))
    status = dict(zip(table.column("label_id").to_pylist(), table.column("status").to_pylist()))
    assert all(status[l] == "failed" for l in bad_rows)
    assert all(s == "ok" for l, s in status.items() if l not in bad_rows), "other rows are unharmed"
    assert any("failed to build" in p for p in verify_store(str(store)))

    # Nothing changed: the failures stand, listed as before, and nothing is computed or rewritten.
    files = chunk_files(store)
    again = build(data, store, cluster)
    assert again.rows_computed == 0 and again.computed == [] and again.failed_rows() == failed
    assert chunk_files(store) == files
    forced = build(data, store, cluster, retry_failed=True)  # after fixing a bug rather than the data
    assert forced.rows_computed == len(bad_rows) and forced.failed_rows() == failed

    for eeg_id in (missing, truncated):
        shutil.copy(backup / f"{eeg_id}.parquet", kaggle.eeg_path(data, "train", eeg_id))
    retry = build(data, store, cluster)
    assert retry.ok and retry.rows_computed == len(bad_rows)
    assert set(read_labels(str(store)).column("status").to_pylist()) == {"ok"}
    reference = tmp_path / "reference.zarr"
    build(data, reference, cluster)
    for name in ARRAYS:
        np.testing.assert_array_equal(zarr.open_array(str(store / name))[:], zarr.open_array(str(reference / name))[:])


def test_short_recording_and_offset_past_the_end(synth_data, tmp_path, cluster):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    csv = data / "train.csv"
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    first = lines[1].split(",")
    first[header.index("eeg_label_offset_seconds")] = "100000.0"  # past the end of the EEG
    first[header.index("spectrogram_label_offset_seconds")] = "100000.0"
    lines[1] = ",".join(first)
    csv.write_text("\n".join(lines) + "\n")
    summary = build(data, tmp_path / "specs.zarr", cluster)
    reasons = {f.reason for f in summary.failed_rows() if f.label_id == int(first[header.index("label_id")])}
    assert any("does not fit" in r for r in reasons) and any("past the end" in r for r in reasons)
    assert len(summary.failed_rows()) == 2  # one per reason (EEG arrays, Kaggle crop), one row


@pytest.mark.slow
def test_killed_build_resumes_to_an_identical_store(synth_data, train_store, tmp_path, cluster):
    """Killed at a moment of its own (after two done flags), resumed: the store of an uninterrupted build of
    the same data and settings, conftest's train_store (10 s and 30 s windows, kaggle, raw, 8 rows a chunk)."""
    store = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "hms_prep.cli", "build", "--data", str(synth_data), "--store", str(store),
               "--windows", "10,30", "--chunk-rows", "8", "--workers", "1", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and process.poll() is None:
        flags = store / "_build" / "eeg_10s" / "done" / "c"
        done = len(list(flags.iterdir())) if flags.exists() else 0
        if done >= 2:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group: driver and Dask workers
    process.wait()
    group, layout = open_store(str(store))
    assert 0 < int(group["_build/eeg_10s/done"][:].sum()) < layout.n_chunks, "killed mid-build"

    resumed = run_build(BuildConfig(data_dir=str(synth_data), store=str(store), chunk_rows=8, scheduler=cluster))
    assert resumed.ok and 0 < resumed.rows_computed < layout.n_rows
    for name in ARRAYS:
        np.testing.assert_array_equal(zarr.open_array(str(store / name))[:], zarr.open_array(f"{train_store}/{name}")[:])
    assert read_labels(str(store)).equals(read_labels(train_store))
    assert verify_store(str(store)) == []


@needs_real_sample
def test_genuine_files_train_and_test(tmp_path, cluster):
    """The real competition row: values agree with librosa's reference recipe, chains in Kaggle order."""
    import librosa

    train = build(REAL, tmp_path / "real.zarr", cluster, windows=(10,))
    assert train.ok, train.failures
    group, _ = open_store(str(tmp_path / "real.zarr"))
    eeg = kaggle.read_eeg(kaggle.eeg_path(REAL, "train", 1628180742))
    signals = bipolar_signals(eeg)
    window = signals[:, (25 - 5) * 200 : (25 + 5) * 200].astype(np.float64)  # offset 0, centred at 25 s
    expected = np.zeros((4, 100, 256))
    for i, x in enumerate(window):
        mel = librosa.feature.melspectrogram(y=x, sr=200, n_fft=1024, win_length=128, hop_length=2000 // 256,
                                             n_mels=100, fmin=0, fmax=20, power=2.0)
        expected[i // 4] += (librosa.power_to_db(mel, ref=np.max)[:, :256] + 40) / 40 / 4
    stored = group["eeg_10s"][0].astype(np.float64)
    assert np.abs(stored - expected).mean() <= 0.02
    time_s, power = kaggle.read_spectrogram(kaggle.spectrogram_path(REAL, "train", 353733))
    np.testing.assert_allclose(group["kaggle"][0, 1, :, 0], np.log1p(power[0, 100:200]), rtol=2e-3)  # RL block

    test = build(REAL, tmp_path / "real_test.zarr", cluster, windows=(10,), split="test")
    assert test.ok and test.rows == 1
    labels = read_labels(str(tmp_path / "real_test.zarr"))
    assert labels.column("eeg_id").to_pylist() == [3911565283] and labels.column("status").to_pylist() == ["ok"]


def test_cli_build_info_verify(synth_data, tmp_path, cluster):
    from typer.testing import CliRunner

    from hms_prep.cli import app

    store = tmp_path / "cli.zarr"
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--data", str(synth_data), "--store", str(store), "--windows", "10",
                                 "--scheduler", cluster, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and "computed eeg_10s" in result.output
    result = runner.invoke(app, ["info", str(store), "--json"])
    assert result.exit_code == 0 and '"eeg_10s"' in result.output
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0
    group = zarr.open_group(str(store), mode="r+")
    group["_build/kaggle/done"][0] = 0  # an incomplete chunk must be reported
    result = runner.invoke(app, ["verify", str(store)])
    assert result.exit_code == 1 and "kaggle: 1 of" in result.output
    (tmp_path / "data").mkdir()
    result = runner.invoke(app, ["build", "--data", str(tmp_path / "data"), "--store", str(tmp_path / "x.zarr")])
    assert result.exit_code == 1 and "train.csv: file not found" in result.output


def test_codec_fast_stores_the_eeg_windows_uncompressed_and_the_same_values(train_store, synth_data, tmp_path,
                                                                             cluster):
    """`--codec fast`: each kind's fastest codec to read (the EEG windows uncompressed, the Kaggle crop in
    zstd, raw in lz4); the values are those of the default store, and the reader reads them alike."""
    from hms_prep.store.codecs import codec_of
    from hms_train.data.reader import Selection, StoreReader
    from hms_train.data.sampler import SamplerState

    store = tmp_path / "fast.zarr"
    assert build(synth_data, store, cluster, codec="fast").ok
    group, reference = zarr.open_group(str(store), mode="r"), zarr.open_group(train_store, mode="r")
    assert {name: codec_of(group[name]).name for name in ARRAYS} == {
        "eeg_10s": "none", "eeg_30s": "none", "kaggle": "zstd", "raw": "lz4"}
    for name in ARRAYS:
        np.testing.assert_array_equal(group[name][:], reference[name][:])
    fast, default = (StoreReader(url, ["eeg_10s", "eeg_30s", "kaggle"], threads=2) for url in (str(store), train_store))
    rows = fast.select(Selection())
    for a, b in zip(fast.batches(rows, 8, SamplerState(seed=1)), default.batches(rows, 8, SamplerState(seed=1))):
        for key in ("row", "eeg_10s", "eeg_30s", "kaggle"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    with pytest.raises(StoreError, match="created with --codec fast, asked for auto"):
        build(synth_data, store, cluster, codec="auto")
