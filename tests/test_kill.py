"""Every moment of a build is a safe moment to die or be interrupted (docs/reliability.md): builds killed,
or sent Ctrl-C, right after an exact write, in process and on a Dask cluster (workers included), each
resumed to a store identical to an uninterrupted build.

The builds run as real `hms-prep build` commands forked from one process with the kill hook loaded
(tests/killed_builds.py: the `zygote`, the `uninterrupted` reference build)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from hms_prep.store.arrays import COORDINATE_ATTRIBUTE
from hms_prep.store.audit import store_info, verify_store
from hms_prep.store.labels import read_labels

from conftest import ROOT
from killed_builds import HOOK

ARRAYS = ("eeg_10s", "kaggle", "raw")
INTERRUPTED = "interrupted; run the same command again to resume"
# Every write of a build is a moment to kill it at: HMS_KILL_EVERY_WRITE=1 kills at each one (89 builds
# killed and resumed); by default, each kind of write once (below: `moment`), every metadata write of the
# store's, of eeg_10s's and raw's creation and of the build's end, and the last done flag: 34.
EVERY_WRITE = os.environ.get("HMS_KILL_EVERY_WRITE") == "1"


def assert_same_arrays(store: Path, reference: Path, names=ARRAYS):
    for name in names:
        np.testing.assert_array_equal(zarr.open_array(str(store / name))[:], zarr.open_array(str(reference / name))[:])


def assert_same_store(store: Path, reference: Path):
    assert_same_arrays(store, reference)
    assert read_labels(str(store)).equals(read_labels(str(reference)))
    assert verify_store(str(store)) == []
    for name in ("", *ARRAYS):  # the root's layout and every array's attributes too (the build state's hold times)
        assert attributes(store / name) == attributes(reference / name), name


def attributes(folder: Path) -> dict:
    return json.loads((folder / "zarr.json").read_text()).get("attributes", {})


COORDINATE = "<coordinate>"


def moment(path: str, store: Path) -> str:
    """The kind of moment a write is: which file of the store, chunk indices left out; every coordinate
    array (store/coords.py: label_id, chain, Hz, s) is one kind, written the same way; and kaggle's writes
    are eeg_10s's kind: both image arrays, created, computed and marked by the same code (raw, the signal
    array, keeps its own: two data writes per chunk of rows, its regions)."""
    parts = Path(path).relative_to(store).as_posix().split("/")
    if "c" in parts:
        parts = parts[: parts.index("c")] + ["chunk"]
    metadata = store / parts[0] / "zarr.json"
    if len(parts) > 1 and metadata.exists() and COORDINATE_ATTRIBUTE in metadata.read_text():
        parts[0] = COORDINATE
    return "/".join(parts).replace("kaggle", "eeg_10s")


def assert_readable_meanwhile(store: Path, written: list[str]):
    """What a reader sees of a store killed mid-build after the writes `written`: no traceback, and exactly
    the arrays whose metadata (their last creation write, after their build state) was written."""
    if (store / "zarr.json").exists():
        whole = {name for name in ARRAYS if str(store / name / "zarr.json") in written}
        assert set(store_info(str(store))["arrays"]) == whole, (written[-1], whole)
        verify_store(str(store))  # lists what is missing, never raises


def test_a_build_killed_at_every_metadata_write_and_each_kind_of_data_write_resumes_to_the_same_store(
        zygote, tiny_data, uninterrupted, tmp_path):
    """SIGKILL to the process group right after write N, for N over every metadata write of the store's
    and each array's creation and of the build's end (build state and array metadata, labels.parquet before
    and after its rename; kaggle's stood for by eeg_10s's, the same kind: `moment`), the first chunk's
    writes of each kind of array (data, status, error, repaired, done) and the last done flag; each resumed
    to a store identical to an uninterrupted build."""
    reference, writes = uninterrupted
    kinds = [moment(w, reference) for w in writes]
    # Each array's metadata is one write, its attributes with it (before, each attribute was a rewrite of
    # it and a kill between two of them blocked the store for good).
    assert sorted(w for w in writes if w in {str(reference / a / "zarr.json") for a in ARRAYS}) == sorted(
        str(reference / a / "zarr.json") for a in ARRAYS)
    # every metadata write but the coordinates' and kaggle's (the first of their kind, below, stands for them)
    metadata = [i for i, k in enumerate(kinds) if not k.endswith("chunk") and not k.startswith(COORDINATE)
                and "/kaggle/" not in writes[i]]
    first_of_each = sorted({kinds.index(k) for k in kinds})
    last_done = max(i for i, k in enumerate(kinds) if k.endswith("/done/chunk"))
    chosen = list(range(len(writes))) if EVERY_WRITE else sorted(set(metadata) | set(first_of_each) | {last_done})
    assert len(metadata) >= 20 and len(chosen) >= 33, (len(writes), kinds)
    for at in chosen:
        store = tmp_path / f"killed-{at}.zarr"
        code, done, _ = zygote.build(tiny_data, store, env={"HMS_KILL_AT": str(at)})
        assert code == -signal.SIGKILL and len(done) >= at + 1, (at, kinds[at], code)
        assert_readable_meanwhile(store, done)
        code, _, out = zygote.build(tiny_data, store)
        assert code == 0, (at, kinds[at], out)
        assert_same_store(store, reference)
        shutil.rmtree(store)


def test_a_build_killed_with_a_build_state_group_but_not_yet_the_build_group_resumes(zygote, tiny_data, uninterrupted,
                                                                                    tmp_path):
    """zarr writes `_build/zarr.json` and `_build/eeg_10s/zarr.json` (the first array's build state) in no
    fixed order; killed between them the other way round from the reference's order, a plain build refused
    (`_build/zarr.json: missing; run the same build with --repair`). Found under load by the test above."""
    reference, _ = uninterrupted
    store = tmp_path / "killed.zarr"
    code, written, _ = zygote.build(tiny_data, store, env={"HMS_KILL_ON": "/_build/eeg_10s/zarr.json"})
    assert code == -signal.SIGKILL
    (store / "_build" / "zarr.json").unlink(missing_ok=True)  # the state where it came second
    assert (store / "_build" / "eeg_10s" / "zarr.json").exists()
    assert_readable_meanwhile(store, written)
    code, _, out = zygote.build(tiny_data, store)
    assert code == 0, out
    assert_same_store(store, reference)


def test_a_build_killed_while_adding_an_array_to_a_finished_store_hides_it_and_computes_only_it(
        zygote, tiny_data, uninterrupted, tmp_path):
    """Every write of the new array's creation (its build state, then its metadata), and its first chunk."""
    reference, _ = uninterrupted
    probe = tmp_path / "probe.zarr"
    shutil.copytree(reference, probe)
    code, writes, out = zygote.build(tiny_data, probe, "--windows", "10,30")
    assert code == 0, out
    first_chunk = next(i for i, w in enumerate(writes) if "/c/" in w)
    creation = [i for i, w in enumerate(writes[:first_chunk]) if "eeg_30s" in w]
    assert len(creation) == 6, writes  # _build/eeg_30s, its done, status, error, repaired; eeg_30s itself
    last_done = max(i for i, w in enumerate(writes) if "/_build/eeg_30s/done/c/" in w)
    for at in [*creation, first_chunk, last_done]:
        store = tmp_path / f"added-{at}.zarr"
        shutil.copytree(reference, store)
        code, _, _ = zygote.build(tiny_data, store, "--windows", "10,30", env={"HMS_KILL_AT": str(at)})
        assert code == -signal.SIGKILL
        if at < creation[-1]:  # before its metadata, the one write that makes it an array: not seen
            assert "eeg_30s" not in store_info(str(store))["arrays"] and verify_store(str(store)) == []
        if at == last_done:  # issue 29 G: every chunk done, labels.parquet not yet rewritten: verify says so
            assert "labels.parquet lacks column 'status_eeg_30s' that the store's rows give; hms-prep build " \
                   "rewrites it" in verify_store(str(store))
        assert_same_arrays(store, reference)  # the arrays that were there are untouched
        code, resumed, out = zygote.build(tiny_data, store, "--windows", "10,30")
        assert code == 0, out
        assert not [w for w in resumed if "/c/" in w and "eeg_30s" not in w], "only eeg_30s is computed"
        np.testing.assert_array_equal(zarr.open_array(str(store / "eeg_30s"))[:],
                                      zarr.open_array(str(probe / "eeg_30s"))[:])
        assert verify_store(str(store)) == []
        shutil.rmtree(store)


def test_a_build_applying_a_corrected_train_csv_killed_at_every_write_of_the_change_resumes(
        zygote, tiny_data, uninterrupted, corrected_change, tmp_path):
    """Issue 20, finding 5: a corrected train.csv changes a store's rows in place (hms_prep/building/placement.py). Killed
    at every write of the change (the row table, each array's growth and marks, labels.parquet's removal, the
    root's layout) and at the first chunk: resumed with the new train.csv, the store the uninterrupted change
    gives; resumed with the old one before the change took effect, the store as it was."""
    reference, _ = uninterrupted
    data, changed, writes = corrected_change
    commit = writes.index(str(changed / "zarr.json"))
    first_resize = next(i for i, w in enumerate(writes) if w.endswith("zarr.json") and "/_rows/" not in w)
    first_chunk = next(i for i, w in enumerate(writes) if i > commit and "/c/" in w)  # the first task's
    assert any("/_rows/" in w for w in writes[:commit]) and any("/_build/" in w for w in writes[:commit]), writes
    # Each kind of write once (an image array's and a signal array's growth and marks, which repeat per array),
    # every write with HMS_KILL_EVERY_WRITE=1; the old train.csv after the table, the growth and the marks.
    kinds = [moment(writes[i], changed) for i in range(first_chunk + 1)]
    chosen = range(first_chunk + 1) if EVERY_WRITE else sorted({kinds.index(k) for k in kinds})
    before_commit = [i for i in chosen if i < commit]
    reverted = set(before_commit) if EVERY_WRITE else {before_commit[1], commit - 2, commit - 1}
    for at in chosen:
        for csv_data, expected in ((data, changed), (tiny_data, reference)):
            if csv_data is tiny_data and at not in reverted:
                continue  # after the root's write the old train.csv is another change
            store = tmp_path / f"changing-{at}.zarr"
            shutil.copytree(reference, store)
            code, _, _ = zygote.build(data, store, env={"HMS_KILL_AT": str(at)})
            assert code == -signal.SIGKILL, (at, writes[at])
            if csv_data is data:  # verify names a change caught between the first resize and the commit
                caught = any("a change of rows that stopped" in line for line in verify_store(str(store)))
                assert caught == (first_resize <= at < commit), (at, writes[at])
            code, _, out = zygote.build(csv_data, store)
            assert code == 0, (at, writes[at], out)
            assert_same_store(store, expected)
            shutil.rmtree(store)


# Moments of a build on a LocalCluster of two worker processes, by the file written (a worker's writes and
# the driver's interleave in no fixed order, so a moment is named by its file, not its number): a worker's
# first data chunk, then, in the build that resumes it on a cluster too, the driver's first write after the
# workers finished (a worker's done flag, dropped for time, is the in-process test's). Issue 29: two workers,
# resumed on a cluster; the kill reaches the whole process group, every worker with the driver.
def test_a_cluster_build_killed_at_a_worker_write_resumes_on_a_cluster_killed_at_the_driver_and_then_completes(
        zygote, tiny_data, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    store = tmp_path / "killed.zarr"
    on_cluster = ("--windows", "10", "--on-dask", "--workers", "2")
    code, writes, out = zygote.build(tiny_data, store, *on_cluster, env={"HMS_KILL_ON": "/eeg_10s/c/"})
    assert code == -signal.SIGKILL and "/eeg_10s/c/" in writes[-1], (code, out)
    assert_readable_meanwhile(store, writes)
    code, resumed, out = zygote.build(tiny_data, store, *on_cluster, env={"HMS_KILL_ON": "labels.parquet.tmp"})
    assert code == -signal.SIGKILL and "labels.parquet.tmp" in resumed[-1], (code, out)
    assert any("/c/" in w for w in resumed), "the resumed build computed on its cluster"
    assert_readable_meanwhile(store, writes + resumed)
    code, finished, out = zygote.build(tiny_data, store)  # in process: every chunk done, the build's end left
    assert code == 0 and not any(f"/{name}/c/" in w for name in ARRAYS for w in finished), out
    assert_same_store(store, reference)


# --- Ctrl-C: one line, exit 130, resumable ----------------------------------------------------------------


def interrupted_cli(data, store: Path, log: Path, *args, env: dict) -> subprocess.CompletedProcess:
    """`hms-prep build` as a user runs it (its own interpreter, a process group of its own as a terminal
    gives it), sent SIGINT to the whole group at the moment the kill hook's settings name."""
    log.mkdir()
    return subprocess.run(
        [sys.executable, "-m", "hms_prep.cli", "build", "--data", str(data), "--store", str(store), "--windows",
         "10", "--chunk-rows", "8", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, start_new_session=True,
        # As a terminal starts it: SIGINT at its default (this test process may ignore it: a build run in
        # process through the CLI ignores it once finished, and a child would inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}", "HMS_KILL_LOG": str(log), **env})


# what a build says before it computes (docs/cli.md): not the interruption's output
NOTICES = ("Dask dashboard:", "planning ", "starting a Dask cluster of ")


def assert_one_line_130(result: subprocess.CompletedProcess):
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line.strip() and not line.startswith(NOTICES)]
    assert result.returncode == 130 and lines == [INTERRUPTED], (result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("where, args, env", [
    ("in process, right after the first raw done flag", ("--workers", "1"),
     {"HMS_KILL_ON": "/_build/raw/done/c/0", "HMS_KILL_SIGNAL": "INT"}),
    ("on a cluster, right after a worker's first eeg_10s chunk", ("--on-dask", "--workers", "2"),
     {"HMS_KILL_ON": "/eeg_10s/c/", "HMS_KILL_SIGNAL": "INT"}),
    ("on a cluster, while its first worker process starts", ("--on-dask", "--workers", "2"),
     {"HMS_INTERRUPT_ON_SPAWN": "1"}),
])
def test_ctrl_c_to_the_process_group_is_one_line_exit_130_and_resumable(
        zygote, tiny_data, uninterrupted, tmp_path, where, args, env):
    import socket

    reference, _ = uninterrupted
    store = tmp_path / "int.zarr"
    with socket.socket() as dashboard:  # another build's Dask dashboard: a second line (a port warning) once
        try:
            dashboard.bind(("", 8787))
        except OSError:
            pass  # held already, by another test's cluster or process: the same case
        result = interrupted_cli(tiny_data, store, tmp_path / "log", *args, env=env)
    assert list(tmp_path.glob("log.*")), "the interruption happened"  # killed-on / spawn-interrupted
    assert_one_line_130(result)
    code, _, out = zygote.build(tiny_data, store)
    assert code == 0, out
    assert_same_store(store, reference)
