"""Progress within an epoch: batches, samples/s, loss and the ETA of the whole run.

On a terminal it is a rich bar (transient: the per-epoch line stays); elsewhere (a log, a pipe, a
notebook's captured output) it is one plain line every `LINE_SECONDS`, so that a minutes-long epoch is
not minutes of silence and a log is not flooded. RUN/log.txt gets the same lines at the same pace,
terminal or not, and the per-epoch lines.

The loss is read from the device only every `log_every` steps (each read waits for the queued work), so
a plain line comes at the first such step after its time is due.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hms_train.run.plan import Stage

LINE_SECONDS = 30.0  # between two plain progress lines (not a terminal) and two lines of RUN/log.txt


def steps_after(stages: dict[int, list[Stage]], folds: list[int], fold: int, stage_index: int, epoch: int, batch: int) -> int:
    """Training steps the run has left after `batch` batches of `epoch` (0-based) of stage `stage_index`
    of `fold`: the rest of that stage, the fold's later stages, the later folds."""
    left = sum(s.epochs * s.steps_per_epoch for f in folds[folds.index(fold) + 1:] for s in stages[f])
    for stage in stages[fold]:
        if stage.index > stage_index:
            left += stage.epochs * stage.steps_per_epoch
        elif stage.index == stage_index:
            left += (stage.epochs - epoch - 1) * stage.steps_per_epoch + stage.steps_per_epoch - batch
    return left


@dataclass
class RunClock:
    """The pace of this process's training so far (validation and checkpoints included, as they recur):
    the whole run's ETA is that pace times the steps left."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0

    def eta(self, steps_left: int) -> float | None:
        if self.steps == 0:
            return None
        return (time.perf_counter() - self.started) / self.steps * steps_left


def clock_text(seconds: float | None) -> str:
    """'1:02:03' ('-' before the first step)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class EpochFigures:
    """What a progress line says."""

    batch: int
    total: int
    samples_per_s: float
    loss: float | None
    run_eta_s: float | None

    def text(self, label: str) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        return (f"{label}: batch {self.batch}/{self.total}, {self.samples_per_s:.0f} samples/s, loss {loss}, "
                f"run ETA {clock_text(self.run_eta_s)}")


class EpochProgress:
    """One epoch's progress. `advance(steps, loss_sum, steps_left)` after every step: `steps` done in this
    epoch (resumed ones included), the loss summed on the device over them, the run's steps left.
    `show`: print to `console` (rank 0, not quiet); `log`: a function writing lines to RUN/log.txt."""

    def __init__(self, label: str, total: int, log_every: int, samples_per_step: int, clock: RunClock, *,
                 done: int = 0, show: bool = True, log: Callable[[str], None] | None = None,
                 console: Console | None = None, line_seconds: float = LINE_SECONDS):
        self.console = console or Console(stderr=True)
        self.label, self.total, self.log_every, self.done = label, total, log_every, done
        self.samples_per_step, self.clock, self.log, self.line_seconds = samples_per_step, clock, log, line_seconds
        self.show = show
        self.bar = self.show and self.console.is_terminal
        self.lines = self.show and not self.bar
        self.started = self.last_line = time.perf_counter()
        self.loss: float | None = None

    def __enter__(self) -> EpochProgress:
        if self.bar:
            self.progress = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]} samples/s loss {task.fields[loss]}"),
                                     TimeRemainingColumn(), TextColumn("run ETA {task.fields[eta]}"),
                                     transient=True, console=self.console)
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.done, loss="-",
                                               rate="-", eta="-")
        return self

    def figures(self, steps: int, steps_left: int) -> EpochFigures:
        seconds = time.perf_counter() - self.started
        rate = (steps - self.done) * self.samples_per_step / seconds if seconds > 0 else 0.0
        return EpochFigures(steps, self.total, rate, self.loss, self.clock.eta(steps_left))

    def advance(self, steps: int, loss_sum: torch.Tensor, steps_left: int) -> None:
        self.clock.steps += 1
        if steps % self.log_every and steps != self.total:
            if self.bar:
                self.progress.update(self.task, advance=1)
            return
        self.loss = loss_sum.item() / steps  # waits for the device: every log_every steps only
        figures = self.figures(steps, steps_left)
        if self.bar:
            self.progress.update(self.task, advance=1, loss=f"{self.loss:.4f}", rate=f"{figures.samples_per_s:.0f}",
                                 eta=clock_text(figures.run_eta_s))
        now = time.perf_counter()
        if now - self.last_line < self.line_seconds or steps == self.total:  # the epoch's own line follows
            return
        self.last_line = now
        line = figures.text(self.label)
        if self.lines:
            self.console.print(line, highlight=False, soft_wrap=True)
        if self.log is not None:
            self.log(line)

    def __exit__(self, *exc) -> bool:
        if self.bar:
            self.progress.__exit__(*exc)
        return False
