"""Each stage's training targets: the row table's, or a file's where the stage takes them (pseudo-labels
for the low-vote rows, a teacher's predictions for every row), checked to cover every row that needs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hms_train.data.reader import StoreReader
from hms_train.run.config import PSEUDO_STAGES, TrainConfig
from hms_train.run.metric import VOTE_COLUMNS
from hms_train.run.stages import RowScope, from_file, stage2_scope, stage2_training_rows


def file_rows(config: TrainConfig, reader: StoreReader, scope: RowScope) -> dict[int, np.ndarray]:
    """Per stage, every training row of some fold that takes its target from a file."""
    needed: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for fold in config.folds:
        needed[0].append(from_file(config, 0, scope.select(reader, exclude_folds=[fold]), scope))
        if config.stage2_epochs > 0:
            fold_scope = stage2_scope(config, reader, fold, scope)
            needed[1].append(from_file(config, 1, stage2_training_rows(config, reader, fold, fold_scope), scope))
    return {stage: np.unique(np.concatenate(rows)) if rows else np.empty(0, np.int64) for stage, rows in needed.items()}


def stage_targets(config: TrainConfig, reader: StoreReader, scope: RowScope, read_files: bool = True
                  ) -> dict[int, np.ndarray]:
    """Each stage's training targets: the row table's, with a file's where a stage takes them (checked
    to cover every row that needs one). Without `read_files`: the table's (the plan only counts rows)."""
    needed = file_rows(config, reader, scope)
    targets = {0: scope.targets, 1: scope.targets}
    if not read_files:
        return targets
    if config.teacher_targets is not None:
        rows = np.union1d(needed[0], needed[1])
        teacher = read_targets_file(reader, config.teacher_targets, "teacher_targets", rows, "that training uses")
        return {stage: apply_file_targets(scope.targets, teacher, 1.0) for stage in targets}
    if config.pseudo_labels is not None:
        stage = PSEUDO_STAGES.index(config.pseudo_stage)
        targets[stage] = train_targets(reader, config, needed[stage], scope)
    return targets


def train_targets(reader: StoreReader, config: TrainConfig, needed: np.ndarray | None = None,
                  scope: RowScope | None = None) -> np.ndarray:
    """The targets of the pseudo-labels' stage: the table's, the low-vote rows' replaced (or blended) by
    the pseudo-labels, which must cover the `needed` rows."""
    scope = scope or RowScope.of(config, reader)
    if config.pseudo_labels is None:
        return scope.targets
    # every low-vote row, not only the table's: Richard's stage-2 table can keep rows the run's table does not
    low = np.flatnonzero(scope.target_votes < config.stage2_min_votes)
    pseudo = read_targets_file(reader, config.pseudo_labels, "pseudo_labels",
                               np.empty(0, np.int64) if needed is None else needed,
                               f"with fewer than stage2_min_votes = {config.stage2_min_votes} votes that "
                               f"{config.pseudo_stage} trains on", only=low)
    weight = config.pseudo_blend if config.pseudo_mode == "blend" else 1.0  # "replace": the pseudo label alone
    return apply_file_targets(scope.targets, pseudo, weight)


@dataclass(frozen=True, eq=False)
class FileTargets:
    """Probabilities by store row, from a targets file (pseudo-labels, a teacher's predictions)."""

    rows: np.ndarray
    probs: np.ndarray  # (len(rows), 6)


def read_targets_file(reader: StoreReader, path: str, key: str, needed: np.ndarray, needed_what: str,
                      only: np.ndarray | None = None) -> FileTargets:
    """A parquet of label_id and the six *_vote columns (from `hms-train pseudo-label`) as store rows (those
    in `only`, when given); ValueError when it misses any of the `needed` rows (how many, the first), or
    names label_ids of another store."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found (write it with `hms-train pseudo-label`)")
    table = pq.read_table(path)
    missing = [c for c in ("label_id", *VOTE_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; a targets file has label_id and {list(VOTE_COLUMNS)}")
    label_rows = {int(l): i for i, l in enumerate(reader.column("label_id"))}
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float32)
    labels = table.column("label_id").to_numpy()
    unknown = [int(l) for l in labels if int(l) not in label_rows]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} label_ids are not in {reader.url} "
                         f"(first: {unknown[0]}); {key.replace('_', ' ').replace('pseudo labels', 'pseudo-labels')} "
                         "must come from runs on this store")
    rows = np.array([label_rows[int(l)] for l in labels], dtype=np.int64)
    if only is not None:
        keep = np.isin(rows, only)
        rows, probs = rows[keep], probs[keep]
    missing = np.setdiff1d(needed, rows)
    if len(missing):
        first = [int(label) for label in reader.column("label_id")[missing[:5]]]
        what = "pseudo-label" if key == "pseudo_labels" else "target"
        raise ValueError(f"{path}: no {what} for {len(missing)} of the {len(needed)} rows {needed_what} (first "
                         f"label_ids: {first}); write it from runs over every fold of {reader.url}")
    return FileTargets(rows, probs)


def apply_file_targets(targets: np.ndarray, found: FileTargets, weight: float) -> np.ndarray:
    """`targets` with the file's rows replaced (weight 1) or mixed with the file's probabilities."""
    out = targets.copy()
    out[found.rows] = weight * found.probs + (1 - weight) * out[found.rows]
    return out
