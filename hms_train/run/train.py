"""The training loop, to be read top to bottom: run -> folds -> stages -> epochs -> steps.

    train(config, out)                      check everything, then for each fold:
      train_fold(ctx, reader, fold, stages)   a model; each Stage in turn; OOF predictions of the best epoch
        run_stage(...) -> best score          optimizer, schedule, EMA; per epoch: steps, validate, checkpoint

A `Stage` is a record: stage 1 trains on every row of the other folds, stage 2 (optional) on their
high-vote rows, with pseudo-labels for the low-vote rows when configured; each stage has its validation
rows (stage 2 may keep only the fold's high-vote rows, and move its low-vote rows into training, as in
Richard's seed code), and may start from the best checkpoint so far (`stage2_init = "best"`, the fold's
model is then the last stage's best epoch). With `sample_per_eeg` an epoch trains on one random row per
eeg_id of the stage's rows; with `val_per_eeg` validation uses each eeg_id's most-voted row.
Checkpoints are chosen on the validation rows with >= `select_min_votes` votes (the "golden" subset).

A run directory gets config.json (resolved), metrics.jsonl (one line per epoch), fold{k}_last.pt
(everything needed to resume fold k after its last complete epoch; see `_resume_state`),
fold{k}_best.pt (the best epoch's weights with the model spec and config: enough to predict),
fold{k}_stage1_best.pt (stage 2's starting weights, with `stage2_init = "best"`),
fold{k}_oof.parquet (a finished fold's out-of-fold predictions) and, at the end, oof.parquet,
summary.json and curves.png. `train(..., resume=True)` continues a killed run from those files.

Nothing in a step waits for the device: targets come from a device-side table indexed by the batch's
rows, and the loss is summed on the device and read once per epoch (and every `log_every` steps by the
progress bar, shown on terminals only). Under `torchrun` the same code runs data-parallel (DDP); rank 0
validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import timm.optim
import timm.scheduler
import timm.utils
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hms_prep.store.format import data_array_names, open_store
from hms_train.run.config import ConfigError, TrainConfig, check_against_store, check_device
from hms_train.run.forward import (
    IMAGE_INPUT,
    autocast,
    image_layout,
    loss_of,
    make_augmenter,
    model_inputs,
    model_spec,
    predict_probabilities,
    resolve_device,
    run_model,
)
from hms_train.run.metric import VOTE_COLUMNS, cv_report, selection_kl
from hms_train.model.models import create_model, model_kind
from hms_train.data.reader import Selection, StoreReader, to_device
from hms_train.data.sampler import most_voted_row_per_group, one_row_per_group

CHECKPOINT_FORMAT = 1  # bump when the checkpoint contents change incompatibly
STALE_RUN_FILES = ("fold*_last.pt", "fold*_best.pt", "fold*_oof.parquet", "oof.parquet", "summary.json", "curves.png")
STAGE_INITS_FROM_BEST = "best"  # config.stage2_init: the stage starts from the best checkpoint so far


@dataclass
class Context:
    """What every function of the loop needs to know about the process it runs in."""

    config: TrainConfig
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True, eq=False)
class Stage:
    """One phase of a fold's training: its epochs, learning rate, training and validation rows, targets."""

    name: str
    index: int  # position among the fold's stages (orders checkpoints; varies the shuffle)
    epochs: int
    lr: float
    rows: np.ndarray = field(repr=False)  # training rows (an epoch may sample one per eeg_id of them)
    val_rows: np.ndarray = field(repr=False)  # validation rows: checkpoints are chosen on them
    targets: np.ndarray = field(repr=False)  # (n_rows, 6), pseudo-labels applied or not
    init: str = "continue"  # "best": start from the best checkpoint so far, and choose this stage's best


def train(config: TrainConfig, out: str | Path, quiet: bool = False, resume: bool = False) -> dict:
    """Train every selected fold; returns the CV summary (also in RUN/summary.json).

    With `resume`, continue the run in `out` (killed at any moment): finished folds are kept, the
    fold in progress restarts after its last complete epoch, metrics.jsonl loses later lines.
    Every check (config against the store, pseudo-labels, rows per stage) runs before any training.
    """
    check_device(config.device)
    reader = _open_reader(config)
    folds = config.folds if config.folds is not None else list(range(reader.layout.n_folds))
    config = dataclasses.replace(config, folds=folds)  # resolved: config.json names the folds
    # pseudo-labels read and checked here, not after stage 1
    targets = train_targets(reader, config, pseudo_label_rows(config, reader, folds))
    plans = {fold: fold_stages(config, reader, fold, targets) for fold in folds}
    _check_rows(config, reader, plans)
    model_spec(config, reader)  # the layout and the model's arguments, checked before anything is written
    ctx = _context(config, Path(out), quiet)
    if ctx.main:
        _prepare_run_directory(ctx, plans, resume)
    if ctx.world > 1:
        dist.barrier()  # rank 0 has cleaned or trimmed the directory others read checkpoints from
    oof = [train_fold(ctx, reader, fold, plans[fold]) for fold in folds]
    summary = {}
    if ctx.main:
        table = pa.concat_tables(oof)
        pq.write_table(table, ctx.out / "oof.parquet")
        summary = _oof_summary(reader, table)
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2))
        from hms_train.run.plots import plot_curves

        plot_curves(ctx.out / "metrics.jsonl", ctx.out / "curves.png")
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def fold_stages(config: TrainConfig, reader: StoreReader, fold: int, targets: np.ndarray) -> list[Stage]:
    """Stage 1 on all rows of the other folds, validated on the fold's rows; stage 2 on their rows with
    >= stage2_min_votes votes, or on all of them with pseudo-labels (`targets`) for the low-vote ones,
    validated on the fold's rows with >= stage2_val_min_votes (all when None) that stayed in validation."""
    fold_rows = reader.select(Selection(folds=[fold]))
    training = reader.select(Selection(exclude_folds=[fold]))
    stages = [Stage("stage1", 0, config.epochs, config.lr, training, validation_rows(config, reader, fold_rows),
                    reader.targets)]
    if config.stage2_epochs > 0:
        val = np.setdiff1d(fold_rows, moved_validation_rows(config, reader, fold_rows))
        if config.stage2_val_min_votes is not None:
            val = val[reader.votes[val] >= config.stage2_val_min_votes]
        stages.append(Stage("stage2", 1, config.stage2_epochs, config.stage2_lr or config.lr / 2,
                            stage2_training_rows(config, reader, fold), validation_rows(config, reader, val),
                            targets, init=config.stage2_init))
    return stages


def stage2_training_rows(config: TrainConfig, reader: StoreReader, fold: int) -> np.ndarray:
    """The other folds' rows and the fold's moved low-vote rows; without pseudo-labels only those with
    >= stage2_min_votes votes."""
    rows = np.union1d(reader.select(Selection(exclude_folds=[fold])),
                      moved_validation_rows(config, reader, reader.select(Selection(folds=[fold]))))
    if config.pseudo_labels is None:
        rows = rows[reader.votes[rows] >= config.stage2_min_votes]
    return rows


def moved_validation_rows(config: TrainConfig, reader: StoreReader, fold_rows: np.ndarray) -> np.ndarray:
    """The validation fold's rows that join stage-2 training: fewer than stage2_val_to_train_below votes."""
    if config.stage2_val_to_train_below is None:
        return np.empty(0, dtype=np.int64)
    return fold_rows[reader.votes[fold_rows] < config.stage2_val_to_train_below]


def pseudo_label_rows(config: TrainConfig, reader: StoreReader, folds: list[int]) -> np.ndarray:
    """Every row some fold's stage 2 trains on with a pseudo-label: fewer than stage2_min_votes votes."""
    if config.pseudo_labels is None or config.stage2_epochs == 0:
        return np.empty(0, dtype=np.int64)
    rows = np.unique(np.concatenate([stage2_training_rows(config, reader, fold) for fold in folds]))
    return rows[reader.votes[rows] < config.stage2_min_votes]


def validation_rows(config: TrainConfig, reader: StoreReader, rows: np.ndarray) -> np.ndarray:
    """`rows`, or with `val_per_eeg` each eeg_id's most-voted row among them (fixed, ties: the first)."""
    if not config.val_per_eeg:
        return rows
    return most_voted_row_per_group(rows, reader.column("eeg_id"), reader.votes)


def epoch_rows(config: TrainConfig, reader: StoreReader, fold: int, stage: Stage, epoch: int) -> np.ndarray:
    """The rows one epoch trains on: the stage's, or with `sample_per_eeg` one random row per eeg_id of
    them, drawn from (seed, fold, stage, epoch) alone, so that a resumed epoch draws the same rows."""
    if not config.sample_per_eeg:
        return stage.rows
    rng = np.random.default_rng([config.seed, fold, stage.index, epoch])
    return one_row_per_group(stage.rows, reader.column("eeg_id"), rng)


def train_fold(ctx: Context, reader: StoreReader, fold: int, stages: list[Stage]) -> pa.Table:
    """Train one fold through its stages; its out-of-fold predictions come from the best epoch."""
    finished = ctx.out / f"fold{fold}_oof.parquet"
    if finished.is_file():  # a resumed run: this fold was done before the interruption
        return pq.read_table(finished)
    config = ctx.config
    torch.manual_seed(config.seed * 1000 + fold)  # each fold from its own seed: a fold resumes alone
    model = build_model(config, reader).to(ctx.device)
    takes_image = IMAGE_INPUT in model_kind(config.model).inputs
    if config.channels_last and takes_image:
        model = model.to(memory_format=torch.channels_last)
    val_rows = reader.select(Selection(folds=[fold]))  # the out-of-fold predictions cover the whole fold
    saved = _load(ctx.out / f"fold{fold}_last.pt", ctx.device)  # None unless resuming this fold
    best = saved["best_score"] if saved else math.inf
    for stage in stages:
        if saved and stage.index < saved["stage_index"]:
            continue  # finished before the interruption; its weights are in `saved`
        resume_from = saved if saved and stage.index == saved["stage_index"] else None
        if stage.init == STAGE_INITS_FROM_BEST and stage.index > 0 and resume_from is None:
            model.load_state_dict(_stage_start(ctx, fold, stages[stage.index - 1])["model"])
            best = math.inf  # the fold's model is this stage's best epoch
        best = run_stage(ctx, model, reader, fold, stage, best, resume_from)
    model.load_state_dict(_load(ctx.out / f"fold{fold}_best.pt", ctx.device)["model"])
    probs = predict_probabilities(model, reader, val_rows, config, ctx.device, tta_hflip=config.tta_hflip)
    table = _oof_table(reader, val_rows, fold, probs)
    if ctx.main:
        _atomic(finished, lambda path: pq.write_table(table, path))
    return table


def _stage_start(ctx: Context, fold: int, previous: Stage) -> dict:
    """The best checkpoint of the stages before, kept as fold{k}_{previous}_best.pt before this stage
    overwrites fold{k}_best.pt, so that a run killed early in this stage resumes from the same weights."""
    kept = ctx.out / f"fold{fold}_{previous.name}_best.pt"
    if ctx.main and not kept.is_file():
        _atomic(kept, lambda tmp: shutil.copyfile(ctx.out / f"fold{fold}_best.pt", tmp))
    if ctx.world > 1:
        dist.barrier()  # rank 0 has written it
    return _load(kept, ctx.device)


def build_model(config: TrainConfig, reader: StoreReader) -> torch.nn.Module:
    spec = model_spec(config, reader)
    return create_model(spec["name"], **spec["kwargs"])


def make_scheduler(config: TrainConfig, optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """The stage's learning-rate schedule (a timm scheduler), counted in steps or epochs: warm-up from
    lr * lr_min_factor, then a cosine down to lr * lr_min_factor, or constant."""
    per_epoch = config.schedule_unit == "epoch"
    unit = 1 if per_epoch else steps_per_epoch
    warmup = int(config.warmup_epochs * unit)
    lr_min = lr * config.lr_min_factor
    length = max(1, epochs * unit)
    if config.schedule == "constant":
        return timm.scheduler.StepLRScheduler(optimizer, decay_t=length, decay_rate=1.0, warmup_t=warmup,
                                              warmup_lr_init=lr_min, t_in_epochs=per_epoch)
    return timm.scheduler.CosineLRScheduler(optimizer, t_initial=length, lr_min=lr_min, warmup_t=warmup,
                                            warmup_lr_init=lr_min, t_in_epochs=per_epoch)


def run_stage(
    ctx: Context, model: torch.nn.Module, reader: StoreReader, fold: int, stage: Stage, best: float,
    saved: dict | None = None,
) -> float:
    """Train `model` through `stage` (from `saved`'s epoch when resuming), validating and checkpointing
    after every epoch; returns the fold's best validation score so far."""
    config = ctx.config
    val_rows = stage.val_rows
    steps_per_epoch = _steps_per_epoch(ctx, reader, epoch_rows(config, reader, fold, stage, 0))
    optimizer = timm.optim.create_optimizer_v2(model, opt=config.optimizer, lr=stage.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, optimizer, stage.lr, stage.epochs, steps_per_epoch)
    ema = (timm.utils.ModelEmaV3(model, decay=config.ema_decay, use_warmup=config.ema_warmup)
           if config.ema_decay > 0 else None)
    loss_fn = loss_of(config)
    generator = torch.Generator(device=ctx.device).manual_seed(config.seed * 1000 + fold)
    augmenter = make_augmenter(config, reader, generator)
    layout = image_layout(config, reader) if IMAGE_INPUT in model_kind(config.model).inputs else None  # once, not per step
    first_epoch, step = _restore(saved, model, optimizer, scheduler, ema, generator) if saved else (0, 0)
    net = _parallel(ctx, model)
    targets = torch.from_numpy(stage.targets).to(ctx.device)  # indexed on the device by each batch's rows

    for epoch in range(first_epoch, stage.epochs):
        started = time.perf_counter()
        net.train()
        loss_sum, steps = torch.zeros((), device=ctx.device), 0
        batches = reader.batches(
            epoch_rows(config, reader, fold, stage, epoch), config.batch_size, shuffle=True,
            seed=config.seed + 7919 * fold, epoch=epoch + 100 * stage.index,
            drop_last=True, raw_jitter=int(config.raw_jitter_s * 200), pin_memory=ctx.device.type == "cuda",
            shard=(ctx.rank, ctx.world),
        )
        label = f"fold {fold} {stage.name} epoch {epoch + 1}/{stage.epochs}"
        # closing(): the reader's threads stop here, even when a step raises
        with closing(batches), _progress(ctx, label, steps_per_epoch, config.log_every) as progress:
            for batch in _take(batches, steps_per_epoch):  # every rank takes the same number of steps
                batch = to_device(batch, ctx.device)
                inputs = model_inputs(batch, config, train=True, layout=layout)
                batch_targets = targets[batch["row"]]
                if IMAGE_INPUT in inputs:
                    inputs[IMAGE_INPUT], batch_targets = augmenter(inputs[IMAGE_INPUT], batch_targets, train=True)
                with autocast(config, ctx.device):
                    logits = run_model(net, inputs)
                loss = loss_fn(logits.float(), batch_targets, batch["votes"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                scheduler.step_update(step)
                if ema is not None:  # the step drives the EMA's warm-up (and only then: timm's decay at step 0 is 0)
                    ema.update(model, step=step if config.ema_warmup else None)
                loss_sum += loss.detach()
                steps += 1
                progress.advance(steps, loss_sum)
        if steps == 0:  # never an epoch of no training reported as done
            raise RuntimeError(f"fold {fold} {stage.name} epoch {epoch + 1}: the reader gave no batch "
                               f"(of {steps_per_epoch} expected)")
        scheduler.step(epoch + 1)  # per-epoch schedules move here (per-step ones ignore it)
        train_loss = loss_sum.item() / steps  # the epoch's one read of the loss from the device
        seconds = time.perf_counter() - started

        if ctx.main:
            evaluated = ema.module if ema is not None else model
            probs = predict_probabilities(evaluated, reader, val_rows, config, ctx.device)
            report = cv_report(reader.targets[val_rows], probs, reader.votes[val_rows])
            score = selection_kl(reader.targets[val_rows], probs, reader.votes[val_rows], config.select_min_votes)
            record = {
                "fold": fold, "stage": stage.name, "epoch": epoch + 1, "train_loss": train_loss,
                "val_kl": report["kl"], "val_kl_10plus": report["kl_10plus"], "val_kl_select": score,
                "val_rows": len(val_rows), "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds, "samples_per_s": steps * config.batch_size * ctx.world / seconds,
            }
            _append_metrics(ctx.out / "metrics.jsonl", record)
            position = {"fold": fold, "stage": stage.name, "stage_index": stage.index, "epoch": epoch + 1,
                        "val_kl": report["kl"], "val_kl_10plus": report["kl_10plus"]}
            if score < best:
                best = score
                _save(ctx.out / f"fold{fold}_best.pt", {**_predictable(ctx, reader, evaluated), **position, "score": score})
            # After the metrics line and the best weights: a kill between them only repeats this epoch.
            _save(ctx.out / f"fold{fold}_last.pt",
                  {**_resume_state(ctx, reader, model, optimizer, scheduler, ema, generator, step, best), **position})
            if not ctx.quiet:
                print(f"fold {fold} {stage.name} epoch {epoch + 1}: loss {train_loss:.4f} val KL {report['kl']:.4f}"
                      f" (>=10 votes {report['kl_10plus']:.4f}) {record['samples_per_s']:.0f} samples/s", flush=True)
        if ctx.world > 1:
            dist.barrier()
    return best


def train_targets(reader: StoreReader, config: TrainConfig, needed: np.ndarray | None = None) -> np.ndarray:
    """The targets of the last stage: the store's, with pseudo-labels applied when configured (and
    checked to cover the `needed` rows)."""
    if config.pseudo_labels is None:
        return reader.targets
    return apply_pseudo_labels(reader, reader.targets, config, needed)


def apply_pseudo_labels(
    reader: StoreReader, targets: np.ndarray, config: TrainConfig, needed: np.ndarray | None = None
) -> np.ndarray:
    """Replace (or blend) the targets of low-vote rows with an ensemble's out-of-fold predictions.
    Raises ValueError when the file misses any of the `needed` rows (naming how many, and the first)."""
    path = Path(config.pseudo_labels)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo_labels: {path} not found (write it with `hms-train pseudo-label`)")
    table = pq.read_table(path)
    missing = [c for c in ("label_id", *VOTE_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; pseudo-labels have label_id and {list(VOTE_COLUMNS)}")
    label_rows = {int(l): i for i, l in enumerate(reader.column("label_id"))}
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float32)
    unknown = [int(l) for l in table.column("label_id").to_numpy() if int(l) not in label_rows]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} label_ids are not in {config.store} "
                         f"(first: {unknown[0]}); pseudo-labels must come from runs on this store")
    rows = np.array([label_rows[int(l)] for l in table.column("label_id").to_numpy()], dtype=np.int64)
    low = reader.votes[rows] < config.stage2_min_votes
    rows, probs = rows[low], probs[low]
    missing = np.setdiff1d(needed if needed is not None else [], rows)
    if len(missing):
        first = [int(label) for label in reader.column("label_id")[missing[:5]]]
        raise ValueError(f"{path}: no pseudo-label for {len(missing)} of the {len(needed)} rows with fewer than "
                         f"stage2_min_votes = {config.stage2_min_votes} votes that stage 2 trains on (first "
                         f"label_ids: {first}); write pseudo-labels from runs over every fold of {config.store}")
    out = targets.copy()
    weight = config.pseudo_blend if config.pseudo_mode == "blend" else 1.0  # "replace": the pseudo label alone
    out[rows] = weight * probs + (1 - weight) * out[rows]
    return out


# --- checks before any work ---------------------------------------------------------------------------


def _open_reader(config: TrainConfig) -> StoreReader:
    group, layout = open_store(config.store)
    if layout.split != "train":
        raise ValueError(f"{config.store} is a {layout.split} store; training needs a train store")
    check_against_store(config, data_array_names(group), layout.n_folds)
    return StoreReader(config.store, config.inputs, threads=config.reader_threads)


def _check_rows(config: TrainConfig, reader: StoreReader, plans: dict[int, list[Stage]]) -> None:
    """Every fold has rows to validate on and every stage at least one batch to train on."""
    for fold, stages in plans.items():
        if len(reader.select(Selection(folds=[fold]))) == 0:
            raise ConfigError(f"folds: fold {fold} has no rows to validate on in {config.store}")
        for stage in stages:
            if len(stage.val_rows) == 0:
                raise ConfigError(f"fold {fold} {stage.name}: no rows to validate on (stage2_val_min_votes "
                                  f"{config.stage2_val_min_votes})")
            rows = len(epoch_rows(config, reader, fold, stage, 0))
            if rows < config.batch_size:
                raise ConfigError(f"fold {fold} {stage.name}: {rows} training rows, fewer than one batch "
                                  f"(batch_size {config.batch_size})")


# --- run directory and checkpoints ----------------------------------------------------------------------


def _prepare_run_directory(ctx: Context, plans: dict[int, list[Stage]], resume: bool) -> None:
    """A fresh run replaces any earlier run's files; a resumed one keeps the metrics its checkpoints cover."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    metrics = ctx.out / "metrics.jsonl"
    if not resume:
        for pattern in STALE_RUN_FILES:
            for path in ctx.out.glob(pattern):
                path.unlink()
        ctx.config.save(ctx.out / "config.json")
        metrics.write_text("")
        return
    done = {}  # fold -> (stage index, epoch) its checkpoints cover
    for fold, stages in plans.items():
        last = _load(ctx.out / f"fold{fold}_last.pt", torch.device("cpu"))
        if (ctx.out / f"fold{fold}_oof.parquet").is_file():
            done[fold] = (math.inf, math.inf)
        elif last is not None:
            done[fold] = (last["stage_index"], last["epoch"])
    index = {stage.name: stage.index for stages in plans.values() for stage in stages}
    kept = [r for r in _read_records(metrics)
            if r["fold"] in done and (index[r["stage"]], r["epoch"]) <= done[r["fold"]]]
    _atomic(metrics, lambda path: path.write_text("".join(json.dumps(r) + "\n" for r in kept)))


def _predictable(ctx: Context, reader: StoreReader, evaluated: torch.nn.Module) -> dict:
    """What `hms-train predict` needs to rebuild and run a model: spec, weights, config."""
    return {"format": CHECKPOINT_FORMAT, "model_spec": model_spec(ctx.config, reader),
            "model": evaluated.state_dict(), "config": ctx.config.to_dict()}


def _resume_state(ctx, reader, model, optimizer, scheduler, ema, generator, step: int, best: float) -> dict:
    """Everything to continue after this epoch as if never stopped: weights being trained (and the EMA's),
    optimizer and schedule, the stage's step, every random state, the best score so far, config and spec."""
    rng = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return {**_predictable(ctx, reader, model), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "rng": rng, "best_score": best}


def _restore(saved: dict, model, optimizer, scheduler, ema, generator) -> tuple[int, int]:
    """Load a `_resume_state` into the stage's objects; returns (next epoch, step)."""
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {saved.get('format')} cannot be resumed by this version "
                         f"(format {CHECKPOINT_FORMAT})")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    generator.set_state(saved["rng"]["augment"].cpu())
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), generator.device)
    return saved["epoch"], saved["step"]


def _save(path: Path, checkpoint: dict) -> None:
    _atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def _load(path: Path, device: torch.device) -> dict | None:
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None


def _atomic(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: a reader (or a resumed run) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a last line torn by a kill is dropped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


# --- small helpers of the loop ----------------------------------------------------------------------------


def _take(batches, n: int):
    """The first `n` batches (zip stops before asking the reader for one more)."""
    for _, batch in zip(range(n), batches):
        yield batch


def _parallel(ctx: Context, model: torch.nn.Module) -> torch.nn.Module:
    """The module the steps call: DDP-wrapped across ranks, compiled when asked."""
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.config.compile:
        net = torch.compile(net)
    return net


def _steps_per_epoch(ctx: Context, reader: StoreReader, rows: np.ndarray) -> int:
    """Whole batches per rank, equal on every rank (the smallest shard decides)."""
    steps = reader.min_shard_rows(rows, ctx.world) // ctx.config.batch_size
    if ctx.config.max_batches_per_epoch:
        steps = min(steps, ctx.config.max_batches_per_epoch)
    return max(steps, 1)


def _oof_table(reader: StoreReader, rows: np.ndarray, fold: int, probs: np.ndarray) -> pa.Table:
    columns = {
        "label_id": pa.array(reader.column("label_id")[rows]),
        "eeg_id": pa.array(reader.column("eeg_id")[rows]),
        "row": pa.array(rows),
        "fold": pa.array(np.full(len(rows), fold, dtype=np.int8)),
        "total_votes": pa.array(reader.votes[rows].astype(np.int64)),
    }
    columns.update({c: pa.array(probs[:, j]) for j, c in enumerate(VOTE_COLUMNS)})
    return pa.table(columns)


def _oof_summary(reader: StoreReader, table: pa.Table) -> dict:
    rows = table.column("row").to_numpy()
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1)
    report = cv_report(reader.targets[rows], probs, reader.votes[rows])
    prior = reader.targets[rows].mean(0, keepdims=True).repeat(len(rows), 0)
    report["prior_kl"] = cv_report(reader.targets[rows], prior, reader.votes[rows])["kl"]
    return report


def _context(config: TrainConfig, out: Path, quiet: bool) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(config, out, resolve_device(config.device), quiet=quiet)
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(config, out, device, rank=dist.get_rank(), world=world, quiet=quiet)


class _progress:
    """Per-epoch progress bar (rank 0, not quiet, terminals only) with loss and ETA.

    `advance(steps, loss_sum)` moves the bar every step but reads the loss from the device only every
    `log_every` steps: each read waits for the device to finish the queued work.
    """

    def __init__(self, ctx: Context, label: str, total: int, log_every: int):
        self.console = Console(stderr=True)
        # A transient bar is for terminals; in logs the per-epoch line says it all.
        self.show = ctx.main and not ctx.quiet and self.console.is_terminal
        self.label, self.total, self.log_every = label, total, log_every

    def __enter__(self):
        if self.show:
            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True,
                                console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, loss="-")
        return self

    def advance(self, steps: int, loss_sum: torch.Tensor) -> None:
        if not self.show:
            return
        if steps % self.log_every == 0:
            self.bar.update(self.task, advance=1, loss=f"{loss_sum.item() / steps:.4f}")
        else:
            self.bar.update(self.task, advance=1)

    def __exit__(self, *exc):
        if self.show:
            self.bar.__exit__(*exc)
        return False
