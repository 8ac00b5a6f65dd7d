"""Checkpoints: what a run folder holds of a fold, written atomically, read by resume and by predict.

    fold{k}_best.pt   the best epoch's weights, the model spec and the config: enough to predict
                      (`load_fold_model`); written by `save_best`
    fold{k}_last.pt   a `TrainingState`: everything to continue the fold exactly where it stopped, at
                      an epoch's end or inside an epoch (every `checkpoint_every_steps` steps)

Every checkpoint ends with a record of its checksum (SHA-256 of the bytes before it) and of the run's config
(`config_digest`), appended after torch's zip (which torch.load ignores): `load` and `verify` check it, and
damage is one line naming the file, the expected and the found checksum (`CheckpointError`). A checkpoint
written before these records (the file ends with the zip's own end record) still loads, unchecked, like a
store written before chunk checksums.

`TrainingState` gathers the objects a stage trains with (model, optimizer, schedule, EMA, the
augmentations' generator) and where the fold is (`Position`), with the usual `state_dict` /
`load_state_dict` pair. Format 1 checkpoints (before positions inside an epoch) still load: they were
written at epoch ends only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from hms_train.data.sampler import SamplerState
from hms_train.model.kinds import create_model
from hms_train.run.config import TrainConfig

FORMAT = 2  # bump when the contents change incompatibly; FORMATS are those this version reads
FORMATS = (1, 2)
# The checkpoint holds every weight: where the backbone's pretrained weights came from is not needed again.
TRAINING_ONLY_KWARGS = ("pretrained", "weights")
# The record after the zip: its JSON, the JSON's length (8 bytes, little-endian), then this tag.
RECORD_TAG = b"HMSCKPT1"
ZIP_END = b"PK\x05\x06"  # a zip's end-of-central-directory record: the last 22 bytes of a file without a record
# Config keys a resumed run may change (--device): not part of the config digest.
RUNTIME_KEYS = ("device",)


class CheckpointError(ValueError):
    """A checkpoint that is damaged, truncated or from another run's config; one line naming the file."""


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

    def __init__(self, model, optimizer, scheduler, ema, generator: torch.Generator,
                 sampler: SamplerState = SamplerState()):
        self.model, self.optimizer, self.scheduler, self.ema, self.generator = model, optimizer, scheduler, ema, generator
        self.sampler = sampler  # who this process is: seed, fold, stage, rank, world (epoch, batch: `position`)
        self.position: Position | None = None
        self.best = float("inf")
        self.loss_sum = 0.0
        self.steps = 0  # steps of the epoch in progress

    def state_dict(self, generators: list[torch.Tensor] | None = None) -> dict:
        """The state to save; `generators`: every rank's augmentation generator state by rank (this
        process's alone when None)."""
        generators = generators if generators is not None else [self.generator.get_state()]
        rng = {"torch": torch.get_rng_state(), "augment": generators[0], "augment_by_rank": list(generators)}
        if self.generator.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.generator.device)
        sampler = replace(self.sampler, epoch=self.position.epoch, batch=self.position.batch)
        return {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng, "best_score": self.best, "position": asdict(self.position), "sampler": asdict(sampler),
                "epoch_loss_sum": float(self.loss_sum), "epoch_steps": self.steps}

    def load_state_dict(self, saved: dict) -> None:
        check_format(saved)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        by_rank = saved["rng"].get("augment_by_rank") or [saved["rng"]["augment"]]  # before: one, rank 0's
        self.generator.set_state(by_rank[self.sampler.rank if len(by_rank) > 1 else 0].cpu())
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


def check_world(saved: dict, world: int, path: Path) -> None:
    """A fold's state resumes only in the world it was written in: the rows each rank has seen of the
    epoch in progress and each rank's augmentation draws belong to that many processes. A checkpoint
    written before the sampler state was saved comes from a run of one process or of unknown size."""
    recorded = saved.get("sampler", {}).get("world", 1)
    if recorded != world:
        raise ValueError(f"{path}: written by a run of {recorded} process(es), resumed with {world}; resume it "
                         f"with {recorded} (torchrun --nproc-per-node {recorded}, or no torchrun for 1)")


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


class RunNotFinished(FileNotFoundError):
    """A training run with a planned fold not finished; the message names the folds and the resume command."""


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


def config_digest(config: TrainConfig | dict) -> str:
    """What a run was trained under, as 16 hex digits (the keys a resume may change left out)."""
    values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    kept = {k: v for k, v in values.items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]



def save(path: Path, checkpoint: dict, config: TrainConfig) -> None:
    """Write `checkpoint` atomically with its checksum and the digest of the run's `config` after it."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    body = buffer.getvalue()
    record = json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "config_digest": config_digest(config)}).encode()
    atomic(path, lambda tmp: Path(tmp).write_bytes(body + record + len(record).to_bytes(8, "little") + RECORD_TAG))


def verify(path: Path) -> tuple[bytes, dict | None]:
    """The checkpoint's bytes (torch's zip) and its record, checked; None for a checkpoint written before
    records. Raises CheckpointError (a ValueError) naming the file for a damaged or truncated one,
    FileNotFoundError for a missing one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    data = path.read_bytes()
    if data[-len(RECORD_TAG):] != RECORD_TAG:
        if data[-22:-18] == ZIP_END:
            return data, None  # written before checksums: nothing to check against
        raise CheckpointError(f"{path}: truncated or damaged checkpoint (expected a checksum record at its end, "
                              f"found {data[-8:]!r}); copy it again or retrain the fold")
    size = int.from_bytes(data[-16:-8], "little")
    try:
        record = json.loads(data[-16 - size:-16])
        expected = record["sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: damaged checkpoint (its checksum record cannot be read); copy it again "
                              "or retrain the fold") from None
    body = data[:-16 - size]
    found = hashlib.sha256(body).hexdigest()
    if found != expected:
        raise CheckpointError(f"{path}: damaged checkpoint (expected sha256 {expected}, found {found}); copy it "
                              "again or retrain the fold")
    return body, record


def load(path: Path, device: torch.device, config: TrainConfig | None = None) -> dict | None:
    """The checkpoint at `path` after its checksum is checked (None when there is none); with `config`,
    also refused when it was written under another config than the run's."""
    path = Path(path)
    if not path.is_file():
        return None
    body, record = verify(path)
    if config is not None and record is not None and record.get("config_digest") != (digest := config_digest(config)):
        raise CheckpointError(f"{path}: written under another config (expected config digest {digest} of the "
                              f"run's config.json, found {record.get('config_digest')}); resume needs the run's own "
                              "checkpoints")
    try:
        return torch.load(io.BytesIO(body), map_location=device, weights_only=True)
    except Exception as err:  # a checkpoint written before checksums, damaged: torch's reader names no file
        raise CheckpointError(f"{path}: unreadable checkpoint (torch.load: {type(err).__name__}); copy it again or "
                              "retrain the fold") from None


def copy(source: Path, target: Path) -> None:
    """`source` verified, then copied atomically (its record with it)."""
    verify(source)
    atomic(target, lambda tmp: shutil.copyfile(source, tmp))


def atomic(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: a reader (or a resumed run) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
