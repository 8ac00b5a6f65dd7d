"""`hms-train --track mlflow --track tensorboard`: a smoke run recorded where `mlflow ui` and
`tensorboard --logdir` show it, read back here through each library's own API."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
TINY = ['inputs=["eeg_10s"]', "epochs=2", "stage2_epochs=1", "folds=[0]", "max_batches_per_epoch=2", "batch_size=8"]


def test_a_tracked_run_is_recorded_for_mlflow_and_tensorboard(train_store, tmp_path):
    run = tmp_path / "runs" / "smoke"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hms_train.cli", "train", "--store", train_store, "--config", "smoke", "--device", "cpu",
         "--out", str(run), "--quiet", "--track", "mlflow", "--track", "tensorboard", "--set=track_checkpoints=true",
         *[f"--set={s}" for s in TINY]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # a new tracking database: mlflow's INFO lines about it go to the run's log, not the console
    assert "mlflow" not in result.stderr, result.stderr
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in (run / "log.txt").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert len(records) == 3

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    tracked = client.get_run(run_id)
    assert tracked.data.params["lr"] == str(1e-3) and tracked.data.params["augment.hemisphere_swap.p"] == "0.5"
    history = client.get_metric_history(run_id, "fold0/val_kl")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["val_kl"] for r in records])
    assert tracked.data.metrics["oof/kl"] == pytest.approx(summary["kl"])
    assert tracked.data.metrics["fold0/oof_kl"] == pytest.approx(summary["kl"])  # one fold: its OOF KL is the run's
    assert [a.path for a in client.list_artifacts(run_id)] == ["checkpoints", "config.json", "curves.png", "oof.parquet"]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/fold0_best.pt"]
    kept = client.download_artifacts(run_id, "config.json", str(tmp_path))
    assert json.loads(open(kept).read()) == json.loads((run / "config.json").read_text())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.value for e in events.Scalars("fold0/val_kl")] == pytest.approx([r["val_kl"] for r in records])
    assert events.Scalars("oof/kl")[0].value == pytest.approx(summary["kl"])
    assert len(events.Images("curves")) == 1
    assert events.Scalars("fold0/oof_kl")[0].value == pytest.approx(summary["kl"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    started = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert started["lr"].number_value == pytest.approx(1e-3) and started["inputs"].string_value == '["eeg_10s"]'
    metrics = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"oof/kl", "oof/kl_10plus", "fold0/oof_kl"} <= metrics, metrics


def test_a_missing_tracking_extra_is_one_line_before_any_work(train_store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hms_train.cli import app

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["train", "--store", train_store, "--config", "smoke", "--track", "mlflow",
                                      "--out", str(tmp_path / "r"), *[f"--set={s}" for s in TINY]])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "error: track: ['mlflow'] need(s) the extra: pip install 'hms-cache[mlflow]'"
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(app, ["train", "--config", "smoke", "--track", "wandb", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "track: 'wandb' is not allowed; expected one of ['mlflow', 'tensorboard']" in result.output


def test_mlflow_without_a_tracking_uri_writes_beside_the_run_not_in_the_working_directory(tmp_path):
    """MLflow's own default is sqlite:///mlflow.db and ./mlruns in the working directory: the checkout."""
    cwd, run = tmp_path / "checkout", tmp_path / "runs" / "r1"
    cwd.mkdir()
    run.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    script = ("from pathlib import Path\nfrom hms_train.run.tracking import MlflowTracker\n"
              f"MlflowTracker(Path({str(run)!r}), {{'lr': 0.001}}, False, 0).mlflow.end_run()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "runs" / "mlflow.db").is_file() and (run / "tracking.json").is_file()
