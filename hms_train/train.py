"""The training loop: folds x (stage 1 on all rows, stage 2 on high-vote rows), one readable file.

A run directory gets: config.json (resolved), fold{k}_best.pt / fold{k}_last.pt, metrics.jsonl (one
line per epoch), oof.parquet (out-of-fold probabilities) and curves.png. Under `torchrun` the same
code runs data-parallel (DDP); rank 0 validates and writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
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

from hms_train.config import TrainConfig
from hms_train.forward import (
    autocast,
    image_layout,
    make_augmenter,
    model_inputs,
    model_spec,
    predict_probabilities,
    resolve_device,
    run_model,
)
from hms_train.losses import kl_loss
from hms_train.metric import VOTE_COLUMNS, cv_report
from hms_train.models import create_model
from hms_train.reader import Selection, StoreReader, to_device


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


def train(config: TrainConfig, out: str | Path, quiet: bool = False) -> dict:
    """Train every selected fold; returns the CV summary (also in RUN/summary.json)."""
    ctx = _context(config, Path(out), quiet)
    torch.manual_seed(config.seed)
    reader = StoreReader(config.store, config.inputs, threads=config.reader_threads)
    if reader.layout.split != "train":
        raise ValueError(f"{config.store} is a {reader.layout.split} store; training needs a train store")
    if ctx.main:
        ctx.out.mkdir(parents=True, exist_ok=True)
        config.save(ctx.out / "config.json")
        (ctx.out / "metrics.jsonl").write_text("")
    folds = config.folds if config.folds is not None else list(range(reader.layout.n_folds))
    oof = []
    for fold in folds:
        oof.append(train_fold(ctx, reader, fold))
    summary = {}
    if ctx.main:
        table = pa.concat_tables(oof)
        pq.write_table(table, ctx.out / "oof.parquet")
        summary = _oof_summary(reader, table)
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2))
        from hms_train.plots import plot_curves

        plot_curves(ctx.out / "metrics.jsonl", ctx.out / "curves.png")
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def train_fold(ctx: Context, reader: StoreReader, fold: int) -> pa.Table:
    config = ctx.config
    model = build_model(config, reader).to(ctx.device)
    if config.channels_last and config.model != "1d":
        model = model.to(memory_format=torch.channels_last)
    val_rows = reader.select(Selection(folds=[fold]))
    targets = reader.targets.copy()
    best = {"score": math.inf, "epoch": -1}
    stages = [("stage1", config.epochs, config.lr, Selection(exclude_folds=[fold]))]
    if config.stage2_epochs > 0:
        stage2_rows = None if config.pseudo_labels else config.stage2_min_votes
        stages.append(("stage2", config.stage2_epochs, config.stage2_lr or config.lr / 2,
                       Selection(exclude_folds=[fold], min_votes=stage2_rows)))
    for stage, epochs, lr, selection in stages:
        if stage == "stage2" and config.pseudo_labels:
            targets = apply_pseudo_labels(reader, targets, config)
        train_rows = reader.select(selection)
        if len(train_rows) < config.batch_size:
            raise ValueError(f"fold {fold} {stage}: {len(train_rows)} training rows, fewer than one batch")
        fit_stage(ctx, model, reader, fold, stage, epochs, lr, train_rows, val_rows, targets, best)
    best_model = build_model(config, reader).to(ctx.device)
    best_model.load_state_dict(torch.load(ctx.out / f"fold{fold}_best.pt", map_location=ctx.device)["model"])
    probs = predict_probabilities(best_model, reader, val_rows, config, ctx.device, tta_hflip=config.tta_hflip)
    return _oof_table(reader, val_rows, fold, probs)


def build_model(config: TrainConfig, reader: StoreReader) -> torch.nn.Module:
    spec = model_spec(config, reader)
    return create_model(spec["name"], **spec["kwargs"])


def kaggle_columns(config: TrainConfig, reader: StoreReader) -> tuple[int, int] | None:
    """Columns of the (first) Kaggle part in the image, from the layout; None when there is none."""
    parts = image_layout(config, reader).parts
    return next(((part.col, part.col + part.width) for part in parts if part.kind == "kaggle"), None)


def fit_stage(ctx, model, reader, fold, stage, epochs, lr, train_rows, val_rows, targets, best) -> None:
    config = ctx.config
    optimizer = timm.optim.create_optimizer_v2(model, opt=config.optimizer, lr=lr, weight_decay=config.weight_decay)
    steps_per_epoch = _steps_per_epoch(ctx, reader, train_rows)
    total_steps = max(1, steps_per_epoch * epochs)
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=lr * 0.01, warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=lr * 0.01, t_in_epochs=False,
    )
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    ema = timm.utils.ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay > 0 else None
    generator = torch.Generator(device=ctx.device).manual_seed(config.seed * 1000 + fold)
    augmenter = make_augmenter(config, reader, generator)
    step = 0
    for epoch in range(epochs):
        started = time.perf_counter()
        net.train()
        losses = []
        batches = reader.batches(
            train_rows, config.batch_size, shuffle=True, seed=config.seed + 7919 * fold, epoch=epoch + (100 if stage == "stage2" else 0),
            drop_last=True, raw_jitter=int(config.raw_jitter_s * 200), pin_memory=ctx.device.type == "cuda",
            shard=(ctx.rank, ctx.world),
        )
        with _progress(ctx, f"fold {fold} {stage} epoch {epoch + 1}/{epochs}", steps_per_epoch) as advance:
            for i, batch in enumerate(batches):
                if i >= steps_per_epoch:
                    break  # every rank takes the same number of steps
                batch = to_device(batch, ctx.device)
                inputs = model_inputs(batch, config, train=True)
                batch_targets = torch.from_numpy(targets[batch["row"].cpu().numpy()]).to(ctx.device)
                if "image" in inputs:
                    inputs["image"], batch_targets = augmenter(inputs["image"], batch_targets, train=True)
                with autocast(config, ctx.device):
                    logits = run_model(net, inputs)
                loss = kl_loss(logits.float(), batch_targets, batch["votes"], config.mse_weight, config.vote_weighting)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model)
                losses.append(loss.item())
                advance(loss.item())
        seconds = time.perf_counter() - started
        if ctx.main:
            evaluated = ema.module if ema is not None else model
            probs = predict_probabilities(evaluated, reader, val_rows, config, ctx.device)
            report = cv_report(reader.targets[val_rows], probs, reader.votes[val_rows])
            score = report["kl_10plus"] if report["n_10plus"] else report["kl"]
            record = {
                "fold": fold, "stage": stage, "epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                "val_kl": report["kl"], "val_kl_10plus": report["kl_10plus"], "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds, "samples_per_s": len(losses) * config.batch_size * ctx.world / seconds,
            }
            with open(ctx.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            checkpoint = {"model": evaluated.state_dict(), "fold": fold, "stage": stage, "epoch": epoch + 1,
                          "val_kl": report["kl"], "val_kl_10plus": report["kl_10plus"]}
            torch.save(checkpoint, ctx.out / f"fold{fold}_last.pt")
            if score < best["score"]:
                best.update(score=score, epoch=epoch + 1)
                torch.save(checkpoint, ctx.out / f"fold{fold}_best.pt")
            if not ctx.quiet:
                print(f"fold {fold} {stage} epoch {epoch + 1}: loss {record['train_loss']:.4f} val KL {report['kl']:.4f}"
                      f" (>=10 votes {report['kl_10plus']:.4f}) {record['samples_per_s']:.0f} samples/s", flush=True)
        if ctx.world > 1:
            dist.barrier()


def apply_pseudo_labels(reader: StoreReader, targets: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Replace (or blend) the targets of low-vote rows with an ensemble's out-of-fold predictions."""
    table = pq.read_table(config.pseudo_labels)
    label_rows = {int(l): i for i, l in enumerate(reader.column("label_id"))}
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float32)
    unknown = [int(l) for l in table.column("label_id").to_numpy() if int(l) not in label_rows]
    if unknown:
        raise ValueError(f"{config.pseudo_labels}: {len(unknown)} label_ids are not in {config.store} "
                         f"(first: {unknown[0]}); pseudo-labels must come from runs on this store")
    rows = np.array([label_rows[int(l)] for l in table.column("label_id").to_numpy()], dtype=np.int64)
    low = reader.votes[rows] < config.stage2_min_votes
    rows, probs = rows[low], probs[low]
    out = targets.copy()
    if config.pseudo_mode == "replace":
        out[rows] = probs
    elif config.pseudo_mode == "blend":
        out[rows] = config.pseudo_blend * probs + (1 - config.pseudo_blend) * out[rows]
    else:
        raise ValueError(f"pseudo_mode must be replace or blend, got {config.pseudo_mode!r}")
    return out


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
    """Per-epoch progress bar (rank 0, not quiet) with loss and ETA; yields advance(loss)."""

    def __init__(self, ctx: Context, label: str, total: int):
        self.console = Console(stderr=True)
        # A transient bar is for terminals; in logs the per-epoch line says it all.
        self.show = ctx.main and not ctx.quiet and self.console.is_terminal
        self.label, self.total = label, total

    def __enter__(self):
        if not self.show:
            return lambda loss: None
        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True,
                            console=self.console)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, loss="-")
        return lambda loss: self.bar.update(task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc):
        if self.show:
            self.bar.__exit__(*exc)
        return False
