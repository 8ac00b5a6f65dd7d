"""Store writes stopped at exact moments, beyond a build's own (tests/test_kill.py), sharing its zygote:

- `hms-prep compact` (issue 29, F): row changes relocate raw regions; compaction reclaims them, copying
  every value as it was, and a kill at any of its writes leaves a store that the next compact finishes;
- Ctrl-C (SIGINT from the write hook) at the store's and each array's creation writes takes effect once
  that creation is done (issue 29: this replaced a hand loop under CPU hogs)."""

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import zarr

from hms_prep.store.audit import verify_store
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.compact import compact_store
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import store_nbytes

from test_kill import EVERY_WRITE, INTERRUPTED, assert_same_arrays, assert_same_store
from test_row_changes import assert_same_values_by_label_id, corrected, rewrite_csv


def build(data, store):
    summary = run_build(BuildConfig(data_dir=str(data), store=str(store), windows=(10,), chunk_rows=8))
    assert summary.ok, summary.line()
    return summary


def raw(store: Path) -> np.ndarray:
    return zarr.open_array(str(store / "raw"))[:]


def shifted(seconds: float):
    """An edit moving the latest label offset by `seconds`: a changed row, its chunk's raw region relocated."""
    def edit(lines):
        latest = max(range(len(lines)), key=lambda i: float(lines[i]["eeg_label_offset_seconds"]))
        lines[latest]["eeg_label_offset_seconds"] = str(float(lines[latest]["eeg_label_offset_seconds"]) + seconds)
        return lines
    return edit


def test_row_changes_grow_the_store_and_compact_reclaims_it_keeping_every_value(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    store = tmp_path / "specs.zarr"
    build(data, store)
    first_raw, first_labels, first_bytes = raw(store), read_labels(str(store)), store_nbytes(str(store))

    # Three row changes in a row, the last one back to the first train.csv: each relocates a chunk's region.
    lengths = [first_raw.shape[1]]
    for edit in (shifted(-2), shifted(-2), shifted(+4)):
        rewrite_csv(data, edit)
        build(data, store)
        lengths.append(raw(store).shape[1])
    assert lengths == sorted(set(lengths)), lengths  # grown at every change
    assert store_nbytes(str(store)) > first_bytes
    assert compact_store(str(store)).regions_moved > 0
    # The same rows as the first build: the one-pass layout again, so the very arrays and labels.parquet.
    np.testing.assert_array_equal(raw(store), first_raw)
    assert read_labels(str(store)).equals(first_labels)
    assert verify_store(str(store)) == []
    assert store_nbytes(str(store)) <= first_bytes * 1.01, (store_nbytes(str(store)), first_bytes)

    # A corrected train.csv (changed, removed, new rows), compacted: every value that of a fresh build.
    rewrite_csv(data, corrected)
    build(data, store)
    before = raw(store)
    labels = read_labels(str(store))
    compacted = compact_store(str(store))
    assert compacted.samples_after < compacted.samples_before == before.shape[1]
    after, moved = raw(store), read_labels(str(store))
    for (start, moved_start) in zip(labels.column("raw_start").to_numpy(), moved.column("raw_start").to_numpy()):
        np.testing.assert_array_equal(after[:, moved_start: moved_start + 10_000], before[:, start: start + 10_000])
    fresh = tmp_path / "fresh.zarr"
    build(data, fresh)
    assert_same_values_by_label_id(store, fresh)
    assert verify_store(str(store)) == []
    assert compact_store(str(store)).regions_moved == 0  # nothing left to compact
    assert build(data, store).rows_computed == 0  # the build takes the compacted layout as its own


def test_a_compaction_killed_at_any_write_is_finished_by_the_next_one(zygote, corrected_change, tmp_path):
    _, grown, _ = corrected_change  # the tiny store after a corrected train.csv: relocated raw regions

    def compact(store: Path, env=None) -> tuple[int, list[str], str]:
        return zygote.run("compact", str(store), env=env)

    compacted = tmp_path / "compacted.zarr"
    shutil.copytree(grown, compacted)
    code, writes, out = compact(compacted)
    assert code == 0 and "compacted raw" in out, out
    assert any("/raw/c/" in w for w in writes) and writes.count(str(compacted / "zarr.json")) >= 1, writes
    # Every write of the first move (the staging) up to labels.parquet back in place, its data chunks but the
    # first left out; the final move's first data chunk; the last write (the arrays shrunk): 13 of 26 (every
    # one with HMS_KILL_EVERY_WRITE=1). The final move's other writes repeat the staging's.
    root = str(compacted / "zarr.json")
    first_commit, chunk = writes.index(root), [f"{compacted}/raw/c/" in w for w in writes]
    chosen = range(len(writes)) if EVERY_WRITE else [
        *(i for i in range(first_commit + 3) if not (chunk[i] and chunk[i - 1])),
        *[i for i in range(first_commit, len(writes)) if chunk[i]][:1], len(writes) - 1]
    for at in chosen:
        store = tmp_path / f"killed-{at}.zarr"
        shutil.copytree(grown, store)
        code, _, _ = compact(store, env={"HMS_KILL_AT": str(at)})
        assert code == -signal.SIGKILL, (at, writes[at])
        # Whatever the moment, the store reads: at worst labels.parquet waits for the next compact.
        problems = verify_store(str(store))
        assert all("labels.parquet" in p for p in problems), (at, writes[at], problems)
        code, _, out = compact(store)
        assert code == 0, (at, writes[at], out)
        assert_same_store(store, compacted)
        shutil.rmtree(store)
    assert writes.count(root) == 2 and writes[first_commit + 2].endswith("/labels.parquet"), writes  # staged first


def test_ctrl_c_at_a_creation_write_takes_effect_once_that_creation_is_done(zygote, tiny_data, uninterrupted, tmp_path):
    """SIGINT to the build's process group right after each of the six writes that create eeg_30s beside a
    finished store (its build state, then its metadata), and right after a new store's root: exit 130 with
    the one line, the creation it fell in finished (eeg_30s's metadata written; a new store's root with its
    layout, or the store removed whole), and the next build resumes to the uninterrupted store."""
    reference, writes = uninterrupted
    probe = tmp_path / "probe.zarr"
    shutil.copytree(reference, probe)
    code, added, out = zygote.build(tiny_data, probe, "--windows", "10,30")
    assert code == 0, out
    first_chunk = next(i for i, w in enumerate(added) if "/c/" in w)
    creation = [i for i, w in enumerate(added[:first_chunk]) if "eeg_30s" in w]
    assert len(creation) == 6 and added[creation[-1]] == str(probe / "eeg_30s" / "zarr.json"), added
    for at in creation:
        store = tmp_path / f"adding-{at}.zarr"
        shutil.copytree(reference, store)
        code, done, out = zygote.build(tiny_data, store, "--windows", "10,30",
                                       env={"HMS_KILL_AT": str(at), "HMS_KILL_SIGNAL": "INT"})
        assert code == 130 and out.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in out, (at, out)
        assert (store / "eeg_30s" / "zarr.json").exists(), (at, added[at], done)  # the creation finished
        assert not any("/c/" in w for w in done), (at, done)  # and nothing after it
        code, _, out = zygote.build(tiny_data, store, "--windows", "10,30")
        assert code == 0, (at, out)
        assert_same_arrays(store, probe, ("eeg_10s", "eeg_30s", "kaggle", "raw"))
        assert verify_store(str(store)) == []
        shutil.rmtree(store)
    assert writes[0] == str(reference / "zarr.json"), writes[:3]
    store = tmp_path / "new.zarr"
    code, _, out = zygote.build(tiny_data, store, env={"HMS_KILL_AT": "0", "HMS_KILL_SIGNAL": "INT"})
    assert code == 130 and out.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in out, out
    if (store / "zarr.json").exists():
        assert "hms_cache" in json.loads((store / "zarr.json").read_text()).get("attributes", {})
    code, _, out = zygote.build(tiny_data, store)
    assert code == 0, out
    assert_same_store(store, reference)
