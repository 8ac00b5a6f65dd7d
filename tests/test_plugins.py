"""Arrays added from outside the packages: a plug-in kind (tests/plugins/extra_kind.py, loaded with
--plugin or by its entry point) and a raw-signal variant, built by the CLI beside the defaults with no
edit of hms_prep; read back from the store's own description, without the plug-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from hms_prep.cli import app
from hms_prep.show import show_row
from hms_prep.store.arrays import describe_arrays
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import open_store

from conftest import ROOT

PLUGINS = Path(__file__).parent / "plugins"
PLUGIN_ARRAY = "band_power:window_s=10"
RAW_VARIANT = "raw:band_pass=1-40"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from hms_prep.synth.dataset import synthesize

    out = tmp_path_factory.mktemp("plugins") / "data"
    synthesize(out, n_eegs=4, seed=3, n_test=1)  # 27 rows
    return out


def environment(pythonpath) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, ROOT]))}


def cli(*args, pythonpath=(PLUGINS,)):
    """The hms-prep CLI in a fresh process, with `pythonpath` (the plug-ins' folder) importable."""
    return subprocess.run([sys.executable, "-m", "hms_prep.cli", *map(str, args)], cwd=ROOT,
                          env=environment(pythonpath), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def plugin_cluster(tmp_path_factory):
    """A Dask cluster deployed as on machines of its own (docs/cli.md): `dask scheduler` and `dask worker`
    processes with the plug-in on their PYTHONPATH. The scheduler unpickles the tasks as well, so it needs
    the plug-in too; this test process never imports it."""
    from distributed import Client

    scheduler_file = tmp_path_factory.mktemp("cluster") / "scheduler.json"
    dask = Path(sys.executable).parent / "dask"
    processes = [subprocess.Popen([dask, *command, "--scheduler-file", scheduler_file, "--no-dashboard"],
                                  env=environment((PLUGINS,)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for command in (["scheduler", "--port", "0"], ["worker", "--nworkers", "2", "--nthreads", "1"])]
    try:
        with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            yield client.scheduler.address
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)


def test_a_plugin_kind_and_a_raw_variant_are_built_beside_the_defaults(small_data, plugin_cluster, tmp_path):
    store = tmp_path / "specs.zarr"
    command = ["build", "--data", small_data, "--store", store, "--chunk-rows", "8", "--plugin", "extra_kind",
               "--array", PLUGIN_ARRAY, "--array", RAW_VARIANT, "--scheduler", plugin_cluster, "--quiet"]
    built = cli(*command)
    assert built.returncode == 0, built.stderr
    described = describe_arrays(open_store(str(store))[0])  # from the store alone: the plug-in is not loaded here
    assert "extra_kind" not in sys.modules
    raw_variant = next(name for name in described if name.startswith("raw_"))
    assert f"computed eeg_10s, eeg_30s, kaggle, raw, band_power_10s, {raw_variant};" in built.stdout
    band = described["band_power_10s"]
    assert (band.kind, band.role, band.normalise, band.shape) == ("band_power", "image", "zscore", (27, 4, 5, 20))
    assert band.axes == ("row", "chain", "frequency", "time") and band.params["bands_hz"][0] == [0.5, 4.0]
    variant = described[raw_variant]
    assert (variant.kind, variant.role, variant.normalise) == ("raw", "signals", "none")
    assert variant.params["band_pass"] == [1.0, 40.0] and variant.shape == described["raw"].shape

    group = zarr.open_group(str(store), mode="r")
    values = group["band_power_10s"][:].astype(np.float32)
    assert np.isfinite(values).all() and values.std() > 0
    assert not np.array_equal(group[raw_variant][:], group["raw"][:]), "another band, other values"
    labels = read_labels(str(store))
    assert set(labels.column("status_band_power_10s").to_pylist()) == {"ok"}
    assert set(labels.column(f"status_{raw_variant}").to_pylist()) == {"ok"}

    verified = cli("verify", store, pythonpath=())  # verify needs no plug-in: the arrays describe themselves
    assert verified.returncode == 0 and verified.stdout.strip() == f"{store}: ok", verified.stderr
    info = json.loads(cli("info", store, "--json", pythonpath=()).stdout)
    assert info["arrays"]["band_power_10s"]["normalise"] == "zscore"
    again = cli(*command)
    assert again.returncode == 0 and "nothing to compute" in again.stdout, again.stderr
    assert show_row(str(store), row=0, out=tmp_path / "row0.png", arrays=["eeg_10s", "band_power_10s"]).is_file()


def test_an_installed_plugin_loads_by_its_entry_point(small_data, tmp_path):
    """A package that declares an entry point in hms_cache.plugins needs no --plugin: here a
    distribution's metadata (a .dist-info folder, as pip writes it) beside the module."""
    site = tmp_path / "site"
    dist_info = site / "hms_extra_kind-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: hms-extra-kind\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[hms_cache.plugins]\nband_power = extra_kind\n")
    store = tmp_path / "specs.zarr"
    built = cli("build", "--data", small_data, "--store", store, "--windows", "10", "--no-kaggle", "--no-raw",
                "--array", "band_power:window_s=20,frames=10", "--quiet", pythonpath=(site, PLUGINS))
    assert built.returncode == 0, built.stderr
    assert "computed eeg_10s, band_power_20s_f10;" in built.stdout
    assert describe_arrays(open_store(str(store))[0])["band_power_20s_f10"].shape == (27, 4, 5, 10)


def test_workers_that_cannot_import_the_plugin_refuse_the_build_before_touching(small_data, tmp_path):
    from distributed import LocalCluster

    store = tmp_path / "never.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as bare:  # no tests/plugins
        refused = cli("build", "--data", small_data, "--store", store, "--plugin", "extra_kind", "--array",
                      PLUGIN_ARRAY, "--scheduler", bare.scheduler_address, "--quiet")
    assert refused.returncode == 1
    assert "error: Dask worker tcp://" in refused.stderr and "cannot import extra_kind" in refused.stderr
    assert "Traceback" not in refused.stderr and not store.exists()


@pytest.mark.parametrize("options, message", [
    (["--array", "band_power:window_s=10"], "unknown array kind 'band_power'; known: eeg_mel, kaggle, raw"),
    (["--plugin", "no_such_plugin"], "--plugin no_such_plugin: cannot import it (ModuleNotFoundError"),
    (["--array", "eeg_mel:n_mels=50"], "--array eeg_mel:n_mels=50: eeg_mel needs window_s=... (no default)"),
    (["--array", "eeg_mel:window_s=14,nmels=50"], "eeg_mel has no field 'nmels'; its fields: window_s, n_fft"),
    (["--array", "eeg_mel:window_s=x"], "--array eeg_mel:window_s=x: window_s must be an integer, got 'x'"),
    (["--array", "eeg_mel:window_s=60"], "MelParams.window_s must be 1..50 seconds, got 60"),
    (["--array", "raw:band_pass=0.5"], "band_pass must be two numbers joined by '-' (e.g. 0.5-20) or none, got"),
    (["--array", "raw:midline=maybe"], "raw:midline=maybe: midline must be true or false, got 'maybe'"),
    (["--array", "raw:margin_s=5"], "share one segment layout, so one margin_s (raw margin_s=10, raw_"),
])
def test_bad_array_and_plugin_options_are_one_line_before_anything_is_touched(small_data, tmp_path, options,
                                                                              message):
    store = tmp_path / "never.zarr"
    result = CliRunner().invoke(app, ["build", "--data", str(small_data), "--store", str(store), *options, "-q"])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not store.exists()
