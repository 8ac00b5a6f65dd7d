"""Shared test fixtures: the genuine Kaggle sample and small synthetic datasets and stores."""

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-sample"
PRELOADED = ROOT / "tests" / "preloaded.py"
# The genuine Kaggle files (../shared beside the checkout); tests that read them skip, saying why,
# when they are missing, so that every other test still runs.
needs_real_sample = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"needs the genuine Kaggle sample at {REAL} (../shared beside the checkout)"
)


# The longest files first (10 s or more each on the 2-core machine, longest first, as measured 2026-12-08
# 01:26 on a quiet machine after issues 25-29's fifth step: docs/performance.md): `make test`'s two workers
# take whole files in collection order (--dist loadfile), so starting with the longest keeps one worker from
# running a long file alone at the end. xdist reorders files by their number of tests unless told not to
# (`--no-loadscope-reorder` in the Makefile): it then ran the one-test seed chain (114 s) last, alone.
LONGEST_FIRST = ("test_train.py", "test_seed_chain.py", "test_kill.py", "test_recipes.py", "test_documented_commands.py",
                 "test_install.py", "test_build.py", "test_export.py", "test_reliability.py", "test_resume.py",
                 "test_benchmarks.py", "test_train_plugins.py", "test_full_scale.py", "test_tracking.py",
                 "test_interrupted_writes.py", "test_public_models.py", "test_plugins.py", "test_kinds.py",
                 "test_row_changes.py", "test_build_paths.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's order is kept


def built_once(tmp_path_factory, name: str, make) -> Path:
    """The folder `name` that `make(folder)` fills once per `make test`, shared by its xdist workers (as
    pytest-xdist's docs recommend: a lock in the folder above the workers' own temporary folders; issue 29,
    suite time: train_store took 24-28 s in each worker). Whoever takes it must only read it: copy first."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:  # one process: its own folder
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():  # a worker that failed to make it left no mark: the next one starts afresh
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic Kaggle-layout dataset shared by the tests of a session."""
    from hms_prep.synth.dataset import synthesize

    return built_once(tmp_path_factory, "synth", lambda folder: synthesize(folder / "data", n_eegs=24, seed=7,
                                                                           n_test=3)) / "data"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Three EEGs (21 rows): three chunks of rows at chunk_rows 8, so every kind of moment of a build happens
    and few repeat (the kill, interruption and damage tests)."""
    from hms_prep.synth.dataset import synthesize

    return built_once(tmp_path_factory, "tiny", lambda folder: synthesize(folder / "data", n_eegs=3, seed=3,
                                                                         n_test=1)) / "data"


@pytest.fixture(scope="session")
def train_store(synth_data, tmp_path_factory):
    """A train store (eeg_10s, eeg_30s, kaggle, raw) built from `synth_data` on a real LocalCluster."""
    from hms_prep.building.run import BuildConfig, run_build

    def build(folder: Path):
        run_build(BuildConfig(data_dir=str(synth_data), store=str(folder / "specs.zarr"), windows=(10, 30),
                              chunk_rows=8, workers=2, in_process=False))  # small enough to run in process otherwise

    return str(built_once(tmp_path_factory, "stores", build) / "specs.zarr")


@contextmanager
def preloaded_server():
    """The path of a socket where tests/preloaded.py serves `hms-prep` / `hms-train` calls, each a process
    forked from one that imported the CLIs' modules once (3-5 s of imports saved per call)."""
    folder = Path(tempfile.mkdtemp(prefix="hms-"))  # a short path: a Unix socket's is limited to 107 bytes
    sock = folder / "cli.sock"
    server = subprocess.Popen([sys.executable, str(PRELOADED), "serve", str(sock)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout.readline().strip() == "ready", "the preloaded CLI server did not start"
        yield sock
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def preloaded_bin(tmp_path):
    """A folder with `hms-prep` and `hms-train` scripts whose calls are each a process forked from one that
    has imported the CLIs' modules already (`preloaded_server`): for a shell script or a document's lines
    (scripts/seed.sh's BIN, README.md's block on PATH), whose many calls pay those 3-5 s of imports once."""
    with preloaded_server() as sock:
        bin_ = tmp_path / "bin"
        bin_.mkdir()
        for name in ("hms-prep", "hms-train"):
            (bin_ / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{PRELOADED}" call "{sock}" {name} "$@"\n')
            (bin_ / name).chmod(0o755)
        yield bin_


@pytest.fixture(scope="module")
def preloaded():
    """`run(name, *args, env=None, timeout=None)`: `hms-prep` / `hms-train` as a process of its own, forked
    from a preloaded one (`preloaded_server`); a CompletedProcess with its exit status and text output, as
    `subprocess.run` gives; `env`'s PYTHONPATH is put on the child's path as a fresh interpreter would.
    Not for what the interpreter's own start or exit decides (Ctrl-C, exit-time output): those run fresh."""
    with preloaded_server() as sock:
        def run(name: str, *args, env=None, timeout=None) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-S", str(PRELOADED), "call", str(sock), name, *map(str, args)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})

        yield run


# The killed-build fixtures of tests/test_kill.py and tests/test_interrupted_writes.py, defined once here so
# that one zygote process and one reference build serve both files on a pytest worker.
from killed_builds import corrected_change, uninterrupted, zygote  # noqa: E402,F401
