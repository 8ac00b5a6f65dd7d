"""A corrected train.csv (issue 20, finding 5): rows are identified by label_id, so a changed row is computed
again in place, a removed one is dropped, a new one appended, and the rest reused: real stores, a real
Dask cluster, the reader and the trainer's row tables on the result."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from hms_prep.store.audit import store_info, verify_store
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.domain import LABEL_SAMPLES
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import LAYOUT_VERSION, ROOT_KEY, open_store

IMAGES = ("eeg_10s", "kaggle")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def build(data, store, cluster, said=None, **kwargs):
    kwargs.setdefault("windows", (10,))
    kwargs.setdefault("chunk_rows", 8)
    return run_build(BuildConfig(data_dir=str(data), store=str(store), scheduler=cluster, **kwargs),
                     say=said.append if said is not None else None)


def rewrite_csv(data: Path, edit) -> tuple[list[dict], list[dict]]:
    """train.csv's lines before and after `edit(lines) -> lines`."""
    with open(data / "train.csv") as f:
        before = list(csv.DictReader(f))
    after = edit([dict(line) for line in before])
    with open(data / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(before[0]))
        writer.writeheader()
        writer.writerows(after)
    return before, after


def corrected(lines: list[dict]) -> list[dict]:
    """The line with the latest offset moved 2 s earlier, line 9 removed, two new lines (new label_ids, on
    the windows of lines 3 and 15)."""
    latest = max(range(len(lines)), key=lambda i: float(lines[i]["eeg_label_offset_seconds"]))
    lines[latest]["eeg_label_offset_seconds"] = str(float(lines[latest]["eeg_label_offset_seconds"]) - 2)
    new = [dict(lines[3], label_id="1"), dict(lines[15], label_id="2")]
    return [line for i, line in enumerate(lines) if i != 9] + new


def changed_label(lines: list[dict]) -> int:
    return int(max(lines, key=lambda line: float(line["eeg_label_offset_seconds"]))["label_id"])


def rows_by_label(store: Path) -> dict[int, int]:
    labels = read_labels(str(store))
    live = ~labels.column("dropped").to_numpy(zero_copy_only=False)
    return {l: r for l, r, keep in zip(labels.column("label_id").to_pylist(), labels.column("row").to_pylist(), live)
            if keep}


def chunk_mtimes(store: Path, name: str) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in (store / name / "c").rglob("*") if p.is_file()}


def assert_same_values_by_label_id(store: Path, reference: Path):
    """Every live label_id's values in `store` equal those of `reference` (built at once from the same CSV),
    wherever each store put the row; the targets and folds too."""
    mine, theirs = rows_by_label(store), rows_by_label(reference)
    assert sorted(mine) == sorted(theirs)
    order = sorted(mine)
    a, b = [mine[l] for l in order], [theirs[l] for l in order]
    for name in IMAGES:
        np.testing.assert_array_equal(zarr.open_array(str(store / name)).oindex[a],
                                      zarr.open_array(str(reference / name)).oindex[b], err_msg=name)
    mine_labels, their_labels = read_labels(str(store)), read_labels(str(reference))
    for column in ("fold", "lrda_vote", "seizure_target", "eeg_label_offset_seconds", "status"):
        np.testing.assert_array_equal(mine_labels.column(column).to_numpy(zero_copy_only=False)[a],
                                      their_labels.column(column).to_numpy(zero_copy_only=False)[b], err_msg=column)
    raw_a, raw_b = zarr.open_array(str(store / "raw"))[:], zarr.open_array(str(reference / "raw"))[:]
    start_a, start_b = mine_labels.column("raw_start").to_numpy(), their_labels.column("raw_start").to_numpy()
    for row_a, row_b in zip(a, b):  # each row's 50 s label window
        np.testing.assert_array_equal(raw_a[:, start_a[row_a]: start_a[row_a] + LABEL_SAMPLES],
                                      raw_b[:, start_b[row_b]: start_b[row_b] + LABEL_SAMPLES])


def test_a_corrected_train_csv_recomputes_only_the_changed_rows_and_reuses_the_rest(tiny_data, tmp_path, cluster):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    store = tmp_path / "specs.zarr"
    assert build(data, store, cluster).ok
    first = rows_by_label(store)
    untouched_chunk = "c/1/0/0/0"  # rows 8-15: none changed, one dropped
    before_files = {name: chunk_mtimes(store, name) for name in (*IMAGES, "raw")}

    old_lines, new_lines = rewrite_csv(data, corrected)
    said = []
    summary = build(data, store, cluster, said)
    assert summary.ok and summary.rows == len(new_lines)
    changed, removed = changed_label(old_lines), int(old_lines[9]["label_id"])
    assert any(f"1 changed (first label_ids [{changed}]), 1 removed (first label_ids [{removed}]), 2 added "
               "(first label_ids [" in line for line in said), said

    # Every row kept its place; the new ones come after them; the removed one stays, dropped.
    after = rows_by_label(store)
    assert all(after[l] == r for l, r in first.items() if l != removed)
    assert sorted(after[l] for l in (1, 2)) == [len(old_lines), len(old_lines) + 1]
    labels = read_labels(str(store))
    dropped_row = first[removed]
    assert labels.column("dropped")[dropped_row].as_py() and labels.column("status")[dropped_row].as_py() == "dropped"
    assert labels.column("fold")[dropped_row].as_py() == -1
    # Only the changed and new rows were computed for the image arrays (the row chunks holding them whole for
    # raw, whose segments are laid out anew), and no chunk file holding none of them was rewritten; raw's new
    # segments went after the stored ones, which stay as they were.
    touched = sorted({after[changed], after[1], after[2]})
    touched_chunks = sorted({row // 8 for row in touched})
    whole = sum(min(8, len(new_lines) + 1 - 8 * c) for c in touched_chunks)  # + 1: the dropped row stays
    assert summary.rows_by_array == {"eeg_10s": 3, "kaggle": 3, "raw": whole}, (summary.rows_by_array, touched)
    for name in IMAGES:
        files = chunk_mtimes(store, name)
        assert untouched_chunk in {k.removeprefix(f"{name}/") for k in files}
        for key, mtime in before_files[name].items():
            if int(key.split("/")[2]) not in touched_chunks:
                assert files[key] == mtime, key
    assert all(chunk_mtimes(store, "raw")[key] == mtime for key, mtime in before_files["raw"].items())
    assert verify_store(str(store)) == [] and store_info(str(store))["rows_dropped"] == 1
    group, layout = open_store(str(store))
    assert layout.layout_version == LAYOUT_VERSION and layout.n_rows == len(old_lines) + 2

    # The same values, targets and folds as a store built at once from the corrected train.csv.
    fresh = tmp_path / "fresh.zarr"
    assert build(data, fresh, cluster).ok
    assert_same_values_by_label_id(store, fresh)

    # A build with nothing new does nothing.
    files = {name: chunk_mtimes(store, name) for name in (*IMAGES, "raw")}
    again = build(data, store, cluster)
    assert again.rows_computed == 0 and {name: chunk_mtimes(store, name) for name in files} == files

    # The reader never gives the dropped row; the trainer's row tables never hold it.
    from hms_train.data.reader import Selection, StoreReader
    from hms_train.data.tables import david_rows, richard_rows

    reader = StoreReader(str(store), ["eeg_10s"])
    assert dropped_row not in reader.select(Selection(only_ok=False)).tolist()
    assert dropped_row not in reader.select(Selection(exclude_folds=[0], only_ok=False)).tolist()
    for table in (richard_rows(labels), david_rows(labels)):
        assert dropped_row not in table.rows.tolist() and dropped_row not in table.target_rows.tolist()

    # The removed line back as it was: its row is used again, nothing computed.
    rewrite_csv(data, lambda lines: lines + [old_lines[9]])
    back = build(data, store, cluster)
    assert back.rows_computed == 0 and rows_by_label(store)[removed] == dropped_row


def test_a_layout_1_store_keeps_opening_and_takes_row_changes(tiny_data, tmp_path, cluster):
    """A store of the previous layout (rows fixed at creation, no row table, no `dropped` column): a build
    with its train.csv writes nothing, the reader reads it, and a corrected train.csv makes it layout 2."""
    from hms_prep.sources.rows import legacy_rows_digest

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    store = tmp_path / "v1.zarr"
    assert build(data, store, cluster).ok
    labels = read_labels(str(store))
    pq.write_table(labels.drop_columns(["dropped"]), store / "labels.parquet")
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"][ROOT_KEY].update(layout_version=1, rows_digest=legacy_rows_digest(labels))
    (store / "zarr.json").write_text(json.dumps(root))
    shutil.rmtree(store / "_rows")
    files = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and p.name != "build.lock"}

    assert build(data, store, cluster).rows_computed == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and p.name != "build.lock"} == files
    from hms_train.data.reader import StoreReader

    assert len(StoreReader(str(store), ["eeg_10s"]).select()) == labels.num_rows

    rewrite_csv(data, corrected)
    assert build(data, store, cluster).ok
    assert open_store(str(store))[1].layout_version == LAYOUT_VERSION
    fresh = tmp_path / "fresh.zarr"
    assert build(data, fresh, cluster).ok
    assert_same_values_by_label_id(store, fresh)


def test_a_lost_row_table_is_rewritten_from_labels_parquet_and_named_when_both_are(tiny_data, tmp_path, cluster):
    from hms_prep.store.layout import StoreError

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    store = tmp_path / "s.zarr"
    assert build(data, store, cluster).ok
    table = next((store / "_rows").iterdir())
    table.write_bytes(b"not parquet")
    assert any("_rows/" in p and "missing or unreadable" in p for p in verify_store(str(store)))
    said = []
    assert build(data, store, cluster, said).rows_computed == 0
    assert any("rewrote it from labels.parquet" in line for line in said) and verify_store(str(store)) == []

    table.unlink()
    (store / "labels.parquet").write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"_rows/.*missing or unreadable, and labels.parquet cannot stand in"):
        build(data, store, cluster)


def test_placing_rows_by_label_id():
    """assign_rows on tables alone: positions kept, changes named, a dropped key that comes back."""
    from hms_prep.sources.rows import assign_rows, csv_rows

    def lines(*rows):
        columns = ("label_id", "eeg_id", "eeg_label_offset_seconds", "spectrogram_id",
                   "spectrogram_label_offset_seconds", "patient_id")
        return pa.table({c: [r[i] if i < len(r) else 0 for r in rows] for i, c in enumerate(columns)})

    first = assign_rows(csv_rows(lines((10, 1, 0.0), (11, 1, 8.0), (12, 2, 0.0)), "train"), "train").table
    second = assign_rows(csv_rows(lines((13, 0, 0.0), (12, 2, 4.0), (11, 1, 8.0)), "train"), "train", first)
    assert second.table.column("label_id").to_pylist() == [10, 11, 12, 13]
    assert second.table.column("dropped").to_pylist() == [True, False, False, False]
    assert second.changed.tolist() == [2] and second.added.tolist() == [3] and second.dropped.tolist() == [0]
    assert "1 changed (first label_ids [12]), 1 removed (first label_ids [10]), 1 added" in second.line("train")
    third = assign_rows(csv_rows(lines((10, 1, 0.0), (13, 0, 0.0), (12, 2, 4.0), (11, 1, 8.0)), "train"), "train",
                        second.table)
    assert third.undropped.tolist() == [0] and not third.changed.size and not third.added.size
    with pytest.raises(ValueError, match=r"label_id 11 appears more than once \(lines 2, 3\)"):
        assign_rows(csv_rows(lines((11, 1, 0.0), (11, 1, 8.0)), "train"), "train")


def test_a_test_eeg_gone_from_test_csv_leaves_the_submission_and_the_others_predict_the_same(tiny_data, tmp_path,
                                                                                             cluster):
    """Test stores identify rows by eeg_id: an EEG removed from test.csv is dropped, and `hms-train predict`
    writes one line per EEG still in test.csv, in its order, each predicted as before."""
    from typer.testing import CliRunner

    from hms_prep.synth.dataset import synthesize
    from hms_train.cli import app

    data = tmp_path / "data"
    synthesize(data, n_eegs=3, seed=3, n_test=3)
    train_store, test_store, run = tmp_path / "train.zarr", tmp_path / "test.zarr", tmp_path / "run"
    assert build(data, train_store, cluster, kaggle=False, raw=None).ok
    trained = CliRunner().invoke(app, ["train", "--store", str(train_store), "--config", "smoke", "--device", "cpu",
                                       "--out", str(run), "--quiet", "--set", 'inputs=["eeg_10s"]', "--set", "epochs=1",
                                       "--set", "stage2_epochs=0", "--set", "max_batches_per_epoch=1",
                                       "--set", "batch_size=2", "--set", "folds=[0]"])
    assert trained.exit_code == 0, trained.output

    def predict(out: Path) -> list[list[str]]:
        assert build(data, test_store, cluster, split="test", kaggle=False, raw=None).ok
        result = CliRunner().invoke(app, ["predict", "--store", str(test_store), "--run", str(run), "--device", "cpu",
                                          "--out", str(out)])
        assert result.exit_code == 0, result.output
        return list(csv.reader(out.open()))

    before = predict(tmp_path / "before.csv")
    with open(data / "test.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 3 and [row[0] for row in before[1:]] == [line["eeg_id"] for line in lines]
    with open(data / "test.csv", "w", newline="") as f:  # the first EEG gone, the others in another order
        writer = csv.DictWriter(f, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows([lines[2], lines[1]])
    after = predict(tmp_path / "after.csv")
    assert after[0] == before[0] and [row[0] for row in after[1:]] == [lines[2]["eeg_id"], lines[1]["eeg_id"]]
    by_eeg = {row[0]: row for row in before[1:]}
    assert all(row == by_eeg[row[0]] for row in after[1:])
    labels = read_labels(str(test_store))
    assert labels.column("dropped").to_pylist() == [str(e) == lines[0]["eeg_id"] for e in labels.column("eeg_id").to_pylist()]
