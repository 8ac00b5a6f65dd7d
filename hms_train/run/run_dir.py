"""A run folder's files across a fresh start and a resume: the earlier run's files cleared, or the metrics
the checkpoints cover kept (`prepare_run_directory`), where a resume goes on (`resume_point`), and
metrics.jsonl's lines."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from hms_train.run import checkpoint
from hms_train.run.checkpoint import Position
from hms_train.run.context import Context
from hms_train.run.plan import RunPlan
from hms_train.run.runlog import RUN_LOG

STALE_RUN_FILES = ("fold*_last.pt", "fold*_best.pt", "fold*_oof.parquet", "oof.parquet", "summary.json", "curves.png",
                   "tracking.json", RUN_LOG)


def prepare_run_directory(ctx: Context, plan: RunPlan, resume: bool) -> int:
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
    kept = [r for r in read_records(metrics)
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


def append_metrics(path: Path, record: dict) -> int:
    """Append `record`; returns its line number (0-based)."""
    with open(path, "a+") as f:
        f.seek(0)
        line = sum(1 for _ in f)
        f.write(json.dumps(record) + "\n")
    return line


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a last line torn by a kill is dropped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
