"""Experiment tracking, optional and serverless: `track = ["mlflow"]` / `["tensorboard"]` (`hms-train
--track NAME`) records a run's resolved config, every epoch's metrics, the out-of-fold scores and the
learning curves where those tools' own viewers show them (`mlflow ui`, `tensorboard --logdir`).

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

    def finish(self, summary: dict, curves: Path) -> None:
        for tracker in self.active:
            tracker.finish(summary, curves)


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

    def finish(self, summary: dict, curves: Path) -> None:
        numbers = {f"oof/{key}": value for key, value in summary.items() if isinstance(value, (int, float))}
        self.mlflow.log_metrics(numbers)
        self.mlflow.log_artifact(str(curves))
        self.mlflow.end_run()


class TensorboardTracker:
    def __init__(self, out: Path, config: dict, resume: bool, kept_epochs: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run rewrites the epochs after its checkpoint: drop their old events.
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=kept_epochs if resume else None)
        if not resume:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def epoch(self, record: EpochRecord) -> None:
        for key, value in record.metrics.items():
            self.writer.add_scalar(f"fold{record.fold}/{key}", value, record.step)

    def finish(self, summary: dict, curves: Path) -> None:
        import matplotlib.image

        for key, value in summary.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"oof/{key}", value, 0)
        image = matplotlib.image.imread(curves)[..., :3]
        self.writer.add_image("curves", image, 0, dataformats="HWC")
        self.writer.close()
