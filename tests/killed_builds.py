"""Builds killed at exact writes, shared by tests/test_kill.py and tests/test_interrupted_writes.py (conftest
imports the fixtures, so that one zygote and one reference build serve both files on a pytest worker).

The kill hook (tests/kill_hook/sitecustomize.py) numbers every file any process of a build writes into
the store; the commands run as real `hms-prep` commands, forked from one process that has imported
everything (tests/kill_hook/zygote.py), so that dozens of killed builds cost seconds each."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

HOOK = Path(__file__).parent / "kill_hook"


class Zygote:
    """`hms-prep` commands forked from one process with the kill hook loaded (tests/kill_hook/zygote.py)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, str(HOOK / "zygote.py")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}",
                            "HMS_KILL_LOG": str(folder / "no-build")})
        self.runs = 0

    def run(self, *argv: str, env=None) -> tuple[int, list[str], str]:
        """`hms-prep ARGV`: (exit status, negative when killed by a signal; the store files written, in
        order; the output)."""
        self.runs += 1
        log, out = self.folder / f"log-{self.runs}", self.folder / f"out-{self.runs}"
        log.mkdir()
        self.process.stdin.write(json.dumps({"argv": list(argv), "env": {"HMS_KILL_LOG": str(log), **(env or {})},
                                             "out": str(out)}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the zygote died"
        writes = [p.read_text() for p in sorted(log.iterdir())]
        return json.loads(answer)["returncode"], writes, out.read_text()

    def build(self, data, store: Path, *args, env=None) -> tuple[int, list[str], str]:
        """`hms-prep build` of `data` into `store` at 8 rows a chunk (ARGS: `--windows 10` unless given)."""
        return self.run("build", "--data", str(data), "--store", str(store), "--chunk-rows", "8", "--quiet",
                        *(args or ("--windows", "10")), env=env)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    zygote = Zygote(tmp_path_factory.mktemp("zygote"))
    yield zygote
    zygote.close()


@pytest.fixture(scope="session")
def uninterrupted(zygote, tiny_data, tmp_path_factory):
    """The reference store, built in process, and the files it wrote, in order."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    code, writes, out = zygote.build(tiny_data, store)
    assert code == 0, out
    return store, writes


@pytest.fixture(scope="session")
def corrected_change(zygote, tiny_data, uninterrupted, tmp_path_factory):
    """A corrected train.csv (tests/test_row_changes.py: `corrected`) and the reference store changed by it:
    (the data folder, the changed store, the files the change wrote, in order). Read only: copy first."""
    from test_row_changes import corrected, rewrite_csv

    folder = tmp_path_factory.mktemp("corrected")
    data = folder / "data"
    shutil.copytree(tiny_data, data)
    rewrite_csv(data, corrected)
    changed = folder / "changed.zarr"
    shutil.copytree(uninterrupted[0], changed)
    code, writes, out = zygote.build(data, changed)
    assert code == 0, out
    return data, changed, writes
