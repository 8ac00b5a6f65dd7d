"""Every moment of a build is a safe moment to die or be interrupted (docs/reliability.md): builds killed,
or sent Ctrl-C, right after an exact write, in process and on a Dask cluster (workers included), each
resumed to a store identical to an uninterrupted build.

The kill hook (tests/kill_hook/sitecustomize.py) numbers every file any process of a build writes into
the store; the builds run as real `hms-prep build` commands, forked from one process that has imported
everything (tests/kill_hook/zygote.py), so that dozens of killed builds cost seconds each."""

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

HOOK = Path(__file__).parent / "kill_hook"
ARRAYS = ("eeg_10s", "kaggle", "raw")
INTERRUPTED = "interrupted; run the same command again to resume"
# Every write of a build is a moment to kill it at: HMS_KILL_EVERY_WRITE=1 kills at each one (72 builds
# killed and resumed, 109 s on the 2-core machine); by default, every metadata write and every write of the
# first chunk of rows (each kind of data write of each array) and the last done flag: 42, 62 s.
EVERY_WRITE = os.environ.get("HMS_KILL_EVERY_WRITE") == "1"


class Zygote:
    """`hms-prep` commands forked from one process with the kill hook loaded (tests/kill_hook/zygote.py)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, str(HOOK / "zygote.py")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}",
                            "HMS_KILL_LOG": str(folder / "no-build")})
        self.runs = 0

    def build(self, data, store: Path, *args, env=None) -> tuple[int, list[str], str]:
        """(exit status, negative when killed by a signal; the store files written, in order; the output)."""
        self.runs += 1
        log, out = self.folder / f"log-{self.runs}", self.folder / f"out-{self.runs}"
        log.mkdir()
        argv = ["build", "--data", str(data), "--store", str(store), "--chunk-rows", "8", "--quiet",
                *(args or ("--windows", "10"))]
        self.process.stdin.write(json.dumps({"argv": argv, "env": {"HMS_KILL_LOG": str(log), **(env or {})},
                                             "out": str(out)}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the zygote died"
        writes = [p.read_text() for p in sorted(log.iterdir())]
        return json.loads(answer)["returncode"], writes, out.read_text()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    zygote = Zygote(tmp_path_factory.mktemp("zygote"))
    yield zygote
    zygote.close()


@pytest.fixture(scope="module")
def uninterrupted(zygote, tiny_data, tmp_path_factory):
    """The reference store, built in process, and the files it wrote, in order."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    code, writes, out = zygote.build(tiny_data, store)
    assert code == 0, out
    return store, writes


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
    array (store/coords.py: label_id, chain, Hz, s) is one kind, written the same way."""
    parts = Path(path).relative_to(store).as_posix().split("/")
    if "c" in parts:
        parts = parts[: parts.index("c")] + ["chunk"]
    metadata = store / parts[0] / "zarr.json"
    if len(parts) > 1 and metadata.exists() and COORDINATE_ATTRIBUTE in metadata.read_text():
        parts[0] = COORDINATE
    return "/".join(parts)


def assert_readable_meanwhile(store: Path, written: list[str]):
    """What a reader sees of a store killed mid-build after the writes `written`: no traceback, and exactly
    the arrays whose metadata (their last creation write, after their build state) was written."""
    if (store / "zarr.json").exists():
        whole = {name for name in ARRAYS if str(store / name / "zarr.json") in written}
        assert set(store_info(str(store))["arrays"]) == whole, (written[-1], whole)
        verify_store(str(store))  # lists what is missing, never raises


def test_a_build_killed_at_every_metadata_write_and_each_kind_of_data_write_resumes_to_the_same_store(
        zygote, tiny_data, uninterrupted, tmp_path):
    """SIGKILL to the process group right after write N, for N over every write of the store's and each
    array's creation and of the build's end (build state and array metadata, labels.parquet before and
    after its rename), and the first chunk's writes of each array (data, status, error, repaired, done)
    and the last done flag; each resumed to a store identical to an uninterrupted build."""
    reference, writes = uninterrupted
    kinds = [moment(w, reference) for w in writes]
    # Each array's metadata is one write, its attributes with it (before, each attribute was a rewrite of
    # it and a kill between two of them blocked the store for good).
    assert sorted(w for w, k in zip(writes, kinds) if k in {f"{a}/zarr.json" for a in ARRAYS}) == sorted(
        str(reference / a / "zarr.json") for a in ARRAYS)
    # every metadata write but the coordinates' (their first of each kind, below, stands for them)
    metadata = [i for i, k in enumerate(kinds) if not k.endswith("chunk") and not k.startswith(COORDINATE)]
    first_of_each = sorted({kinds.index(k) for k in kinds})
    last_done = max(i for i, k in enumerate(kinds) if k.endswith("/done/chunk"))
    chosen = list(range(len(writes))) if EVERY_WRITE else sorted(set(metadata) | set(first_of_each) | {last_done})
    assert len(metadata) >= 25 and len(chosen) >= 40, (len(writes), kinds)
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
        zygote, tiny_data, uninterrupted, tmp_path):
    """Issue 20, finding 5: a corrected train.csv changes a store's rows in place (hms_prep/building/placement.py). Killed
    at every write of the change (the row table, each array's growth and marks, labels.parquet's removal, the
    root's layout) and at the first chunk: resumed with the new train.csv, the store the uninterrupted change
    gives; resumed with the old one before the change took effect, the store as it was."""
    from test_row_changes import corrected, rewrite_csv

    reference, _ = uninterrupted
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rewrite_csv(data, corrected)
    changed = tmp_path / "changed.zarr"
    shutil.copytree(reference, changed)
    code, writes, out = zygote.build(data, changed)
    assert code == 0, out
    commit = writes.index(str(changed / "zarr.json"))
    first_resize = next(i for i, w in enumerate(writes) if w.endswith("zarr.json") and "/_rows/" not in w)
    first_chunk = next(i for i, w in enumerate(writes) if i > commit and "/c/" in w)  # the first task's
    assert any("/_rows/" in w for w in writes[:commit]) and any("/_build/" in w for w in writes[:commit]), writes
    # Each kind of write once (an image array's and a signal array's growth and marks, which repeat per array),
    # every write with HMS_KILL_EVERY_WRITE=1; the old train.csv after the table, the growth and the marks.
    def kind(i: int) -> str:
        path = moment(writes[i], changed)
        return path.replace("kaggle", "eeg_10s") if i <= first_chunk else path

    kinds = [kind(i) for i in range(first_chunk + 1)]
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


# Moments of a build on a LocalCluster, by the file written (a worker's writes and the driver's interleave
# in no fixed order, so a moment is named by its file, not its number): a worker's first data chunk, and
# the driver's metadata write after the workers finished (a worker's done flag was a third, dropped for
# time, where the in-process test covers it). One worker process: each one's start imports torch, and the
# kill reaches the whole process group either way (the Ctrl-C tests below keep two).
CLUSTER_MOMENTS = ["/eeg_10s/c/", "labels.parquet.tmp"]


@pytest.mark.parametrize("kill_on", CLUSTER_MOMENTS)
def test_a_cluster_build_killed_at_a_write_in_a_worker_or_the_driver_resumes_to_the_same_store(
        zygote, tiny_data, uninterrupted, tmp_path, kill_on):
    reference, _ = uninterrupted
    store = tmp_path / "killed.zarr"
    code, writes, out = zygote.build(tiny_data, store, "--windows", "10", "--on-dask", "--workers", "1",
                                     env={"HMS_KILL_ON": kill_on})
    assert code == -signal.SIGKILL and kill_on in writes[-1], (code, out)
    assert_readable_meanwhile(store, writes)
    code, _, out = zygote.build(tiny_data, store)  # in process: the same values (the reference's too)
    assert code == 0, out
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
