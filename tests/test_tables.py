"""The seed's row tables (hms_train.data.tables) held to the seed's own code.

The seed's rules are transcribed line by line below (`seed_richard`, `seed_david`, from
RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification @ 2223b40) and run on hand-made train.csv
lines; the store's labels come from the same lines through hms_prep's row plan (store order differs
from train.csv order, as in a real store). Hand-made cases pin each quirk; random ones compare whole tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hms_prep.domain import TARGET_COLUMNS, VOTE_COLUMNS
from hms_prep.sources.rows import plan_rows
from hms_prep.store.labels import read_labels
from hms_train.data.tables import TABLES, RowTable, all_rows, david_rows, richard_rows, row_table


def line(eeg_id, spectrogram_id, votes, patient_id=1, offset=None):
    """One train.csv line; `votes` is the six counts or one number (all on Seizure)."""
    votes = list(votes) if not np.isscalar(votes) else [votes, 0, 0, 0, 0, 0]
    return {"eeg_id": eeg_id, "spectrogram_id": spectrogram_id, "patient_id": patient_id, "votes": votes,
            "offset": offset}


def labels_of(lines: list[dict]) -> pa.Table:
    """labels.parquet for these train.csv lines (in this order), as `hms-prep build` plans it."""
    offsets = {}
    columns = {name: [] for name in ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id",
                                     "spectrogram_label_offset_seconds", "label_id", "patient_id", *VOTE_COLUMNS)}
    for number, item in enumerate(lines):
        offset = item["offset"] if item["offset"] is not None else offsets.get(item["eeg_id"], -2.0) + 2.0
        offsets[item["eeg_id"]] = offset
        columns["eeg_id"].append(item["eeg_id"])
        columns["eeg_label_offset_seconds"].append(float(offset))
        columns["spectrogram_id"].append(item["spectrogram_id"])
        columns["spectrogram_label_offset_seconds"].append(float(offset))
        columns["label_id"].append(1000 + number)  # label_id = 1000 + the line's number in train.csv
        columns["patient_id"].append(item["patient_id"])
        for name, count in zip(VOTE_COLUMNS, item["votes"]):
            columns[name].append(count)
    return plan_rows(pa.table(columns), "train", n_folds=2)


def lines_of(table: RowTable, labels: pa.Table, rows: np.ndarray | None = None) -> list[int]:
    """The train.csv line numbers of a table's rows (or of `rows`), in train.csv order."""
    rows = table.rows if rows is None else rows
    return sorted(int(label) - 1000 for label in labels.column("label_id").to_numpy()[rows])


def filter_votes_by_line(table: RowTable, labels: pa.Table) -> dict[int, int]:
    """{train.csv line number of each table row: its filter votes}."""
    numbers = labels.column("label_id").to_numpy()[table.rows] - 1000
    return dict(zip(numbers.tolist(), table.filter_votes.tolist()))


# --- the seed's code, transcribed -------------------------------------------------------------------------


def seed_richard(lines: list[dict]) -> list[int]:
    """Richard_src/toolbox.ipynb cell 7 then Train_V4_Pseudo_Label.ipynb cell 11: the line numbers kept."""
    train_eeg = []
    for eeg_id in dict.fromkeys(item["eeg_id"] for item in lines):  # df['eeg_id'].unique()
        temp_df = [number for number, item in enumerate(lines) if item["eeg_id"] == eeg_id]
        train_eeg.append(temp_df[0])  # temp_df.loc[0, ...]
    kept, seen = [], set()
    for number in train_eeg:  # df.drop_duplicates(subset=['spectrogram_id'])
        if lines[number]["spectrogram_id"] not in seen:
            seen.add(lines[number]["spectrogram_id"])
            kept.append(number)
    return kept


def seed_david(lines: list[dict]) -> dict[int, tuple[int, list[int], int]]:
    """David_src/data_loader.py per spectrogram: (the image's line, the target votes, the filter's votes)."""
    out = {}
    for spec_id in dict.fromkeys(item["spectrogram_id"] for item in lines):
        first = next(item for item in lines if item["spectrogram_id"] == spec_id)  # train_spectrogram.csv row
        # filter_vote, lines 262-268
        p_rows = [item for item in lines if item["spectrogram_id"] == spec_id]
        votes = np.asarray([[item["votes"][c] for item in p_rows] for c in range(6)]).sum(0)
        filter_total = votes[np.argmax(votes)]
        # _get_item, lines 369-372, and pick_max_vote, lines 340-363
        p_data = [number for number, item in enumerate(lines)
                  if item["patient_id"] == first["patient_id"] and item["spectrogram_id"] == spec_id]
        votes = np.asarray([lines[number]["votes"] for number in p_data])
        idx = np.argmax(votes.sum(1))
        dataframe = p_data[idx:]
        votes = votes[idx:]
        eeg_id = lines[dataframe[0]]["eeg_id"]
        dataframe = [number for number in dataframe if lines[number]["eeg_id"] == eeg_id]
        idx = 0
        if len(dataframe) > 2:
            vt = votes.copy()
            if np.array_equal(vt[0], vt[-1]):
                idx = idx + len(dataframe) // 2
            else:
                ed_idx = -1
                for i in range(1, vt.shape[0]):
                    if not np.array_equal(vt[i], vt[0]):
                        ed_idx = i
                        break
                idx = idx + ed_idx // 2
        out[spec_id] = (p_data[idx], list(votes[idx]), int(filter_total))  # eeg_id = p_data['eeg_id'].iloc[idx]
    return out


def david_as_seed(lines: list[dict]) -> dict[int, tuple[int, list[int], int]]:
    """david_rows on the same lines, in seed_david's terms."""
    labels = labels_of(lines)
    table = david_rows(labels)
    label_ids = labels.column("label_id").to_numpy()
    votes = np.stack([labels.column(c).to_numpy() for c in VOTE_COLUMNS], 1)
    spectrograms = labels.column("spectrogram_id").to_numpy()
    return {int(spectrograms[row]): (int(label_ids[row]) - 1000, [int(v) for v in votes[target]], int(filter_votes))
            for row, target, filter_votes in zip(table.rows, table.target_rows, table.filter_votes)}


# --- Richard ----------------------------------------------------------------------------------------------


def test_richard_keeps_each_spectrograms_first_eeg_in_train_csv_order():
    lines = [
        line(900, 10, 3), line(900, 10, 12), line(900, 10, 12),  # spectrogram 10: eeg 900 comes first ...
        line(100, 10, 15), line(100, 10, 15),  # ... though eeg 100 sorts first in the store
        line(500, 20, 2), line(500, 20, 9),  # spectrogram 20: one eeg
        line(300, 30, [0, 4, 4, 0, 0, 0]),  # spectrogram 30: a tie of classes changes nothing
    ]
    labels = labels_of(lines)
    assert labels.column("eeg_id").to_pylist()[0] == 100  # the store's order is not train.csv's
    table = richard_rows(labels)
    assert lines_of(table, labels) == seed_richard(lines) == [0, 5, 7]
    assert filter_votes_by_line(table, labels) == {0: 3, 5: 2, 7: 8}  # the line's own votes (cell 7: voter)
    assert np.array_equal(table.target_rows, table.rows)
    assert lines_of(table.at_least(8), labels) == [7]


def test_richard_eligible_rows_are_dropped_before_the_spectrogram_deduplication():
    # Train_V3_Attention_Module.ipynb cell 11: df[df['voter'] > 7] before drop_duplicates
    lines = [line(900, 10, 3), line(900, 10, 12), line(100, 10, 15), line(500, 20, 2)]
    labels = labels_of(lines)
    votes = labels.column("total_votes").to_numpy()
    stage2 = richard_rows(labels, eligible=votes > 7)
    assert lines_of(stage2, labels) == [2]  # eeg 900's first line has 3 votes: eeg 100 keeps spectrogram 10
    assert lines_of(richard_rows(labels).at_least(8), labels) == []  # filtering after would lose it


# --- David ------------------------------------------------------------------------------------------------


def test_david_target_is_the_middle_of_the_most_voted_run_and_the_image_is_counted_from_the_first_line():
    lines = [
        line(1, 10, 3), line(1, 10, 3), line(1, 10, 3),  # 0-2
        line(2, 10, [8, 4, 0, 0, 0, 0]),  # 3: the most votes, a run of 5 equal lines ...
        *[line(2, 10, [8, 4, 0, 0, 0, 0]) for _ in range(4)],  # 4-7
        line(2, 10, [1, 1, 0, 0, 0, 0]),  # 8: ... ended here
    ]
    labels = labels_of(lines)
    assert seed_david(lines) == david_as_seed(lines) == {10: (2, [8, 4, 0, 0, 0, 0], 12)}
    table = david_rows(labels)
    # offset 5 // 2 = 2 from line 3: the target is line 5; the image is line 2 (p_data.iloc[2], counted
    # from line 0), another EEG with 3 votes
    assert lines_of(table, labels) == [2]
    assert lines_of(table, labels, table.target_rows) == [5]
    store_targets = np.stack([labels.column(c).to_numpy() for c in TARGET_COLUMNS], 1)
    targets = table.targets(store_targets)
    changed = np.flatnonzero((targets != store_targets).any(1))
    assert lines_of(table, labels, changed) == [2]  # line 2 learns line 5's votes; no other row changes
    assert np.array_equal(targets[table.rows], store_targets[table.target_rows])


def test_david_same_votes_at_both_ends_takes_the_middle_of_the_eeg_and_two_lines_take_none():
    lines = [
        line(5, 10, 12), line(5, 10, 4), line(5, 10, 4), line(5, 10, 12),  # first and last equal: 4 // 2
        line(6, 20, 3), line(7, 20, 11), line(7, 20, 11),  # most-voted eeg has 2 lines left: offset 0
    ]
    labels = labels_of(lines)
    assert seed_david(lines) == david_as_seed(lines)
    table = david_rows(labels)
    assert lines_of(table, labels) == [2, 4]  # spectrogram 20's image: line 4, eeg 6, its 3 votes
    assert sorted(lines_of(table, labels, [target]) for target in table.target_rows) == [[2], [5]]


def test_david_ties_take_the_first_line_and_other_patients_lines_are_not_picked():
    lines = [
        line(1, 10, 9, patient_id=7), line(2, 10, 9, patient_id=7),  # a tie: np.argmax picks line 0
        line(3, 20, 5, patient_id=8), line(4, 20, 14, patient_id=9),  # line 3 is another patient's ...
    ]
    labels = labels_of(lines)
    assert seed_david(lines) == david_as_seed(lines) == {10: (0, [9, 0, 0, 0, 0, 0], 9), 20: (2, [5, 0, 0, 0, 0, 0], 14)}
    table = david_rows(labels)
    assert filter_votes_by_line(table, labels) == {0: 9, 2: 14}  # ... yet its 14 votes keep spectrogram 20
    assert lines_of(table.at_least(10), labels) == [2]


def test_david_filter_is_the_largest_line_total_not_a_class_summed_over_lines():
    # two lines of 5 Seizure votes: 10 Seizure votes over the spectrogram, but no line with 10 votes
    lines = [line(1, 10, 5), line(1, 10, 5), line(2, 20, [6, 4, 0, 0, 0, 0])]
    labels = labels_of(lines)
    table = david_rows(labels)
    assert filter_votes_by_line(table, labels) == {0: 5, 2: 10}
    assert len(table.at_least(10)) == 1


@pytest.mark.parametrize("seed", range(40))
def test_both_rules_match_the_seed_code_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    patterns = [rng.integers(0, 4, 6) for _ in range(3)]  # few vote patterns: runs, ties, repeats
    lines = []
    for spectrogram in rng.permutation(8)[: rng.integers(1, 8)]:
        for eeg in rng.choice(10_000, rng.integers(1, 4), replace=False):
            patient = int(rng.integers(1, 3)) if rng.random() < 0.2 else int(spectrogram)
            for _ in range(int(rng.integers(1, 7))):
                votes = patterns[rng.integers(0, 3)] + (rng.random() < 0.3) * rng.integers(0, 3, 6)
                lines.append(line(int(eeg), 100 + int(spectrogram), votes + (votes.sum() == 0), patient))
    labels = labels_of(lines)
    assert lines_of(richard_rows(labels), labels) == sorted(seed_richard(lines))
    assert david_as_seed(lines) == seed_david(lines)


# --- the registry and a real store ------------------------------------------------------------------------


def test_registry_and_refusals():
    labels = labels_of([line(1, 10, 3), line(2, 20, 12)])
    assert sorted(TABLES) == ["all", "david", "richard", "richard_finetune"]
    assert len(row_table("all", labels)) == 2
    with pytest.raises(ValueError, match="unknown row table 'first'"):
        row_table("first", labels)
    with pytest.raises(ValueError, match=r"without \['source_index'\]"):
        all_rows(labels.drop_columns(["source_index"]))


def test_table_sizes_on_a_synthetic_store(train_store):
    labels = read_labels(train_store)
    spectrograms = len(np.unique(labels.column("spectrogram_id").to_numpy()))
    eegs = len(np.unique(labels.column("eeg_id").to_numpy()))
    tables = {name: row_table(name, labels) for name in TABLES}
    sizes = {name: len(table) for name, table in tables.items()}
    print(f"\n{labels.num_rows} label rows, {eegs} eeg_ids, {spectrograms} spectrograms; table sizes {sizes}; "
          f"david >= 10 votes {len(tables['david'].at_least(10))}, richard >= 8 {len(tables['richard'].at_least(8))}")
    assert sizes == {"all": labels.num_rows, "richard": spectrograms, "david": spectrograms,
                     "richard_finetune": sizes["richard_finetune"]}
    # V3's filter-then-deduplicate keeps every > 7-vote row the other order keeps, and more
    assert len(tables["richard"].at_least(8)) < sizes["richard_finetune"] < spectrograms
    assert spectrograms < eegs < labels.num_rows  # the synthetic set shares spectrograms, as the real one
    for table in tables.values():
        assert np.all(np.diff(table.rows) > 0)
