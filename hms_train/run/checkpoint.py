"""Checkpoints: what a run folder holds of a fold, written atomically, read by resume and by predict.

    fold{k}_best.pt   the best epoch's weights, the model spec and the config: enough to predict
                      (`load_fold_model`); written by `save_best`
    fold{k}_last.pt   a `TrainingState`: everything to continue the fold exactly where it stopped, at
                      an epoch's end or inside an epoch (every `checkpoint_every_steps` steps)

`TrainingState` gathers the objects a stage trains with (model, optimizer, schedule, EMA, the
augmentations' generator) and where the fold is (`Position`), with the usual `state_dict` /
`load_state_dict` pair. Format 1 checkpoints (before positions inside an epoch) still load: they were
written at epoch ends only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hms_train.model.models import create_model
from hms_train.run.config import TrainConfig

FORMAT = 2  # bump when the contents change incompatibly; FORMATS are those this version reads
FORMATS = (1, 2)
# The checkpoint holds every weight: where the backbone's pretrained weights came from is not needed again.
TRAINING_ONLY_KWARGS = ("pretrained", "weights")


@dataclass(frozen=True)
class Position:
    """Where a fold's training stands: `epoch` epochs of stage `stage_index` are complete, and `batch`
    batches of the next one (0: at an epoch boundary); `step` optimizer steps in the stage so far."""

    fold: int
    stage: str
    stage_index: int
    epoch: int
    batch: int = 0
    step: int = 0


@dataclass(frozen=True)
class FoldModel:
    """A trained model rebuilt from its checkpoint alone, with the config it was trained under."""

    path: Path
    model: torch.nn.Module
    config: TrainConfig


class TrainingState:
    """The state of a fold's training at a step: the stage's objects and the fold's position, the best
    validation score so far, and the running loss of the epoch in progress (summed on the device)."""

    def __init__(self, model, optimizer, scheduler, ema, generator: torch.Generator):
        self.model, self.optimizer, self.scheduler, self.ema, self.generator = model, optimizer, scheduler, ema, generator
        self.position: Position | None = None
        self.best = float("inf")
        self.loss_sum = 0.0
        self.steps = 0  # steps of the epoch in progress

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "augment": self.generator.get_state()}
        if self.generator.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.generator.device)
        return {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng, "best_score": self.best, "position": asdict(self.position),
                "epoch_loss_sum": float(self.loss_sum), "epoch_steps": self.steps}

    def load_state_dict(self, saved: dict) -> None:
        check_format(saved)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        self.generator.set_state(saved["rng"]["augment"].cpu())
        if "cuda" in saved["rng"] and self.generator.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), self.generator.device)
        self.position = position_of(saved)
        self.best = saved["best_score"]
        self.loss_sum = saved.get("epoch_loss_sum", 0.0)
        self.steps = saved.get("epoch_steps", 0)


def position_of(saved: dict) -> Position:
    """The position a `fold{k}_last.pt` was written at (format 1: at the end of its epoch)."""
    if "position" in saved:
        return Position(**saved["position"])
    return Position(saved["fold"], saved["stage"], saved["stage_index"], saved["epoch"], 0, saved["step"])


def check_format(saved: dict) -> None:
    if saved.get("format") not in FORMATS:
        raise ValueError(f"checkpoint format {saved.get('format')} cannot be read by this version "
                         f"(formats {list(FORMATS)}); retrain the run")


def predictable(model_spec: dict, model: torch.nn.Module, config: TrainConfig) -> dict:
    """What `hms-train predict` needs to rebuild and run a model: spec, weights, config."""
    return {"format": FORMAT, "model_spec": model_spec, "model": model.state_dict(), "config": config.to_dict()}


def load_fold_model(path: Path, device: torch.device) -> FoldModel:
    """The model spec and weights of a checkpoint, as a ready model in eval mode; no store needed."""
    checkpoint = load(path, device)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if "model_spec" not in checkpoint:
        raise ValueError(f"{path}: no model spec (written by an older hms-train); retrain the run")
    config = TrainConfig.from_dict(checkpoint["config"])  # first: it imports the plugins the model may need
    spec = checkpoint["model_spec"]
    kwargs = {k: v for k, v in spec["kwargs"].items() if k not in TRAINING_ONLY_KWARGS}
    model = create_model(spec["name"], **kwargs)
    model.load_state_dict(checkpoint["model"])
    return FoldModel(Path(path), model.to(device).eval(), config)


def fold_checkpoints(run: Path) -> list[Path]:
    """The best checkpoint of every fold of a finished run folder. A training run's folder (its config.json
    names the planned folds) is refused, naming the folds, while any planned fold has not finished (no
    fold{k}_oof.parquet): fold{k}_best.pt exists from a fold's first epoch on, so a run stopped early would
    otherwise predict with half-trained folds and without the others. An export's run folder holds the
    best checkpoints of a finished run only."""
    run = Path(run)
    found = sorted(run.glob("fold*_best.pt"))
    if not found:
        raise FileNotFoundError(f"{run}: not a run directory, or no fold finished (no fold*_best.pt checkpoints)")
    config = run / "config.json"
    if config.is_file():
        planned = json.loads(config.read_text()).get("folds") or []
        unfinished = [fold for fold in planned if not (run / f"fold{fold}_oof.parquet").is_file()]
        if unfinished:
            raise RunNotFinished(
                f"{run}: fold {', '.join(map(str, unfinished))} of the planned {', '.join(map(str, planned))} "
                f"not finished (no fold{{k}}_oof.parquet); finish it first: hms-train --resume {run}")
    return found


class RunNotFinished(FileNotFoundError):
    """A training run with a planned fold not finished; the message names the folds and the resume command."""


def save(path: Path, checkpoint: dict) -> None:
    atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load(path: Path, device: torch.device) -> dict | None:
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None


def atomic(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: a reader (or a resumed run) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
