"""Stores behind fsspec URLs: a build and a training epoch on memory://, a build on file://."""

import numpy as np
import pytest
import zarr

from hms_prep.store.audit import verify_store
from hms_prep.building.run import BuildConfig, run_build
from hms_train.run.config import load_config
from hms_train.run.train import train


@pytest.mark.slow
def test_build_and_train_on_a_memory_url(synth_data, tmp_path):
    url = "memory://team-cache/specs.zarr"
    summary = run_build(BuildConfig(data_dir=str(synth_data), store=url, windows=(10,), workers=2))
    assert summary.ok and summary.rows_computed == summary.rows
    assert verify_store(url) == []
    again = run_build(BuildConfig(data_dir=str(synth_data), store=url, windows=(10,), workers=2))
    assert again.computed == [] and again.rows_computed == 0
    config = load_config("smoke", [f'store="{url}"', 'device="cpu"', "epochs=1", "stage2_epochs=0",
                                   "folds=[0]", "max_batches_per_epoch=2", "batch_size=8"])
    result = train(config, tmp_path / "run", quiet=True)
    assert np.isfinite(result["kl"]) and (tmp_path / "run" / "fold0_best.pt").is_file()


def test_build_on_a_file_url(synth_data, tmp_path):
    path = tmp_path / "nested" / "specs.zarr"
    summary = run_build(BuildConfig(data_dir=str(synth_data), store=f"file://{path}", windows=(10,),
                                    kaggle=False, raw=None, workers=1))
    assert summary.ok
    assert zarr.open_array(str(path / "eeg_10s")).shape[0] == summary.rows
