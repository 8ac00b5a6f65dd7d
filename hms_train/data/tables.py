"""The seed solution's row tables: which label rows a recipe trains on, as pure functions of a store's labels.

The store holds every line of train.csv (106,800 label rows in the real data, several per EEG and many
per spectrogram). The seed's two pipelines trained on one row per spectrogram, each chosen by its own rule
(seed: RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification @ 2223b40):

    all       every label row (this project's default)
    richard   Richard_src/toolbox.ipynb cell 7 ("Make Train_eeg csv"): each eeg_id's first train.csv line;
              then Train_V4_Pseudo_Label.ipynb cell 11 `drop_duplicates(subset=['spectrogram_id'])`: the
              first of those per spectrogram. 11,138 of the real 106,800 rows (every EEG has one spectrogram).
    richard_finetune
              Richard's round-1 fine-tuning (Train_V3_Attention_Module.ipynb cell 11): the per-eeg lines with
              more than 7 votes, then drop_duplicates(spectrogram_id), so a spectrogram keeps its first
              eeg_id with > 7 votes (stage 2's table: `stage2_rows`).
    david     David_src/data_loader.py `pick_max_vote` (lines 340-363) called by `_get_item` (365-385): per
              spectrogram, the most-voted line and the middle of its run of equal votes; one row per
              spectrogram (David_src/train_spectrogram.csv: 11,138 lines).

"First" and "run" are in train.csv order: labels.parquet keeps each line's position there (`source_index`);
the store's own order (by eeg_id and offset) is not the seed's. A table is computed over every label row,
whatever the build's status: the seed had no failed rows, so a chosen row that failed is left to the
caller to drop (no other row replaces it).

`TABLES` maps a name to its function, so a recipe's `rows = "richard"` is one lookup (`row_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from hms_prep.domain import VOTE_COLUMNS
from hms_prep.registry import Registry
from hms_prep.store.labels import live_rows


@dataclass(frozen=True, eq=False)
class RowTable:
    """The rows a recipe trains on, ascending store rows, with what the seed read from each.

    The arrays are aligned: table row i reads the images of store row `rows[i]`, takes the votes of store
    row `target_rows[i]` as its target (the same row, except in David's table: see `david_rows`), and the
    recipe's `>= N votes` filters compare `filter_votes[i]`.
    """

    name: str
    rows: np.ndarray = field(repr=False)
    target_rows: np.ndarray = field(repr=False)
    filter_votes: np.ndarray = field(repr=False)

    def __post_init__(self):
        sizes = {len(self.rows), len(self.target_rows), len(self.filter_votes)}
        if len(sizes) != 1:
            raise ValueError(f"row table {self.name!r}: rows, target_rows and filter_votes differ in length {sizes}")

    def __len__(self) -> int:
        return len(self.rows)

    def at_least(self, min_votes: int) -> RowTable:
        """The table's rows whose filter votes reach `min_votes` (the recipe's vote filter)."""
        keep = self.filter_votes >= min_votes
        return RowTable(self.name, self.rows[keep], self.target_rows[keep], self.filter_votes[keep])

    def targets(self, store_targets: np.ndarray) -> np.ndarray:
        """The store's (n_rows, 6) targets with each table row's taken from its target row."""
        out = np.array(store_targets, copy=True)
        out[self.rows] = store_targets[self.target_rows]
        return out


@dataclass(frozen=True, eq=False)
class _Labels:
    """The labels.parquet columns the rules read, as numpy arrays in store order (row i is array row i)."""

    source_index: np.ndarray  # the line's position in train.csv
    eeg_id: np.ndarray
    spectrogram_id: np.ndarray
    patient_id: np.ndarray
    votes: np.ndarray  # (n, 6) the *_vote columns
    live: np.ndarray  # (n,) bool: the row is still in train.csv (not dropped)

    @classmethod
    def of(cls, labels: pa.Table) -> _Labels:
        needed = ("row", "source_index", "eeg_id", "spectrogram_id", "patient_id", *VOTE_COLUMNS)
        missing = [name for name in needed if name not in labels.column_names]
        if missing:
            raise ValueError(f"labels without {missing}: row tables need a train store's labels.parquet")
        rows = labels.column("row").to_numpy()
        if not np.array_equal(rows, np.arange(labels.num_rows)):
            raise ValueError("labels.parquet is not in store order (column row is not 0..n-1)")
        def column(name: str) -> np.ndarray:
            return labels.column(name).to_numpy()

        return cls(column("source_index"), column("eeg_id"), column("spectrogram_id"), column("patient_id"),
                   np.stack([column(name) for name in VOTE_COLUMNS], 1).astype(np.int64), live_rows(labels))

    @property
    def total_votes(self) -> np.ndarray:
        return self.votes.sum(1)

    def csv_order(self) -> np.ndarray:
        """Store rows in train.csv order (the rows still in it)."""
        order = np.argsort(self.source_index, kind="stable")
        return order[self.live[order]]


def all_rows(labels: pa.Table) -> RowTable:
    """Every label row, its own target and votes."""
    table = _Labels.of(labels)
    rows = np.flatnonzero(table.live)
    return RowTable("all", rows, rows, table.total_votes[rows])


def richard_rows(labels: pa.Table, eligible: np.ndarray | None = None) -> RowTable:
    """Richard's table: each eeg_id's first train.csv line (its votes are the row's target and vote count:
    toolbox.ipynb cell 7, `temp_df.loc[0, ...]`, `voter = soft_label.sum()`), then the first of those per
    spectrogram_id (V4 cell 11 `df.drop_duplicates(subset=['spectrogram_id'])`, in the order of the eeg_ids'
    first lines: cell 7 walks `df['eeg_id'].unique()`).

    `eligible` (a bool per store row) drops per-eeg rows before the spectrogram de-duplication, as his
    fine-tuning stages did (Train_V3_Attention_Module.ipynb cell 11: `df[df['voter'] > 7]` first; V4 cell 11:
    the validation fold's 7-vote rows): a spectrogram then keeps its first eligible eeg_id's row.
    """
    table = _Labels.of(labels)
    order = table.csv_order()
    _, first = np.unique(table.eeg_id[order], return_index=True)
    per_eeg = order[np.sort(first)]  # each eeg_id's first line, in the order the eeg_ids first appear
    if eligible is not None:
        per_eeg = per_eeg[np.asarray(eligible, dtype=bool)[per_eeg]]
    _, first = np.unique(table.spectrogram_id[per_eeg], return_index=True)  # drop_duplicates keeps the first
    rows = np.sort(per_eeg[first])
    return RowTable("richard", rows, rows, table.total_votes[rows])


RICHARD_FINETUNE_MIN_VOTES = 8  # R/Train_V3_Attention_Module.ipynb cell 11: `df[df['voter']>7]`


def richard_finetune_rows(labels: pa.Table) -> RowTable:
    """Richard's round-1 fine-tuning table, as V3 wrote it (Train_V3_Attention_Module.ipynb cell 11):

        if CFG['finetune']: df= df[df['voter']>7]
        df= df.drop_duplicates(subset=['spectrogram_id'])

    the per-eeg lines with > 7 votes first, then the first of those per spectrogram; the fold split comes
    after (`train_df= df[df['fold']!=CFG['fold']]`, `valid_df= df[df['fold']==CFG['fold']]`), so training
    and validation both read this one table. (V4's pseudo-label runs drop only the validation fold's 7-vote
    lines first: that rule is per fold, `hms_train.run.stages`.)
    """
    eligible = _Labels.of(labels).total_votes >= RICHARD_FINETUNE_MIN_VOTES
    return dataclasses.replace(richard_rows(labels, eligible), name="richard_finetune")


def david_rows(labels: pa.Table) -> RowTable:
    """David's table: one row per spectrogram_id, read exactly as `LabelHMSDataset._get_item` reads it.

    For a spectrogram, `p_data` is its train.csv lines of the patient of its first line (data_loader.py
    369-370; train_spectrogram.csv's patient_id is the first line's, toolbox.ipynb cell 4). `pick_max_vote`
    (340-363) takes `a`, the first line with the most votes in total (`np.argmax(votes.sum(1))`), keeps the
    lines from `a` on, and counts those of `a`'s eeg_id; when there are more than 2 it moves to a middle
    line: `n // 2` of them when the votes of line `a` equal those of the spectrogram's last line, else
    `k // 2` where line `a + k` is the first whose votes differ from line `a`'s. It returns that offset
    `i` and the votes of line `a + i`, which become the target (381-384). The images, though, are read at
    `p_data.iloc[i]` (373-378): `i` counted from the spectrogram's first line, not from `a`. So the image
    row is line `i` and the target row is line `a + i`; they are the same line only when the most-voted
    line is the spectrogram's first. Both are kept: `rows` and `target_rows`.

    The `>= 10` filter (`filter_vote`, 261-272) keeps a spectrogram when the largest per-line vote total
    among all its lines reaches 10 (`np.asarray([p_data[v] for v in votes]).sum(0)` sums the six classes
    of each line; argmax picks the line): that is `filter_votes`. Pseudo-labels replace the target when the
    target line's own total is below 10 (385: `vote_sum < 10`).
    """
    table = _Labels.of(labels)
    order = table.csv_order()
    order = order[np.argsort(table.spectrogram_id[order], kind="stable")]  # by spectrogram, train.csv order within
    starts = np.flatnonzero(np.diff(table.spectrogram_id[order])) + 1
    image, target, filter_votes = [], [], []
    for lines in np.split(order, starts):  # one spectrogram's lines: `self.df[self.df['spectrogram_id'] == ...]`
        filter_votes.append(table.total_votes[lines].max())
        lines = lines[table.patient_id[lines] == table.patient_id[lines[0]]]
        offset, most_voted = _pick_max_vote(table.votes[lines], table.eeg_id[lines])
        image.append(lines[offset])
        target.append(lines[most_voted + offset])
    image, target, filter_votes = np.array(image), np.array(target), np.array(filter_votes)
    by_row = np.argsort(image, kind="stable")
    return RowTable("david", image[by_row], target[by_row], filter_votes[by_row])


def _pick_max_vote(votes: np.ndarray, eeg_ids: np.ndarray) -> tuple[int, int]:
    """David_src/data_loader.py `pick_max_vote` on one spectrogram's lines (train.csv order): (the offset
    it returns, counted from the most-voted line; that line's position)."""
    most_voted = int(np.argmax(votes.sum(1)))
    rest = votes[most_voted:]
    same_eeg = int((eeg_ids[most_voted:] == eeg_ids[most_voted]).sum())
    if same_eeg <= 2:
        return 0, most_voted
    if np.array_equal(rest[0], rest[-1]):
        return same_eeg // 2, most_voted
    differs = next(k for k in range(1, len(rest)) if not np.array_equal(rest[k], rest[0]))
    return differs // 2, most_voted


TABLES: Registry[Callable[[pa.Table], RowTable]] = Registry("row table", "tables", settings=False)
TABLES.register("all", all_rows)
# chooses_among_used: the table picks one row per group among the rows a stage uses, so a stage that drops
# rows first (stage 2 with pseudo-labels' moved rows, V4 cell 11) gets it recomputed on those (`eligible`).
TABLES.register("richard", richard_rows, chooses_among_used=True)
TABLES.register("richard_finetune", richard_finetune_rows)
TABLES.register("david", david_rows)


def row_table(name: str, labels: pa.Table, eligible: np.ndarray | None = None) -> RowTable:
    """The table `name` (a key of TABLES) of a train store's labels; with `eligible` (a bool per store
    row), of those rows alone, for a table that `chooses_among_used` (others ignore it)."""
    if name not in TABLES:
        raise ValueError(f"unknown row table {name!r}; expected one of {sorted(TABLES)}")
    if eligible is not None and chooses_among_used(name):
        return TABLES[name](labels, eligible)
    return TABLES[name](labels)


def chooses_among_used(name: str) -> bool:
    """Whether table `name` chooses its rows among those a stage uses (registered `chooses_among_used`)."""
    return bool(TABLES.entry(name).details.get("chooses_among_used"))
