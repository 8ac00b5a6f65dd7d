"""The training loop, to be read top to bottom: run -> folds -> stages -> epochs -> steps.

    train(config, out)                       plan the run (hms_train.run.plan: every check), then per fold:
      train_fold(ctx, plan, reader, fold)      a model; each planned Stage in turn; OOF of the best epoch
        run_stage(...) -> best score           epochs.py: per epoch steps, validate, checkpoint

This module runs the folds and stages; `epochs.py` a stage's epochs, `run_dir.py` the run folder across a
fresh start and a resume, `context.py` the process (rank, world, device) every function reads.

The plan holds everything decided before training (inputs and model, loss, augmentations, each fold's
stages with their rows, targets and steps); this module only runs it. A step is `TrainStep`
(hms_train.run.step), the one the benchmark times too. Checkpoints are chosen on the validation rows with
>= `select_min_votes` votes (the "golden" subset).

A run directory gets config.json (resolved), metrics.jsonl (one line per epoch), fold{k}_last.pt (a
`TrainingState`: everything to continue fold k where it stopped, written after every epoch and every
`checkpoint_every_steps` steps inside one), fold{k}_best.pt (the best epoch's weights with the model spec
and config: enough to predict), fold{k}_stage1_best.pt (stage 2's starting weights, with `stage2_init =
"best"`), fold{k}_oof.parquet (a finished fold's out-of-fold predictions) and, at the end, oof.parquet,
summary.json and curves.png. `train(..., resume=True)` continues a killed run from those files, inside the
epoch it was killed in, and ends as the uninterrupted run would.

Nothing in a step waits for the device: the loss is summed on the device and read once per epoch (and
every `log_every` steps by the progress (hms_train.run.progress: a bar on terminals, lines elsewhere and in
RUN/log.txt), and at a checkpoint). Under
`torchrun` the same code runs data-parallel (DDP); rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from hms_prep.store.layout import open_store
from hms_train.data.reader import Selection, StoreReader
from hms_train.data.sampler import SamplerState
from hms_train.run import checkpoint
from hms_train.run.checkpoint import Position, TrainingState
from hms_train.run.config import TrainConfig, check_device, check_folds
from hms_train.run.context import Context, open_context
from hms_train.run.epochs import run_stage
from hms_train.run.forward import eval_flips, predict_probabilities
from hms_train.run.metric import VOTE_COLUMNS, cv_report
from hms_train.run.parts import build_model, training_parts
from hms_train.run.plan import RunPlan, plan_run
from hms_train.run.progress import RunClock
from hms_train.run.run_dir import prepare_run_directory
from hms_train.run.runlog import RUN_LOG, ThirdPartyLog
from hms_train.run.stages import STAGE_INITS_FROM_BEST, Stage
from hms_train.run.tracking import RunResult, Trackers, check_trackers


def train(config: TrainConfig, out: str | Path, quiet: bool = False, resume: bool = False) -> dict:
    """Train every selected fold; returns the CV summary (also in RUN/summary.json).

    With `resume`, continue the run in `out` (killed at any moment): finished folds are kept, the
    fold in progress continues from its last checkpoint, metrics.jsonl loses later lines.
    Every check (config against the store, pseudo-labels, rows per stage) runs before any training.
    Other libraries' log lines and warnings go to RUN/log.txt, not the console (run/runlog.py).
    """
    with ThirdPartyLog(config.track) as others:
        return _train(config, out, quiet, resume, others)


def _train(config: TrainConfig, out: str | Path, quiet: bool, resume: bool, others: ThirdPartyLog) -> dict:
    check_device(config.device)
    reader = open_train_reader(config)
    folds = config.folds if config.folds is not None else list(range(reader.layout.n_folds))
    config = dataclasses.replace(config, folds=folds)  # resolved: config.json names the folds
    plan = plan_run(config, reader, world=int(os.environ.get("WORLD_SIZE", "1")))
    check_trackers(config.track)  # a missing extra: one line, before anything is written
    ctx = open_context(config, Path(out), quiet)
    if ctx.main:
        kept = prepare_run_directory(ctx, plan, resume)
        ctx.trackers = Trackers(config.track, ctx.out, config.to_dict(), resume, kept)
    if ctx.world > 1:
        dist.barrier()  # rank 0 has cleaned or trimmed the directory others read checkpoints from
    others.into(ctx.out / RUN_LOG)  # the folder is ready: a fresh run has cleared an earlier log
    if ctx.main:
        ctx.log = others.note
    ctx.clock = RunClock()
    oof = [train_fold(ctx, plan, reader, fold) for fold in folds]
    summary = {}
    if ctx.main:
        table = pa.concat_tables(oof)
        pq.write_table(table, ctx.out / "oof.parquet")
        summary = _oof_summary(reader, table)
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2))
        from hms_train.run.plots import plot_curves

        plot_curves(ctx.out / "metrics.jsonl", ctx.out / "curves.png")
        files = [ctx.out / name for name in ("config.json", "oof.parquet", "curves.png")]
        best = [ctx.out / f"fold{fold}_best.pt" for fold in folds] if config.track_checkpoints else []
        fold_kl = {fold: _oof_summary(reader, part)["kl"] for fold, part in zip(folds, oof)}
        ctx.trackers.finish(RunResult(summary, fold_kl, ctx.out / "curves.png", files, best))
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def open_train_reader(config: TrainConfig) -> StoreReader:
    """The reader of a train store for the config's inputs (a test store, unknown folds: refused)."""
    _, layout = open_store(config.store)
    if layout.split != "train":
        raise ValueError(f"{config.store} is a {layout.split} store; training needs a train store")
    check_folds(config, layout.n_folds)
    return StoreReader(config.store, config.inputs, threads=config.reader_threads)


def train_fold(ctx: Context, plan: RunPlan, reader: StoreReader, fold: int) -> pa.Table:
    """Train one fold through its stages; its out-of-fold predictions come from the best epoch."""
    finished = ctx.out / f"fold{fold}_oof.parquet"
    if finished.is_file():  # a resumed run: this fold was done before the interruption
        return pq.read_table(finished)
    config, stages = plan.config, plan.folds[fold]
    torch.manual_seed(config.seed * 1000 + fold)  # each fold from its own seed: a fold resumes alone
    model = build_model(plan.inputs, ctx.device)
    # The out-of-fold predictions cover every row of the fold, in the row table or not: pseudo-labels and a
    # teacher's targets are made from them for rows another table (or stage 2's) chooses.
    val_rows = reader.select(Selection(folds=[fold]))
    saved = checkpoint.load(ctx.out / f"fold{fold}_last.pt", ctx.device, ctx.config)  # None unless resuming this fold
    at = checkpoint.position_of(saved) if saved else None
    best = saved["best_score"] if saved else math.inf
    state = None  # the previous stage's, which a stage sharing its schedule continues
    for stage in stages:
        if at and stage.index < at.stage_index:
            continue  # finished before the interruption; its weights are in `saved`
        resume_from = saved if at and stage.index == at.stage_index else None
        if stage.init == STAGE_INITS_FROM_BEST and stage.index > 0 and resume_from is None:
            model.load_state_dict(_stage_start(ctx, fold, stages[stage.index - 1])["model"])
            best = math.inf  # the fold's model is this stage's best epoch
        state = _stage_state(ctx, plan, model, fold, stage, best, resume_from, state if stage.carries else None)
        best = run_stage(ctx, plan, state, reader, fold, stage)
    model.load_state_dict(checkpoint.load(ctx.out / f"fold{fold}_best.pt", ctx.device, ctx.config)["model"])
    probs = predict_probabilities(model, reader, val_rows, plan.inputs, ctx.device, tta_hflip=config.tta_hflip,
                                  flipped=eval_flips(config, fold, reader.n_rows))
    table = _oof_table(reader, val_rows, fold, probs, plan.scope.in_table[val_rows])
    if ctx.main:
        checkpoint.atomic(finished, lambda path: pq.write_table(table, path))
    return table


def _stage_start(ctx: Context, fold: int, previous: Stage) -> dict:
    """The best checkpoint of the stages before, kept as fold{k}_{previous}_best.pt before this stage
    overwrites fold{k}_best.pt, so that a run killed early in this stage resumes from the same weights."""
    kept = ctx.out / f"fold{fold}_{previous.name}_best.pt"
    if ctx.main and not kept.is_file():
        checkpoint.copy(ctx.out / f"fold{fold}_best.pt", kept)
    if ctx.world > 1:
        dist.barrier()  # rank 0 has written it
    return checkpoint.load(kept, ctx.device, ctx.config)


def _stage_state(ctx: Context, plan: RunPlan, model: torch.nn.Module, fold: int, stage: Stage, best: float,
                 saved: dict | None, carried: TrainingState | None) -> TrainingState:
    """The stage's optimizer, schedule, EMA and augmentation generator: new ones, or those of the previous
    stage (`carried`: one schedule over the stages), restored from `saved` when resuming this stage."""
    config = plan.config
    sampler = SamplerState(config.seed, rank=ctx.rank, world=ctx.world, fold=fold, stage=stage.index)
    if carried is not None:
        state = carried
    else:
        parts = training_parts(config, model, stage.lr, stage.schedule_epochs, stage.steps_per_epoch)
        generator = torch.Generator(device=ctx.device).manual_seed(sampler.augment_seed)  # this rank's own
        state = TrainingState(parts.model, parts.optimizer, parts.scheduler, parts.ema, generator, sampler)
    state.sampler = sampler
    state.best = best
    step = state.position.step if carried is not None else 0  # a shared schedule counts on
    state.position = Position(fold, stage.name, stage.index, epoch=0, step=step)
    if saved:
        state.load_state_dict(saved)
    return state


def _oof_table(reader: StoreReader, rows: np.ndarray, fold: int, probs: np.ndarray, in_table: np.ndarray) -> pa.Table:
    columns = {
        "label_id": pa.array(reader.column("label_id")[rows]),
        "eeg_id": pa.array(reader.column("eeg_id")[rows]),
        "row": pa.array(rows),
        "fold": pa.array(np.full(len(rows), fold, dtype=np.int8)),
        "total_votes": pa.array(reader.votes[rows].astype(np.int64)),
        "in_table": pa.array(in_table),  # a row of the run's row table (its own CV is scored on these)
    }
    columns.update({c: pa.array(probs[:, j]) for j, c in enumerate(VOTE_COLUMNS)})
    return pa.table(columns)


def _oof_summary(reader: StoreReader, table: pa.Table) -> dict:
    """The run's CV: its out-of-fold predictions of its row table's rows."""
    table = table.filter(table.column("in_table")) if "in_table" in table.column_names else table
    rows = table.column("row").to_numpy()
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1)
    report = cv_report(reader.targets[rows], probs, reader.votes[rows])
    prior = reader.targets[rows].mean(0, keepdims=True).repeat(len(rows), 0)
    report["prior_kl"] = cv_report(reader.targets[rows], prior, reader.votes[rows])["kl"]
    return report
