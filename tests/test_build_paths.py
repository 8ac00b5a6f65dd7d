"""The build's execution paths give one store: Dask workers, this process (small builds), and the
--device path (threads here, mel windows batched on a torch device). Real stores, real parquet."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from hms_prep.building.run import BuildConfig, run_build
from hms_prep.cli import app
from hms_prep.kinds import MelParams
from hms_prep.kinds.mel import mel_windows
from hms_prep.store.labels import read_labels

from conftest import ROOT

ARRAYS = ("eeg_10s", "eeg_30s", "kaggle", "raw")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def same_store(store: str, reference: str) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(zarr.open_array(f"{store}/{name}")[:], zarr.open_array(f"{reference}/{name}")[:])
    assert read_labels(store).equals(read_labels(reference))


@pytest.mark.parametrize("path", [dict(in_process=True), dict(device="cpu", workers=2)], ids=["in_process", "device_cpu"])
def test_paths_in_this_process_equal_the_cluster_build(train_store, synth_data, tmp_path, path):
    store = str(tmp_path / "here.zarr")
    summary = run_build(BuildConfig(data_dir=str(synth_data), store=store, windows=(10, 30), chunk_rows=8, **path))
    assert summary.ok and summary.rows_computed == summary.rows
    same_store(store, train_store)  # train_store: built by a LocalCluster


def test_nothing_to_compute_starts_no_cluster(train_store, synth_data):
    """A repeated build computes nothing and never even imports Dask's distributed: no cluster starts.
    (With --scheduler, the scheduler is still reached first: an unreachable one is refused up front.)"""
    code = ("import sys; from hms_prep.building.run import BuildConfig, run_build; "
            f"s = run_build(BuildConfig(data_dir={str(synth_data)!r}, store={train_store!r}, windows=(10, 30))); "
            "print(s.rows_computed, s.computed, 'distributed' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 [] False"


@pytest.mark.parametrize("device, message", [("tpu", "is not a torch device"), ("mps", "cpu or cuda"),
                                             ("cuda:7" if torch.cuda.is_available() else "cuda", "GPU")])
def test_unavailable_devices_are_refused_before_any_work(synth_data, tmp_path, device, message):
    store = tmp_path / "never.zarr"
    result = CliRunner().invoke(app, ["build", "--data", str(synth_data), "--store", str(store), "--device", device, "-q"])
    assert result.exit_code == 1 and message in result.output
    assert not store.exists()


@GPU
@pytest.mark.parametrize("window_s", [10, 30])
def test_gpu_and_cpu_mel_windows_agree(window_s):
    windows = torch.randn(8, 16, window_s * 200, generator=torch.Generator().manual_seed(1)) * 30
    on_cpu = mel_windows(windows, MelParams(window_s).recipe(), "cpu")
    on_gpu = mel_windows(windows, MelParams(window_s).recipe(), "cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


@GPU
def test_gpu_build_equals_the_cluster_build_to_float16_rounding(train_store, synth_data, tmp_path):
    store = str(tmp_path / "gpu.zarr")
    assert run_build(BuildConfig(data_dir=str(synth_data), store=store, windows=(10, 30), chunk_rows=8,
                                 device="cuda", workers=4)).ok
    for name in ARRAYS:
        np.testing.assert_allclose(zarr.open_array(f"{store}/{name}")[:].astype(np.float32),
                                   zarr.open_array(f"{train_store}/{name}")[:].astype(np.float32), atol=2e-3)
