"""Progress within an epoch (hms_train/run/progress.py): the plain lines a log gets when stdout is not a
terminal, the bar a terminal gets, the same lines into RUN/log.txt, and the run's ETA from the steps left."""

import io
import re
import time

import numpy as np
import torch
from rich.console import Console

from hms_train.run.plan import Stage
from hms_train.run.progress import EpochProgress, RunClock, clock_text, steps_after


def _stage(index: int, epochs: int, steps: int) -> Stage:
    empty = np.zeros(0, dtype=np.int64)
    return Stage(f"stage{index + 1}", index, epochs, 1e-3, empty, empty, np.zeros((0, 6)), steps_per_epoch=steps)


def test_steps_after_counts_the_rest_of_the_stage_the_fold_and_the_later_folds():
    stages = {f: [_stage(0, 3, 10), _stage(1, 2, 5)] for f in (0, 2)}
    assert steps_after(stages, [0, 2], 0, 0, 0, 0) == 2 * (30 + 10)  # nothing done yet
    assert steps_after(stages, [0, 2], 0, 0, 1, 4) == (10 - 4) + 10 + 10 + 40  # epoch 2 after batch 4
    assert steps_after(stages, [0, 2], 2, 1, 1, 5) == 0  # the last step of the run


def _run(console: Console, steps: int = 6, log_every: int = 2):
    logged = []
    clock = RunClock()
    progress = EpochProgress("fold 0 stage1 epoch 1/1", steps, log_every, 32, clock, log=logged.append,
                             console=console, line_seconds=0.0)
    loss_sum = torch.tensor(0.0)
    with progress:
        for step in range(1, steps + 1):
            time.sleep(0.002)
            loss_sum += 0.5 * step
            progress.advance(step, loss_sum, steps_after({0: [_stage(0, 2, steps)]}, [0], 0, 0, 0, step))
    return logged, clock


def test_not_a_terminal_prints_plain_lines_every_log_every_steps_and_logs_the_same():
    out = io.StringIO()
    logged, clock = _run(Console(file=out, force_terminal=False, width=300))
    lines = out.getvalue().splitlines()
    assert lines == logged, (lines, logged)
    # steps 2 and 4 (the loss is read then); step 6, the epoch's last, is the epoch line's (train.py)
    assert [re.match(r"fold 0 stage1 epoch 1/1: batch (\d)/6, \d+ samples/s, loss ([\d.]+), run ETA \d+:\d\d:\d\d$", line)
            .groups() for line in lines] == [("2", f"{(0.5 + 1) / 2:.4f}"), ("4", f"{0.5 * 10 / 4:.4f}")], lines
    assert clock.steps == 6


def test_a_terminal_gets_the_bar_with_samples_per_second_loss_and_run_eta():
    out = io.StringIO()
    logged, _ = _run(Console(file=out, force_terminal=True, width=300))
    shown = out.getvalue()
    assert "samples/s loss" in shown and "run ETA" in shown, shown
    assert "batch 2/6" not in shown  # no plain lines on a terminal ...
    assert len(logged) == 2  # ... but RUN/log.txt gets them


def test_quiet_prints_nothing_and_still_logs():
    out = io.StringIO()
    logged = []
    progress = EpochProgress("e", 4, 1, 8, RunClock(), show=False, log=logged.append,
                             console=Console(file=out, force_terminal=True), line_seconds=0.0)
    with progress:
        for step in range(1, 5):
            progress.advance(step, torch.tensor(float(step)), 4 - step)
    assert out.getvalue() == "" and len(logged) == 3


def test_clock_text():
    assert clock_text(None) == "-"
    assert clock_text(3723.4) == "1:02:03"
