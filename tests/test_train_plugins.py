"""Each new idea is one file outside the packages (docs/architecture.md, "How to add"): a model kind and
an augmentation registered by a plugin module that a config names, trained and predicted with through
the CLI, with no edit of hms_train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PLUGINS = Path(__file__).parent / "plugins"
pytestmark = pytest.mark.slow


def cli(*args, log: Path):
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}", "HMS_PLUGIN_LOG": str(log),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hms_train.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_plugin_model_and_augmentation_train_and_predict(train_store, synth_data, tmp_path):
    from hms_prep.building.run import BuildConfig, run_build

    run, log = tmp_path / "run", tmp_path / "plugin.log"
    # hemisphere_swap off: the mirror map is made for what mirror_blend declares, not for the swap by name
    sets = ['plugins=["extra_model"]', 'model="tiny_conv"', "model.channels=3", "augment.negate.p=0.5",
            "augment.mirror_blend.p=0.5", "augment.hemisphere_swap.p=0", 'inputs=["eeg_10s"]',
            "epochs=1", "stage2_epochs=0", "folds=[0]", "max_batches_per_epoch=2", "batch_size=8"]
    result = cli("train", "--store", train_store, "--config", "smoke", "--device", "cpu", "--out", run, "--quiet",
                 *[f"--set={s}" for s in sets], log=log)
    assert result.returncode == 0, result.stderr[-3000:]
    used = log.read_text().splitlines()
    assert "tiny_conv forward" in used and any(line.startswith("negate ") for line in used)
    assert "tiny_conv channels=3" in used and "tiny_conv channels=8" not in used  # its own setting, from --set
    assert "mirror_blend rows (400,) of an image (400, 256)" in used  # the layout's map, asked for by `needs`
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": "tiny_conv", "channels": 3, "drop_rate": 0.0}
    assert config["augment"]["negate"] == {"p": 0.5}

    test_store = tmp_path / "test.zarr"
    run_build(BuildConfig(data_dir=str(synth_data), store=str(test_store), split="test", windows=(10,), workers=1))
    result = cli("predict", "--store", test_store, "--run", run, "--device", "cpu", "--out", tmp_path / "sub.csv",
                 log=log)
    assert result.returncode == 0 and (tmp_path / "sub.csv").is_file(), result.stderr[-3000:]


def test_an_unknown_plugin_or_kind_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from hms_train.cli import app

    # in this process (no plug-in is imported by these two): the refusals, without an import of torch each
    result = CliRunner().invoke(app, ["train", "--config", "smoke", "--set", 'plugins=["no_such_module"]', "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.strip() == ("error: plugins: no_such_module: cannot import it (ModuleNotFoundError: No module "
                                     "named 'no_such_module'); give the name of a module on PYTHONPATH or installed, "
                                     "e.g. my_package.band_power")
    result = CliRunner().invoke(app, ["train", "--config", "smoke", "--set", 'model="tiny_conv"', "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 1 and "model.name: 'tiny_conv' is not a registered model kind" in result.output
    result = cli("train", "--config", "smoke", "--set", 'plugins=["extra_model"]', "--set", 'model="tiny_conv"',
                 "--set", "model.width=3", "--out", tmp_path / "r", log=tmp_path / "log")
    assert result.returncode == 1 and not (tmp_path / "r").exists()
    assert result.stderr.strip() == ("error: model.width: model kind 'tiny_conv' has no setting 'width'; it takes "
                                     "['channels', 'drop_rate']")


def test_a_plugin_kind_and_a_raw_variant_train_a_step(synth_data, tmp_path):
    """The hms_prep plug-in kind (tests/plugins/extra_kind.py) and a raw variant built through --array
    are read by role: the plug-in's z-scored image part by a plug-in model, the variant by the 1D model;
    the trainer needs no kind plug-in (the arrays describe themselves)."""
    store, log = tmp_path / "s.zarr", tmp_path / "plugin.log"
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    built = subprocess.run([sys.executable, "-m", "hms_prep.cli", "build", "--data", str(synth_data), "--store",
                            str(store), "--windows", "10", "--no-kaggle", "--no-raw", "--plugin", "extra_kind",
                            "--array", "band_power:window_s=10,frames=20", "--array", "raw:band_pass=1-40",
                            "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    from hms_prep.store.arrays import describe_arrays
    from hms_prep.store.layout import open_store

    variant = next(name for name in describe_arrays(open_store(str(store))[0]) if name.startswith("raw_"))
    common = ["epochs=1", "stage2_epochs=0", "folds=[0]", "max_batches_per_epoch=1", "batch_size=8"]
    for sets in (['plugins=["extra_model"]', 'model="tiny_conv"', 'inputs=["band_power_10s"]'],
                 ['model="1d"', f'inputs=["{variant}"]']):
        run = tmp_path / sets[1].split('"')[1]
        result = cli("train", "--store", store, "--config", "smoke", "--device", "cpu", "--out", run, "--quiet",
                     *[f"--set={s}" for s in [*common, *sets]], log=log)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (run / "fold0_best.pt").is_file()
    assert "tiny_conv forward" in log.read_text()


def test_a_plugin_input_role_trains_a_plugin_model(tiny_data, tmp_path, monkeypatch):
    """A new input, no package file edited: a plug-in kind stores a per-row feature vector whose role,
    `features`, no package names (tests/plugins/feature_kind.py), and a plug-in model that declares that
    input trains on it (tests/plugins/feature_model.py). The store verifies and describes it as it does
    any array: how it is stored (`storage`) apart from what it is to a model (`role`)."""
    from hms_prep.store.audit import verify_store
    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.store.arrays import describe_arrays
    from hms_prep.store.layout import open_store
    from hms_train.run.config import load_config
    from hms_train.run.train import train

    monkeypatch.syspath_prepend(str(PLUGINS))
    log = tmp_path / "plugin.log"
    monkeypatch.setenv("HMS_PLUGIN_LOG", str(log))
    try:
        from feature_kind import SignalStatsParams

        store = str(tmp_path / "s.zarr")
        run_build(BuildConfig(data_dir=str(tiny_data), store=store, windows=(), kaggle=False, raw=None, chunk_rows=8,
                              extra_arrays=(SignalStatsParams(window_s=10),), workers=1, in_process=True))
        described = describe_arrays(open_store(store)[0])
        assert list(described) == ["signal_stats_10s"]
        stats = described["signal_stats_10s"]
        assert (stats.storage, stats.role, stats.axes, stats.shape) == ("row", "features", ("row", "feature"), (21, 32))
        assert verify_store(store) == []

        sets = [f'store="{store}"', 'device="cpu"', 'plugins=["feature_model"]', 'model="features_mlp"',
                "model.hidden=4", 'inputs=["signal_stats_10s"]', "epochs=1", "stage2_epochs=0", "folds=[0]",
                "max_batches_per_epoch=1", "batch_size=4"]
        summary = train(load_config("smoke", sets), tmp_path / "run", quiet=True)
        assert (tmp_path / "run" / "fold0_best.pt").is_file() and summary
        assert "features_mlp forward (4, 32) torch.float32" in log.read_text().splitlines()
        config = json.loads((tmp_path / "run" / "config.json").read_text())
        assert config["model"] == {"name": "features_mlp", "hidden": 4}
        # a model that does not declare the role is refused in one line naming the arrays and the role
        with pytest.raises(ValueError, match=r"inputs: \['signal_stats_10s'\] are features arrays, which model kind "
                                             r"'2d' does not take \(it takes image\)"):
            train(load_config("smoke", [*sets[:2], 'inputs=["signal_stats_10s"]', *sets[6:]]), tmp_path / "r2", quiet=True)
    finally:  # the plug-ins registered in this process leave with the test: other tests list the registries
        from hms_prep.kinds import KINDS
        from hms_train.model.kinds import MODELS

        KINDS.unregister("signal_stats")
        MODELS.unregister("features_mlp")
        sys.modules.pop("feature_kind", None)
        sys.modules.pop("feature_model", None)
