"""A stage's epochs: per epoch the reader's batches through `TrainStep`, the schedule and EMA per step,
mid-epoch checkpoints, then validation, the metrics line and the checkpoints (hms_train/run/train.py runs
the folds and stages around it). Nothing in a step waits for the device: the loss is summed on the device
and read once per epoch, and every `log_every` steps by the progress, and at a checkpoint."""

from __future__ import annotations

import dataclasses
import time
from contextlib import closing

import torch
import torch.distributed as dist

from hms_train.data.reader import StoreReader
from hms_train.run import checkpoint
from hms_train.run.checkpoint import TrainingState
from hms_train.run.config import TrainConfig
from hms_train.run.context import Context
from hms_train.run.forward import eval_flips, make_augmenter, predict_probabilities
from hms_train.run.metric import cv_report, selection_kl
from hms_train.run.plan import RunPlan
from hms_train.run.progress import EpochProgress, steps_after
from hms_train.run.run_dir import append_metrics
from hms_train.run.stages import Stage, epoch_rows
from hms_train.run.step import RowLabels, TrainStep
from hms_train.run.tracking import EpochRecord

TRACKED = ("train_loss", "val_kl", "val_kl_10plus", "val_kl_select", "lr")  # what the trackers get per epoch


def run_stage(ctx: Context, plan: RunPlan, state: TrainingState, reader: StoreReader, fold: int, stage: Stage) -> float:
    """Train the state's model through `stage` (from the state's position: inside an epoch or at its end
    when resuming), validating and checkpointing after every epoch; returns the fold's best validation
    score so far."""
    config = plan.config
    model, optimizer, scheduler, ema, generator = state.model, state.optimizer, state.scheduler, state.ema, state.generator
    labels = RowLabels.of(stage.targets, plan.scope.target_votes, ctx.device)  # indexed on the device by each batch's rows
    step = TrainStep(plan, model, _parallel(ctx, model), optimizer, make_augmenter(plan, generator), ctx.device, labels,
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
            line = append_metrics(ctx.out / "metrics.jsonl", record)
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
