"""An install that is what was tested, and failures that are never silent (docs/install.md,
docs/reliability.md): the lock, `hms-prep doctor`, a build refused before it touches a store when a
compiled part cannot load, and chunk tasks that crash (in process, on a Dask worker that cannot compute,
on a worker killed mid-build) counted and reported with a non-zero exit."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from hms_prep.doctor import BUILD_PARTS, PARTS, TRAIN_PARTS

from conftest import ROOT

HOOK = Path(__file__).parent / "kill_hook"
BIN = Path(sys.executable).parent


def broken_package(root: Path, name: str, library: str) -> Path:
    """A folder that, first on PYTHONPATH, makes `import NAME` fail the way torchaudio 2.11.1 did beside
    torch 2.11.0: its compiled library does not load."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(
        f'raise OSError("Could not load this library: /site-packages/{name}/lib/{library}")\n')
    return root


@pytest.fixture(scope="module")
def broken_torch(tmp_path_factory):
    """torch, the one compiled part a build computes with that its driver does not import before the check."""
    return broken_package(tmp_path_factory.mktemp("broken"), "torch", "libtorch_cpu.so")


@pytest.fixture(scope="module")
def broken_torchvision(tmp_path_factory):
    """torchvision's operators, compiled against one torch release: what a torch upgrade alone breaks."""
    return broken_package(tmp_path_factory.mktemp("broken"), "torchvision", "_C.so")


def run(*args, pythonpath=(), env=None, timeout=300):
    path = os.pathsep.join(map(str, (*pythonpath, ROOT)))
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def prep(*args, **kwargs):
    return run(sys.executable, "-m", "hms_prep.cli", *args, **kwargs)


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def snapshot(store: Path) -> dict:
    """Every file of a store with its size and modification time: what 'not changed' means (the lock file,
    which each build takes and names itself in, aside)."""
    return {p.relative_to(store).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "build.lock"}


def test_the_lock_pins_every_package_with_hashes_and_no_torchaudio():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    for name, package in packages.items():
        if package.get("source", {}).get("registry"):
            assert package["version"] and all("hash" in w for w in package.get("wheels", [])), name
    assert "torchaudio" not in packages  # the project computes its mel filterbank itself (decisions.md)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {"dev", "dashboard", "s3"} & set(project["optional-dependencies"])
    assert wanted <= set(packages["hms-cache"]["optional-dependencies"])  # every extra is locked too


def test_the_installed_set_is_the_locked_one():
    from importlib.metadata import version

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for name in ("torch", "torchvision", "numpy", "zarr", "numcodecs", "timm", "dask", "pyarrow", "crc32c"):
        assert version(name).split("+")[0] == locked[name], name


def test_doctor_checks_every_compiled_part():
    # The installed console script itself, a fresh process (issue 29: each one runs so in `make test`; the
    # interrupted and --version runs are test_reliability's), on a command that imports every compiled part.
    result = run(BIN / "hms-prep", "doctor")
    assert result.returncode == 0, result.stderr
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [f"ok  {p.name}" for p in PARTS.values()]
    assert set(BUILD_PARTS) | set(TRAIN_PARTS) <= set(PARTS)


def test_a_torchvision_that_cannot_load_is_one_line_naming_it(broken_torchvision):
    result = prep("doctor", pythonpath=[broken_torchvision])
    assert result.returncode == 1
    line, timm = errors(result)  # timm imports torchvision: one line for each part that cannot load
    assert timm.startswith("error: timm: OSError: Could not load this library")
    assert line.startswith("error: torchvision's operators: OSError: Could not load this library")
    assert "torchvision 0." in line and "torch 2." in line and "fix: run `make setup`" in line
    assert "Traceback" not in result.stderr


def test_versions_outside_the_declared_ranges_are_one_line_naming_them(tmp_path):
    """What the export's infer.py checks on Kaggle's image: here a torch 2.7.1 first on the path."""
    (tmp_path / "torch-2.7.1.dist-info").mkdir()
    (tmp_path / "torch-2.7.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.7.1\n")
    result = prep("doctor", pythonpath=[tmp_path])
    assert result.returncode == 1
    (line,) = errors(result)
    assert line.startswith("error: hms-cache's supported versions: RuntimeError: torch 2.7.1 (hms-cache supports <2.16,>=2.8)")


def test_a_build_that_cannot_compute_creates_and_changes_nothing(broken_torch, tiny_data, tmp_path):
    store = tmp_path / "new.zarr"
    result = prep("build", "--data", tiny_data, "--store", store, "--windows", "10", "--quiet",
                  pythonpath=[broken_torch])
    assert result.returncode == 1 and not store.exists(), result.stderr
    (line,) = errors(result)
    assert line.startswith("error: torch: OSError: Could not load") and "Traceback" not in result.stderr

    good = tmp_path / "good.zarr"
    assert prep("build", "--data", tiny_data, "--store", good, "--windows", "10", "--quiet").returncode == 0
    before = snapshot(good)
    # Nothing to compute: the build needs no compiled part, and succeeds.
    again = prep("build", "--data", tiny_data, "--store", good, "--windows", "10", "--quiet",
                 pythonpath=[broken_torch])
    assert again.returncode == 0, again.stderr
    # A new window to compute: refused before the array is created.
    more = prep("build", "--data", tiny_data, "--store", good, "--windows", "10,30", "--quiet",
                pythonpath=[broken_torch])
    assert more.returncode == 1 and "libtorch_cpu.so" in errors(more)[0]
    assert snapshot(good) == before


def test_a_cluster_whose_workers_cannot_compute_is_refused_before_touching(broken_torch, tiny_data, tmp_path):
    """The issue's case: every task raised in its worker, and the build said '0 rows failed' and exited 0.
    Here the driver is healthy and the workers of the cluster are not: the check runs on the workers."""
    scheduler_file = tmp_path / "scheduler.json"
    broken = {"PYTHONPATH": f"{broken_torch}{os.pathsep}{ROOT}"}
    processes = [
        subprocess.Popen([BIN / "dask", "scheduler", "--scheduler-file", scheduler_file, "--port", "0",
                          "--no-dashboard"], env={**os.environ, **broken}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nworkers", "1",
                          "--nthreads", "1", "--no-dashboard"], env={**os.environ, **broken},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        address = _scheduler_address(scheduler_file)
        store = tmp_path / "s.zarr"
        result = prep("build", "--data", tiny_data, "--store", store, "--windows", "10", "--chunk-rows", "8",
                      "--scheduler", address, "--quiet")
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = errors(result)
    assert re.match(r"error: Dask worker tcp://\S+: torch: OSError: Could not load", line), line
    assert not store.exists() and "Traceback" not in result.stderr


def _scheduler_address(path: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.is_file():
            try:
                return json.loads(path.read_text())["address"]
            except (ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no Dask scheduler wrote {path}")


# Builds in one child process, each with its own settings of the write hook (tests/kill_hook): the
# environment is set before each build, so a LocalCluster started for it spawns its workers with it, and
# Dask's configuration is read from it again. One interpreter's imports (5-7 s) for several builds.
BUILDS = """
import json, os, sys
import dask.config
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.store.audit import verify_store
data, in_process, builds = json.loads(sys.argv[1])
base = dict(os.environ)
for store, log, env in builds:
    os.environ.clear()
    os.environ.update({**base, "HMS_KILL_LOG": log, **env})
    dask.config.refresh()
    s = run_build(BuildConfig(data_dir=data, store=store, windows=(10,), chunk_rows=8, workers=2,
                              in_process=in_process))
    print("SUMMARY" + json.dumps({"ok": s.ok, "crashed": s.crashed, "line": s.crash_line(), "rows": s.rows_computed,
                                  "failed": len(s.failed_rows()), "problems": verify_store(store)}), flush=True)
"""


def hooked_builds(data, folder: Path, builds: list[tuple[str, dict]], in_process: bool) -> list[dict]:
    """run_build for each (store name, hook settings) in turn, into FOLDER/NAME, on a LocalCluster of two
    worker processes or in process, in one child process; each build's summary, with what `verify` says
    right after it (`problems`). The hook's files for build i: FOLDER/log{i}*."""
    logs = [folder / f"log{i}" for i in range(len(builds))]
    for log in logs:
        log.mkdir()
    request = [str(data), in_process, [(str(folder / name), str(log), env) for (name, env), log in zip(builds, logs)]]
    result = run(sys.executable, "-c", BUILDS, json.dumps(request), pythonpath=[HOOK], timeout=300 * len(builds),
                 env={"HMS_KILL_LOG": str(logs[0])})  # set at start: the hook loads only then
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line[len("SUMMARY"):]) for line in result.stdout.splitlines() if line.startswith("SUMMARY")]
    assert len(summaries) == len(builds), result.stdout[-3000:]
    return summaries


# Issue 29: an ordinary exception raised inside a Dask worker's task, not only in process.
@pytest.mark.parametrize("in_process", [True, False], ids=["in_process", "in_a_dask_worker"])
def test_a_task_that_raises_is_counted_and_its_chunk_redone(tiny_data, tmp_path, in_process):
    # The disk fails writing the first data chunk of eeg_10s; the same build again, the disk well.
    failed, resumed = hooked_builds(tiny_data, tmp_path, [("s.zarr", {"HMS_FAIL_ON": "eeg_10s/c/"}), ("s.zarr", {})],
                                    in_process=in_process)
    assert not failed["ok"] and len(failed["crashed"]) == 1 and failed["failed"] > 0
    assert failed["line"].startswith("1 chunk tasks crashed: OSError: [Errno 5] Input/output error"), failed
    assert any(p.startswith("eeg_10s: 1 of 3 chunks not complete") for p in failed["problems"])  # and named
    assert resumed["ok"] and resumed["rows"] == 8 and resumed["problems"] == []


def test_a_worker_killed_mid_build_is_retried_by_dask_or_reported(tiny_data, tmp_path):
    retried, reported = hooked_builds(tiny_data, tmp_path, [
        # Dask reruns the task of a worker that died (the nanny starts a new one): the build ends complete.
        ("retried.zarr", {"HMS_KILL_WORKER_AT": "0"}),
        # With no retry allowed, the task fails with KilledWorker: counted, named, never a silent success.
        ("reported.zarr", {"HMS_KILL_WORKER_AT": "0", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}),
    ], in_process=False)
    assert (tmp_path / "log0.worker-killed").exists()  # a worker really died
    assert retried["ok"] and retried["problems"] == []
    assert (tmp_path / "log1.worker-killed").exists()
    assert not reported["ok"] and re.match(r"\d+ chunk tasks crashed: KilledWorker", reported["line"]), reported
    assert reported["problems"]
