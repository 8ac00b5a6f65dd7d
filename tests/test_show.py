"""`hms-prep show`: the picture of one store row."""

import json
import shutil

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hms_prep.cli import app
from hms_prep.show import (
    DPI,
    FIG_WIDTH,
    RAW_HEIGHT,
    SPECTROGRAM_HEIGHT,
    find_row,
    raw_window,
    read_part,
    row_title,
    show_row,
    stack_chains,
    standardise,
)
from hms_prep.domain import LABEL_SAMPLES
from hms_prep.store.audit import verify_store
from hms_prep.domain import CHAINS
from hms_prep.sources.kaggle import SPEC_FREQ_NAMES
from hms_prep.store.coords import store_dimension_names
from hms_prep.store.arrays import describe_arrays, dimension_names
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import open_store
from hms_train.image.compose import compose_image

WITH_RAW = (round(FIG_WIDTH * DPI), round((SPECTROGRAM_HEIGHT + RAW_HEIGHT) * DPI))  # (width, height) pixels
WITHOUT_RAW = (round(FIG_WIDTH * DPI), round(SPECTROGRAM_HEIGHT * DPI))


def png_size(path) -> tuple[int, int]:
    height, width = mpimg.imread(path).shape[:2]
    return width, height


@pytest.fixture(scope="module")
def test_store(synth_data, tmp_path_factory):
    """A test-split store without raw signals, in memory (built on threads, no worker processes to
    start), from a copy of the synthetic data whose first test EEG is truncated: its row fails."""
    import shutil

    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.sources.kaggle import eeg_path, read_labels as read_csv

    folder = tmp_path_factory.mktemp("show")
    data = folder / "data"
    shutil.copytree(synth_data, data)
    broken = eeg_path(data, "test", read_csv(data, "test").column("eeg_id")[0].as_py())
    broken.write_bytes(broken.read_bytes()[:500])
    url = f"memory://{folder.name}/test.zarr"
    run_build(BuildConfig(data_dir=str(data), store=url, split="test", windows=(10,), raw=None,
                          chunk_rows=8, workers=1))
    return url


def test_png_by_row_label_id_and_eeg_id(train_store, tmp_path):
    labels = read_labels(train_store)
    row = 5
    label_id = labels.column("label_id")[row].as_py()
    eeg_id = labels.column("eeg_id")[row].as_py()
    first_of_eeg = int(np.flatnonzero(labels.column("eeg_id").to_numpy() == eeg_id).min())

    by_row = show_row(train_store, row=row, out=tmp_path / "a.png")
    by_label = show_row(train_store, label_id=label_id, out=tmp_path / "b.png")
    by_eeg = show_row(train_store, eeg_id=eeg_id, out=str(tmp_path / "c.png"))
    for path in (by_row, by_label, by_eeg):
        assert path.is_file() and png_size(path) == WITH_RAW
    assert find_row(labels, label_id=label_id) == row
    assert find_row(labels, eeg_id=eeg_id) == first_of_eeg
    # the same row drawn twice gives the same picture
    assert np.array_equal(mpimg.imread(by_row), mpimg.imread(by_label))


def test_unknown_rows_and_ids_are_clear_errors(train_store):
    labels = read_labels(train_store)
    with pytest.raises(ValueError, match="no row with label_id 12345"):
        find_row(labels, label_id=12345)
    with pytest.raises(ValueError, match="no row with eeg_id 12345"):
        find_row(labels, eeg_id=12345)
    with pytest.raises(ValueError, match=f"row {labels.num_rows} is out of range"):
        find_row(labels, row=labels.num_rows)
    with pytest.raises(ValueError, match="exactly one"):
        find_row(labels)
    with pytest.raises(ValueError, match="exactly one"):
        find_row(labels, row=0, eeg_id=1)


def test_image_parts_are_what_the_trainer_composes(train_store):
    group, _ = open_store(train_store)
    row = 3
    parts = {name: group[name][row : row + 1] for name in ("eeg_10s", "eeg_30s", "kaggle")}
    normalise = {name: array.normalise for name, array in describe_arrays(group).items()}
    trainer = compose_image({k: torch.from_numpy(v) for k, v in parts.items()}, list(parts), normalise)[0, 0].numpy()
    shown = np.concatenate(
        [stack_chains(standardise(v[0].astype(np.float32)) if k == "kaggle" else v[0].astype(np.float32))
         for k, v in parts.items()], axis=1)
    np.testing.assert_allclose(shown, trainer, rtol=1e-4, atol=1e-4)


def test_titles(train_store, test_store):
    train_label = read_labels(train_store).slice(0, 1).to_pylist()[0]
    title = row_title(train_label)
    assert f"label_id {train_label['label_id']}" in title and f"total {train_label['total_votes']}" in title
    assert f"LPD {train_label['lpd_vote']}" in title and train_label["expert_consensus"] in title
    test_label = read_labels(test_store).slice(0, 1).to_pylist()[0]
    assert row_title(test_label) == f"row 0 · eeg_id {test_label['eeg_id']}"


def test_test_store_and_failed_row(test_store, tmp_path):
    labels = read_labels(test_store)
    status = labels.column("status").to_pylist()
    assert "failed" in status and "ok" in status
    for row in range(labels.num_rows):
        path = show_row(test_store, row=row, out=tmp_path / f"{row}.png")
        assert png_size(path) == WITHOUT_RAW
    with pytest.raises(ValueError, match="no label_id column"):
        show_row(test_store, label_id=1, out=tmp_path / "x.png")


def test_cli_default_name_and_errors(train_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eeg_id = read_labels(train_store).column("eeg_id")[0].as_py()
    runner = CliRunner()
    result = runner.invoke(app, ["show", train_store, "--eeg-id", str(eeg_id)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "row0.png" and (tmp_path / "row0.png").is_file()
    result = runner.invoke(app, ["show", train_store, "--label-id", "12345"])
    assert result.exit_code == 1 and "no row with label_id 12345" in result.output
    result = runner.invoke(app, ["show", train_store])
    assert result.exit_code == 1 and "exactly one" in result.output


def test_xarray_opens_the_store_with_named_dimensions_and_reads_a_row_as_show_does(train_store):
    """Every data array carries zarr v3 dimension_names and the store its coordinates (store/coords.py):
    xarray opens it as one Dataset (the `_build` group is not one of its variables), labels.parquet joins
    on `label_id`, `.sel(label_id=X)` holds what `hms-prep show` reads for that row, and the axes read in
    Hz and s as the kinds' params say (docs/store-format.md shows these lines)."""
    import pandas as pd
    import xarray as xr

    ds = xr.open_zarr(train_store, consolidated=False)
    ds = ds.merge(pd.read_parquet(f"{train_store}/labels.parquet").set_index("label_id").to_xarray())
    group, _ = open_store(train_store)
    described = describe_arrays(group)
    assert sorted(described) == sorted(v for v in ds.data_vars if ds[v].ndim > 1) == ["eeg_10s", "eeg_30s", "kaggle",
                                                                                       "raw"]
    assert ds["eeg_10s"].dims == ("label_id", "chain", "eeg_10s_frequency", "eeg_10s_time")
    assert ds["kaggle"].dims == ("label_id", "chain", "kaggle_frequency", "kaggle_time")
    assert ds["raw"].dims == ("raw_signal", "sample")
    assert all(ds[name].dims == store_dimension_names(name, d.axes, "train") for name, d in described.items())
    row = 5
    labels = read_labels(train_store).slice(row, 1).to_pylist()[0]
    assert labels["row"] == row
    one = ds.sel(label_id=labels["label_id"])
    assert int(one["row"]) == row and int(one["eeg_id"]) == labels["eeg_id"]
    for name in ("eeg_10s", "eeg_30s", "kaggle"):
        part = one[name].values.astype(np.float32)
        expected = read_part(train_store, group, described[name], row)  # z-scored where the array says normalise: zscore
        np.testing.assert_array_equal(standardise(part) if described[name].normalise == "zscore" else part, expected)
    start = int(one["raw_start"])
    assert start == labels["raw_start"]
    np.testing.assert_array_equal(ds["raw"].isel(sample=slice(start, start + LABEL_SAMPLES)).values.astype(np.float32),
                                  raw_window(train_store, group["raw"], start))
    # the axes, from each kind's params: mel centres on the slaney scale, frames and columns centred
    assert list(ds["chain"].values) == list(CHAINS) and list(ds["raw_signal"].values) == group["raw"].attrs["signals"]
    for window in (10, 30):
        params = described[f"eeg_{window}s"].params
        frequency, time = ds[f"eeg_{window}s_frequency"], ds[f"eeg_{window}s_time"]
        assert frequency.attrs["units"] == "Hz" and time.attrs["units"] == "s"
        assert len(frequency) == params["n_mels"] and 0 < frequency[0] < frequency[-1] < params["fmax"]
        np.testing.assert_allclose(np.diff(frequency), params["fmax"] / (params["n_mels"] + 1))  # linear below 1 kHz
        np.testing.assert_allclose(time.values, np.arange(params["frames"]) * params["hop_length"] / 200 - window / 2)
    np.testing.assert_array_equal(ds["kaggle_frequency"].values, [float(f) for f in SPEC_FREQ_NAMES])
    np.testing.assert_array_equal(ds["kaggle_time"].values, np.arange(-299, 300, 2))  # 2 s columns of 10 min, centred


def test_a_store_built_before_coordinates_gets_them_from_its_next_build_computing_nothing(tiny_data, tmp_path):
    """A store without coordinates (built before them: its per-row dimension named `row`) gets them, and
    its arrays the key's dimension name, from the next build with its arguments; no row is computed."""
    import xarray as xr
    from hms_prep.building.run import BuildConfig, run_build

    config = BuildConfig(data_dir=str(tiny_data), store=str(tmp_path / "s.zarr"), windows=(10,), chunk_rows=8,
                         kaggle=False, raw=None, in_process=True)
    run_build(config)
    store = tmp_path / "s.zarr"
    for name in ("label_id", "chain", "eeg_10s_frequency", "eeg_10s_time"):
        shutil.rmtree(store / name)
    path = store / "eeg_10s" / "zarr.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dimension_names": list(dimension_names(
        "eeg_10s", ("row", "chain", "frequency", "time")))}))
    assert xr.open_zarr(str(store), consolidated=False)["eeg_10s"].dims[0] == "row"
    summary = run_build(config)
    assert summary.rows_computed == 0 and summary.ok
    ds = xr.open_zarr(str(store), consolidated=False)
    assert ds["eeg_10s"].dims[0] == "label_id" and len(ds["eeg_10s_frequency"]) == 100
    assert list(ds["label_id"].values) == read_labels(str(store)).column("label_id").to_pylist()
    assert verify_store(str(store)) == []  # coordinate arrays are no data arrays to verify
