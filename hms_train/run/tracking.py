"""Experiment tracking, optional and serverless: `track = ["mlflow"]` / `["tensorboard"]` (`hms-train
--track NAME`) records a run's resolved config, every epoch's metrics, the out-of-fold scores (overall
and per fold) and the learning curves where those tools' own viewers show them (`mlflow ui`,
`tensorboard --logdir`). MLflow also keeps the run's files as artifacts: config.json, oof.parquet,
curves.png and, with `track_checkpoints = true`, each fold's best checkpoint (checkpoints/). TensorBoard's
HPARAMS tab gets the config's values against the final scores.

    mlflow        MLFLOW_TRACKING_URI when set, else beside the run folder: RUN/../mlflow.db with artifacts
                  in RUN/../mlruns (runs/ for runs/NAME: nothing in the working directory, nothing in the
                  checkout outside its ignored runs/; `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`
                  shows it); the run id is kept in RUN/tracking.json so `--resume` continues the same MLflow run
    tensorboard   event files in RUN/tensorboard/ (a resumed run drops the events after its checkpoint)

Each is an extra (`pip install 'hms-cache[mlflow]'`); a missing one is one line naming it, before any
training. Nothing here is imported unless a run asks for tracking.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACKERS = ("mlflow", "tensorboard")
EXTRAS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # tracker -> the module its extra installs


class TrackingError(ValueError):
    """A tracker that cannot run here (its extra is not installed)."""


def check_trackers(names) -> None:
    """TrackingError naming the extra of each tracker whose library cannot be imported (before any work)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(EXTRAS[name])
        except ImportError:
            missing.append(name)
    if missing:
        extras = ",".join(missing)
        raise TrackingError(f"track: {missing} need(s) the extra: pip install 'hms-cache[{extras}]'")


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys ({"augment": {"mixup": {"p": 0.3}}} -> {"augment.mixup.p": 0.3})."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class RunResult:
    """What a finished run gives its trackers."""

    summary: dict  # summary.json: the out-of-fold scores of the run's table rows
    fold_kl: dict[int, float]  # each fold's out-of-fold KL (the same rows)
    curves: Path  # curves.png
    files: list[Path]  # kept as they are (MLflow artifacts): config.json, oof.parquet, curves.png
    checkpoints: list[Path]  # each fold's best checkpoint: kept only with track_checkpoints

    def scores(self) -> dict[str, float]:
        """'oof/kl', 'oof/kl_10plus', ..., 'fold0/oof_kl', ...: the final figures by their tracked name."""
        numbers = {f"oof/{key}": value for key, value in self.summary.items() if isinstance(value, (int, float))}
        return {**numbers, **{f"fold{fold}/oof_kl": kl for fold, kl in self.fold_kl.items()}}


def hparam_values(config: dict) -> dict[str, Any]:
    """The config as TensorBoard's hparams take it: dotted keys, numbers, strings and booleans (lists and
    None as JSON text)."""
    return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in flat(config).items()}


@dataclass
class EpochRecord:
    fold: int
    step: int  # the line of metrics.jsonl it is (epochs of the run so far, fold after fold): the x axis
    metrics: dict[str, float]


class Trackers:
    """The trackers of one run (rank 0 only); every call is a no-op without any. `kept_epochs`: the
    metrics lines a resumed run keeps (later ones are logged again)."""

    def __init__(self, names, out: Path, config: dict, resume: bool, kept_epochs: int = 0):
        self.active = [_open(name, out, config, resume, kept_epochs) for name in names]

    def epoch(self, record: EpochRecord) -> None:
        for tracker in self.active:
            tracker.epoch(record)

    def finish(self, result: RunResult) -> None:
        for tracker in self.active:
            tracker.finish(result)


def _open(name: str, out: Path, config: dict, resume: bool, kept_epochs: int):
    return {"mlflow": MlflowTracker, "tensorboard": TensorboardTracker}[name](out, config, resume, kept_epochs)


class MlflowTracker:
    def __init__(self, out: Path, config: dict, resume: bool, kept_epochs: int):
        import mlflow

        self.mlflow = mlflow
        state = out / "tracking.json"
        known = json.loads(state.read_text()).get("mlflow_run_id") if resume and state.is_file() else None
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow's default would write into the working directory
            home = out.resolve().parent
            mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
            if mlflow.get_experiment_by_name("hms-train") is None:
                mlflow.create_experiment("hms-train", artifact_location=(home / "mlruns").as_uri())
        mlflow.set_experiment("hms-train")
        self.run = mlflow.start_run(run_id=known, run_name=None if known else out.name)
        if known is None:
            params = {key: json.dumps(value) if isinstance(value, (list, tuple)) else value
                      for key, value in flat(config).items()}
            mlflow.log_params(params)
            state.write_text(json.dumps({"mlflow_run_id": self.run.info.run_id}))

    def epoch(self, record: EpochRecord) -> None:
        self.mlflow.log_metrics({f"fold{record.fold}/{key}": value for key, value in record.metrics.items()},
                                step=record.step)

    def finish(self, result: RunResult) -> None:
        self.mlflow.log_metrics(result.scores())
        for path in result.files:
            self.mlflow.log_artifact(str(path))
        for path in result.checkpoints:
            self.mlflow.log_artifact(str(path), artifact_path="checkpoints")
        self.mlflow.end_run()


class TensorboardTracker:
    def __init__(self, out: Path, config: dict, resume: bool, kept_epochs: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run rewrites the epochs after its checkpoint: drop their old events.
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=kept_epochs if resume else None)
        self.config = config
        if not resume:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def epoch(self, record: EpochRecord) -> None:
        for key, value in record.metrics.items():
            self.writer.add_scalar(f"fold{record.fold}/{key}", value, record.step)

    def finish(self, result: RunResult) -> None:
        import matplotlib.image
        from torch.utils.tensorboard.summary import hparams

        scores = result.scores()
        for key, value in scores.items():
            self.writer.add_scalar(key, value, 0)
        # the HPARAMS tab: this run's config against its final scores (the scalars of the same names above),
        # in the run's own event files (SummaryWriter.add_hparams would open a sub-run folder of its own)
        for summary in hparams(hparam_values(self.config), scores):
            self.writer.file_writer.add_summary(summary)
        image = matplotlib.image.imread(result.curves)[..., :3]
        self.writer.add_image("curves", image, 0, dataformats="HWC")
        self.writer.close()
