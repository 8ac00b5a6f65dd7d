"""`hms-train bench --inputs` without a recipe: the model kind comes from the model registry, the one that
takes the inputs' roles (issue 25), so a plug-in role is benchmarked with its plug-in model."""

import sys
from pathlib import Path

import pytest

from hms_train.model.kinds import MODELS, kinds_taking
from hms_train.run.bench import bench_config

PLUGINS = Path(__file__).parent / "plugins"


def test_bench_takes_the_model_kind_that_takes_the_inputs_roles(train_store, tiny_data, tmp_path, monkeypatch):
    assert bench_config(train_store, ["eeg_10s", "kaggle"]).model.name == "2d"
    assert bench_config(train_store, ["raw"]).model.name == "1d"
    assert bench_config(train_store, ["eeg_10s", "raw"]).model.name == "multimodal"
    assert kinds_taking(["signals", "image"])[0] == "multimodal"

    from hms_prep.building.run import BuildConfig, run_build

    monkeypatch.syspath_prepend(str(PLUGINS))
    try:
        from feature_kind import SignalStatsParams

        store = str(tmp_path / "s.zarr")
        run_build(BuildConfig(data_dir=str(tiny_data), store=store, windows=(), kaggle=False, raw=None, chunk_rows=8,
                              extra_arrays=(SignalStatsParams(window_s=10),), workers=1, in_process=True))
        with pytest.raises(ValueError, match=r"--inputs \['signal_stats_10s'\]: no model kind takes \['features'\]"):
            bench_config(store, ["signal_stats_10s"])
        import feature_model  # noqa: F401  registers features_mlp, which takes the "features" role

        assert bench_config(store, ["signal_stats_10s"]).model.name == "features_mlp"
    finally:  # the plug-ins registered in this process leave with the test: other tests list the registries
        from hms_prep.kinds import KINDS

        KINDS.unregister("signal_stats")
        MODELS.unregister("features_mlp")
        sys.modules.pop("feature_kind", None)
        sys.modules.pop("feature_model", None)
