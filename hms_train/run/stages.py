"""A fold's stages: the rows a run's row table scopes (`RowScope`), each stage's training and validation
rows, epochs, learning rate and steps per epoch, and the rows one epoch trains on (`epoch_rows`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hms_train.data.reader import Selection, StoreReader
from hms_train.data.sampler import most_voted_row_per_group, one_row_per_group, rows_per_rank
from hms_train.data.tables import chooses_among_used, row_table
from hms_train.run.config import PSEUDO_STAGES, TrainConfig
STAGE_INITS_FROM_BEST = "best"  # config.stage2_init: the stage starts from the best checkpoint so far


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
    steps_per_epoch: int = 0  # whole batches per rank and epoch
    file_target_rows: int = 0  # training rows whose targets come from a file (pseudo-labels)
    # The schedule this stage runs in: its length in epochs and the epochs before this stage in it. A stage
    # that shares the previous stage's schedule continues its optimizer, schedule and EMA (`carries`).
    schedule_epochs: int = 0
    schedule_offset: int = 0

    @property
    def carries(self) -> bool:
        return self.schedule_offset > 0


@dataclass(frozen=True, eq=False)
class RowScope:
    """The rows a run may train and validate on (its row table, `rows`: hms_train/data/tables.py), the
    targets the table reads for them, and the votes its vote filters compare (David's: the largest
    per-line total of the row's spectrogram). Indexed by store row."""

    in_table: np.ndarray = field(repr=False)  # (n_rows,) bool
    targets: np.ndarray = field(repr=False)  # (n_rows, 6)
    votes: np.ndarray = field(repr=False)  # (n_rows,) what the `>= N votes` filters compare
    # (n_rows,) the total of the line the target is read from: pseudo-labels replace a target below
    # stage2_min_votes (David's data_loader.py 385 `vote_sum < 10` reads the target line, not the filter's)
    target_votes: np.ndarray = field(repr=False)
    table: str = "all"

    @classmethod
    def of(cls, config: TrainConfig, reader: StoreReader, eligible: np.ndarray | None = None,
           table: str | None = None) -> RowScope:
        """The table `table` (default: the run's `rows`); `eligible` (a bool per store row) drops rows
        before a table that chooses among the rows used (Richard's per-spectrogram choice) chooses."""
        table = row_table(table or config.rows, reader.labels, eligible)
        in_table = np.zeros(reader.n_rows, dtype=bool)
        in_table[table.rows] = True
        votes = reader.votes.copy()
        votes[table.rows] = table.filter_votes
        target_votes = reader.votes.copy()
        target_votes[table.rows] = reader.votes[table.target_rows]
        return cls(in_table, table.targets(reader.targets), votes, target_votes, table.name)

    def select(self, reader: StoreReader, folds=None, exclude_folds=None) -> np.ndarray:
        """The table's rows built ok (ascending) of `folds`, or of every fold but `exclude_folds`."""
        rows = reader.select(Selection(folds=folds, exclude_folds=exclude_folds))
        return rows[self.in_table[rows]]


def fold_stages(config: TrainConfig, reader: StoreReader, fold: int, targets, world: int = 1,
                scope: RowScope | None = None) -> list[Stage]:
    """Stage 1 on the scope's rows of the other folds, validated on the fold's; stage 2 on their rows with
    >= stage2_min_votes votes, or on all of them with pseudo-labels for the low-vote ones, validated on the
    fold's rows with >= stage2_val_min_votes (all when None) that stayed in validation. `targets`: each
    stage's training targets (`stage_targets`), or one table for every stage."""
    scope = scope or RowScope.of(config, reader)
    targets = targets if isinstance(targets, dict) else {0: targets, 1: targets}
    fold_rows = scope.select(reader, folds=[fold])
    training = scope.select(reader, exclude_folds=[fold])
    stages = [Stage("stage1", 0, config.epochs, config.lr, training, validation_rows(config, reader, fold_rows, scope),
                    targets[0], file_target_rows=len(from_file(config, 0, training, scope)))]
    if config.stage2_epochs > 0:
        scope = stage2_scope(config, reader, fold, scope)
        fold_rows = scope.select(reader, folds=[fold])
        val = np.setdiff1d(fold_rows, moved_validation_rows(config, fold_rows, scope))
        if config.stage2_val_min_votes is not None:
            val = val[scope.votes[val] >= config.stage2_val_min_votes]
        rows = stage2_training_rows(config, reader, fold, scope)
        stages.append(Stage("stage2", 1, config.stage2_epochs, config.stage2_lr or config.lr / 2, rows,
                            validation_rows(config, reader, val, scope), targets[1], init=config.stage2_init,
                            file_target_rows=len(from_file(config, 1, rows, scope))))
    total = sum(stage.epochs for stage in stages)
    planned, offset = [], 0
    for stage in stages:
        steps = steps_per_epoch(config, len(epoch_rows(config, reader, fold, stage, 0)), world)
        shared = config.schedule_across_stages
        planned.append(dataclasses.replace(stage, steps_per_epoch=steps, schedule_epochs=total if shared else stage.epochs,
                                           schedule_offset=offset if shared else 0))
        offset += stage.epochs
    return planned


def stage2_scope(config: TrainConfig, reader: StoreReader, fold: int, scope: RowScope) -> RowScope:
    """Stage 2's table: `stage2_rows` (V3's fine-tuning table, the same for every fold) or the run's. On a
    table that chooses among the rows used (Richard's, `chooses_among_used`) with pseudo-labels' moved rows
    (V4 cell 11), the validation fold's rows that stage 2 neither trains on (votes <
    stage2_val_to_train_below) nor validates on (>= stage2_val_min_votes: the 7-vote rows) are dropped
    before it chooses (`drop_duplicates`), so their spectrograms keep another eeg_id's row."""
    name = config.stage2_rows or config.rows
    if (not chooses_among_used(name) or config.stage2_val_to_train_below is None
            or config.stage2_val_min_votes is None):
        return scope if name == scope.table else RowScope.of(config, reader, table=name)
    fold_rows = reader.select(Selection(folds=[fold], only_ok=False))
    votes = reader.votes[fold_rows]
    unused = (votes >= config.stage2_val_to_train_below) & (votes < config.stage2_val_min_votes)
    eligible = np.ones(reader.n_rows, dtype=bool)
    eligible[fold_rows[unused]] = False
    return RowScope.of(config, reader, eligible, table=name)


def steps_per_epoch(config: TrainConfig, rows: int, world: int = 1) -> int:
    """Whole batches per rank, equal on every rank (the smallest shard decides), at least one."""
    steps = rows_per_rank(rows, world) // config.batch_size
    if config.max_batches_per_epoch:
        steps = min(steps, config.max_batches_per_epoch)
    return max(steps, 1)


def stage2_training_rows(config: TrainConfig, reader: StoreReader, fold: int, scope: RowScope) -> np.ndarray:
    """The other folds' rows and the fold's moved low-vote rows; without pseudo-labels only those with
    >= stage2_min_votes votes."""
    rows = np.union1d(scope.select(reader, exclude_folds=[fold]),
                      moved_validation_rows(config, scope.select(reader, folds=[fold]), scope))
    if config.pseudo_labels is None:
        rows = rows[scope.votes[rows] >= config.stage2_min_votes]
    return rows


def moved_validation_rows(config: TrainConfig, fold_rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """The validation fold's rows that join stage-2 training: fewer than stage2_val_to_train_below votes."""
    if config.stage2_val_to_train_below is None:
        return np.empty(0, dtype=np.int64)
    return fold_rows[scope.votes[fold_rows] < config.stage2_val_to_train_below]


def from_file(config: TrainConfig, stage: int, rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """Which of a stage's training `rows` take their targets from a file: every one with a teacher's
    targets (distillation), the low-vote ones (< stage2_min_votes) in the pseudo-labels' stage."""
    if config.teacher_targets is not None:
        return rows
    if config.pseudo_labels is not None and stage == PSEUDO_STAGES.index(config.pseudo_stage):
        return rows[scope.target_votes[rows] < config.stage2_min_votes]
    return rows[:0]


def validation_rows(config: TrainConfig, reader: StoreReader, rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """`rows`, or with `val_per_eeg` each eeg_id's most-voted row among them (fixed, ties: the first)."""
    if not config.val_per_eeg:
        return rows
    return most_voted_row_per_group(rows, reader.column("eeg_id"), scope.votes)


def epoch_rows(config: TrainConfig, reader: StoreReader, fold: int, stage: Stage, epoch: int) -> np.ndarray:
    """The rows one epoch trains on: the stage's, or with `sample_per_eeg` one random row per eeg_id of
    them, drawn from (seed, fold, stage, epoch) alone, so that a resumed epoch draws the same rows."""
    if not config.sample_per_eeg:
        return stage.rows
    rng = np.random.default_rng([config.seed, fold, stage.index, epoch])
    return one_row_per_group(stage.rows, reader.column("eeg_id"), rng)
