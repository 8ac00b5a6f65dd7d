"""The training loop, to be read top to bottom: run -> folds -> stages -> epochs -> steps.

    train(config, out)                       plan the run (hms_train.run.plan: every check), then per fold:
      train_fold(ctx, plan, reader, fold)      a model; each planned Stage in turn; OOF of the best epoch
        run_stage(...) -> best score           optimizer, schedule, EMA; per epoch: steps, validate, checkpoint

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
import shutil
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
from hms_train.run.forward import eval_flips, make_augmenter, predict_probabilities, resolve_device
from hms_train.run.metric import VOTE_COLUMNS, cv_report, selection_kl
from hms_train.run.plan import RunPlan, plan_run
from hms_train.run.stages import STAGE_INITS_FROM_BEST, Stage, epoch_rows
from hms_train.run.parts import build_model, training_parts
from hms_train.run.progress import EpochProgress, RunClock, steps_after
from hms_train.run.step import TrainStep
from hms_train.run.runlog import RUN_LOG, ThirdPartyLog
from hms_train.run.tracking import EpochRecord, RunResult, Trackers, check_trackers

STALE_RUN_FILES = ("fold*_last.pt", "fold*_best.pt", "fold*_oof.parquet", "oof.parquet", "summary.json", "curves.png",
                   "tracking.json", RUN_LOG)
TRACKED = ("train_loss", "val_kl", "val_kl_10plus", "val_kl_select", "lr")  # what the trackers get per epoch


@dataclass
class Context:
    """What every function of the loop needs to know about the process it runs in."""

    config: TrainConfig
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False
    trackers: Trackers | None = None  # rank 0's experiment trackers
    log: Callable[[str], None] | None = None  # a line into RUN/log.txt (rank 0)
    clock: RunClock = dataclasses.field(default_factory=RunClock)  # the run's pace: its ETA

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    ctx = _context(config, Path(out), quiet)
    if ctx.main:
        kept = _prepare_run_directory(ctx, plan, resume)
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


def run_stage(ctx: Context, plan: RunPlan, state: TrainingState, reader: StoreReader, fold: int, stage: Stage) -> float:
    """Train the state's model through `stage` (from the state's position: inside an epoch or at its end
    when resuming), validating and checkpointing after every epoch; returns the fold's best validation
    score so far."""
    config = plan.config
    model, optimizer, scheduler, ema, generator = state.model, state.optimizer, state.scheduler, state.ema, state.generator
    targets = torch.from_numpy(stage.targets).to(ctx.device)  # indexed on the device by each batch's rows
    step = TrainStep(plan, model, _parallel(ctx, model), optimizer, make_augmenter(plan, generator), ctx.device, targets,
                     steps_done=state.position.step)

    for epoch in range(state.position.epoch, stage.epochs):
        started = time.perf_counter()
        model.train()
        first = state.position.batch  # > 0: resumed inside this epoch
        loss_sum = torch.tensor(state.loss_sum if first else 0.0, device=ctx.device)
        state.steps = state.steps if first else 0
        sampler = dataclasses.replace(state.sampler, epoch=epoch, batch=first)
        rows = epoch_rows(config, reader, fold, stage, epoch)
        batches = reader.batches(rows, config.batch_size, sampler,
                                 shuffle=True, drop_last=True, raw_jitter=int(config.raw_jitter_s * 200),
                                 pin_memory=ctx.device.type == "cuda")
        label = f"fold {fold} {stage.name} epoch {epoch + 1}/{stage.epochs}"
        # closing(): the reader's threads stop here, even when a step raises
        progress = EpochProgress(label, stage.steps_per_epoch, config.log_every, config.batch_size * ctx.world,
                                 ctx.clock, done=first, show=ctx.main and not ctx.quiet, log=ctx.log)
        with closing(batches), progress:
            for batch in _take(batches, stage.steps_per_epoch - first):  # every rank takes the same number of steps
                loss_sum += step(batch)
                state.steps += 1
                position = dataclasses.replace(state.position, epoch=epoch, batch=state.steps,
                                               step=state.position.step + 1)
                state.position = position
                scheduler.step_update(position.step)
                if ema is not None:
                    update_ema(ema, model, position.step, config)
                progress.advance(state.steps, loss_sum, steps_after(plan.folds, config.folds, fold, stage.index, epoch,
                                                                    state.steps))
                every = config.checkpoint_every_steps
                if every and position.step % every == 0 and state.steps < stage.steps_per_epoch:
                    generators = _rank_generators(ctx, generator)  # every rank: a collective
                    state.loss_sum = loss_sum.item()  # a mid-epoch checkpoint: resumes at the next batch
                    if ctx.main:
                        checkpoint.save(ctx.out / f"fold{fold}_last.pt", state.state_dict(generators), ctx.config)
        if state.steps == 0:  # never an epoch of no training reported as done
            # a ValueError: the CLI's one `error:` line (the usual cause is a batch larger than the rows)
            raise ValueError(f"fold {fold} {stage.name} epoch {epoch + 1}: the reader gave no batch (of "
                             f"{stage.steps_per_epoch} expected) from {len(rows)} rows in batches of "
                             f"{config.batch_size} (whole batches only, per rank of {ctx.world})")
        scheduler.step(stage.schedule_offset + epoch + 1)  # per-epoch schedules move here (per-step ones ignore it)
        train_loss = loss_sum.item() / state.steps  # the epoch's one read of the loss from the device
        seconds = time.perf_counter() - started
        state.position = dataclasses.replace(state.position, epoch=epoch + 1, batch=0)
        state.loss_sum, state.steps = 0.0, 0
        generators = _rank_generators(ctx, generator)

        if ctx.main:
            evaluated = ema.module if ema is not None else model
            probs = predict_probabilities(evaluated, reader, stage.val_rows, plan.inputs, ctx.device,
                                          flipped=eval_flips(config, fold, reader.n_rows))
            truth, votes = plan.scope.targets[stage.val_rows], plan.scope.votes[stage.val_rows]
            report = cv_report(truth, probs, votes)
            score = selection_kl(truth, probs, votes, config.select_min_votes)
            record = {
                "fold": fold, "stage": stage.name, "epoch": epoch + 1, "train_loss": train_loss,
                "val_kl": report["kl"], "val_kl_10plus": report["kl_10plus"], "val_kl_select": score,
                "val_rows": len(stage.val_rows), "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds, "samples_per_s": (stage.steps_per_epoch - first) * config.batch_size * ctx.world / seconds,
            }
            line = _append_metrics(ctx.out / "metrics.jsonl", record)
            ctx.trackers.epoch(EpochRecord(fold, line, {key: record[key] for key in TRACKED}))
            if score < state.best or config.fold_model == "last":  # "last": every epoch replaces the one before
                state.best = score
                best_checkpoint = checkpoint.predictable(plan.inputs.model_spec, evaluated, config)
                checkpoint.save(ctx.out / f"fold{fold}_best.pt", {**best_checkpoint, **dataclasses.asdict(state.position),
                                                                  "val_kl": report["kl"],
                                                                  "val_kl_10plus": report["kl_10plus"], "score": score},
                                ctx.config)
            # After the metrics line and the best weights: a kill between them only repeats this epoch.
            checkpoint.save(ctx.out / f"fold{fold}_last.pt", state.state_dict(generators), ctx.config)
            said = (f"fold {fold} {stage.name} epoch {epoch + 1}: loss {train_loss:.4f} val KL {report['kl']:.4f}"
                    f" (>=10 votes {report['kl_10plus']:.4f}) {record['samples_per_s']:.0f} samples/s")
            ctx.log(said)
            if not ctx.quiet:
                print(said, flush=True)
        if ctx.world > 1:
            dist.barrier()
    return state.best


def update_ema(ema, model: torch.nn.Module, step: int, config: TrainConfig) -> None:
    """The EMA after optimizer step `step` (1, 2, ...), as ema_pytorch's `EMA.update()` after each step
    (D/trainer.py): its call number is step - 1; every `ema_update_every`-th call counts, copying the
    weights up to call `ema_update_after_step`, then averaging with the warm-up decay or `ema_decay`.
    ema_pytorch reads its counter after incrementing it (`get_current_decay`: epoch = (call + 1) - after - 1),
    and timm's `get_decay(step)` computes step - after - 1: so timm gets the step, not the call number
    (tests/test_recipes.py holds it to ema_pytorch itself)."""
    call = step - 1
    if call % config.ema_update_every:
        return
    counted = config.ema_warmup or config.ema_update_after_step
    ema.update(model, step=step if counted else None)


# --- run directory ----------------------------------------------------------------------------------------


def _prepare_run_directory(ctx: Context, plan: RunPlan, resume: bool) -> int:
    """A fresh run replaces any earlier run's files; a resumed one keeps the metrics its checkpoints cover.
    Returns how many metrics lines are kept."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    metrics = ctx.out / "metrics.jsonl"
    if not resume:
        for pattern in STALE_RUN_FILES:
            for path in ctx.out.glob(pattern):
                path.unlink()
        shutil.rmtree(ctx.out / "tensorboard", ignore_errors=True)  # an earlier run's events
        ctx.config.save(ctx.out / "config.json")
        metrics.write_text("")
        return 0
    done = {}  # fold -> (stage index, complete epochs) its checkpoints cover
    positions: dict[int, Position | None] = {}  # the unfinished folds: where their last checkpoint stands
    for fold in plan.folds:
        if (ctx.out / f"fold{fold}_oof.parquet").is_file():  # finished: its last checkpoint is not read
            done[fold] = (math.inf, math.inf)
        elif (last := checkpoint.load(ctx.out / f"fold{fold}_last.pt", torch.device("cpu"), ctx.config)) is not None:
            checkpoint.check_format(last)
            checkpoint.check_world(last, ctx.world, ctx.out / f"fold{fold}_last.pt")
            at = positions[fold] = checkpoint.position_of(last)
            done[fold] = (at.stage_index, at.epoch)
        else:
            positions[fold] = None
    if ctx.main:  # after every check: a refused resume says only why
        print(resume_point(ctx.out, [fold for fold in plan.folds if fold not in positions], positions),
              file=sys.stderr, flush=True)
    index = {stage.name: stage.index for stages in plan.folds.values() for stage in stages}
    kept = [r for r in _read_records(metrics)
            if r["fold"] in done and (index[r["stage"]], r["epoch"]) <= done[r["fold"]]]
    checkpoint.atomic(metrics, lambda path: path.write_text("".join(json.dumps(r) + "\n" for r in kept)))
    return len(kept)


def resume_point(run: Path, finished: list[int], positions: dict[int, Position | None]) -> str:
    """'resuming RUN at fold 1, stage1, epoch 3 after batch 2 (finished folds: 0)': where the loop goes on
    (`positions`: each unfinished fold's last checkpoint position, None where it has none)."""
    done = f"finished folds: {', '.join(map(str, finished)) or 'none'}"
    if not positions:
        return f"resuming {run}: every fold finished ({done}); writing the run's summary"
    fold, at = next(iter(positions.items()))
    if at is None:
        return f"resuming {run} at fold {fold} from its start ({done})"
    where = f"epoch {at.epoch + 1}" + (f" after batch {at.batch}" if at.batch else " from its start")
    return f"resuming {run} at fold {fold}, {at.stage}, {where} ({done})"


def _append_metrics(path: Path, record: dict) -> int:
    """Append `record`; returns its line number (0-based)."""
    with open(path, "a+") as f:
        f.seek(0)
        line = sum(1 for _ in f)
        f.write(json.dumps(record) + "\n")
    return line


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


def _rank_generators(ctx: Context, generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's augmentation generator state, by rank (a collective under DDP): a checkpoint holds
    them all, so that each rank of a resumed run draws what it would have drawn."""
    if ctx.world == 1:
        return [generator.get_state()]
    states = [None] * ctx.world
    dist.all_gather_object(states, generator.get_state())
    return states


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
