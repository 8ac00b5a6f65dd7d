"""A training run killed with SIGKILL at an arbitrary moment and resumed with `hms-train --resume` ends
exactly where an uninterrupted run ends: same out-of-fold predictions, same metrics lines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hms_train.run.metric import VOTE_COLUMNS

from conftest import ROOT

pytestmark = pytest.mark.slow
HOOK = Path(__file__).parent / "train_hook"
TINY = ["inputs=[\"eeg_10s\"]", "epochs=3", "stage2_epochs=1", "max_batches_per_epoch=2", "batch_size=8",
        "folds=[0, 1]", "seed=3"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hms_train.cli", *args, "--quiet"]


# The recipes' switches that carry state across epochs and stages: per-epoch rows, stage 2 from the
# best stage-1 weights, a per-epoch schedule, the EMA's warm-up.
RECIPE_SWITCHES = ["sample_per_eeg=true", "val_per_eeg=true", 'stage2_init="best"', 'schedule_unit="epoch"',
                   "ema_decay=0.9", "ema_warmup=true", "select_min_votes=0"]


def train_args(store: str, out, switches: list[str] = ()) -> list[str]:
    return ["train", "--store", store, "--config", "smoke", "--device", "cpu", "--out", str(out),
            *[f"--set={o}" for o in [*TINY, *switches]]]


@pytest.fixture(scope="module")
def run(preloaded):
    """`hms-train ARGS... --quiet` as a process of its own, forked from the preloaded CLI (tests/preloaded.py):
    the resumes, without an import of torch each; the killed runs stay fresh interpreters (their kill hook
    is imported from PYTHONPATH at start-up, and their process group is killed)."""
    def resume(args: list[str]) -> subprocess.CompletedProcess:
        result = preloaded("hms-train", *args, "--quiet", env={"OMP_NUM_THREADS": "1"}, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    return resume


def run_here(args: list[str]) -> None:
    """The same command in this process (typer's CliRunner): the uninterrupted run a killed one is held
    against, without a second interpreter's imports. The killed and resumed runs stay processes of their own."""
    from typer.testing import CliRunner

    from hms_train.cli import app

    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output[-4000:]


def kill_when(path, args: list[str], timeout: float = 240) -> None:
    """Start training in its own session and SIGKILL the whole group as soon as `path` exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command(*args), cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not path.exists():
            assert process.poll() is None, f"training ended before {path.name} appeared: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
            time.sleep(0.02)
        assert process.poll() is None, "training finished before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


def predictions(run) -> tuple[np.ndarray, np.ndarray]:
    oof = pq.read_table(run / "oof.parquet")
    return oof.column("label_id").to_numpy(), np.stack([oof.column(c).to_numpy() for c in VOTE_COLUMNS], 1)


# The smoke recipe with the recipe switches that touch resume (per-eeg rows, stage 2 from the best,
# per-epoch schedule, EMA warm-up): a superset of the plain smoke run's code paths, run once for time.
@pytest.mark.parametrize("switches", [RECIPE_SWITCHES], ids=["recipe_switches"])
def test_killed_run_resumes_to_the_same_predictions(train_store, tmp_path, switches, run):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(train_args(train_store, full, switches))
    # Killed in fold 1's second epoch: fold 0 is finished, fold 1 has one complete epoch.
    kill_when(killed / "fold1_last.pt", train_args(train_store, killed, switches))
    assert not (killed / "oof.parquet").exists()
    fold0_done = (killed / "fold0_oof.parquet").stat().st_mtime_ns
    run(["train", "--resume", str(killed)])

    ids, probs = predictions(full)
    resumed_ids, resumed_probs = predictions(killed)
    np.testing.assert_array_equal(resumed_ids, ids)
    np.testing.assert_allclose(resumed_probs, probs, atol=1e-5)
    assert (killed / "fold0_oof.parquet").stat().st_mtime_ns == fold0_done, "a finished fold was retrained"
    lines = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    key = lambda r: (r["fold"], r["stage"], r["epoch"])  # noqa: E731
    assert [key(r) for r in resumed] == [key(r) for r in lines], "metrics.jsonl as if never interrupted"
    np.testing.assert_allclose([r["val_kl"] for r in resumed], [r["val_kl"] for r in lines], atol=1e-5)
    assert json.loads((killed / "config.json").read_text()) == json.loads((full / "config.json").read_text())


def test_a_run_killed_inside_an_epoch_resumes_there_and_ends_the_same(train_store, tmp_path, run):
    """Checkpoints every step inside an epoch; killed right after the 6th of them (fold 0, stage 1, inside
    its third epoch): the resumed run starts at the next batch, not at the epoch's start, and ends with the
    uninterrupted run's predictions and metrics."""
    switches = [*RECIPE_SWITCHES, "checkpoint_every_steps=1", "max_batches_per_epoch=4", "batch_size=4", "folds=[0]"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(train_args(train_store, full, switches))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}",
           "HMS_KILL_AFTER_MID_SAVE": "6"}
    process = subprocess.run(command(*train_args(train_store, killed, switches)), cwd=ROOT, env=env,
                             start_new_session=True, capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    at = torch.load(killed / "fold0_last.pt", weights_only=True)["position"]
    assert at["stage"] == "stage1" and 0 < at["batch"] and at["epoch"] >= 1, at  # inside an epoch after the first
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == at["epoch"]
    run(["train", "--resume", str(killed)])

    ids, probs = predictions(full)
    resumed_ids, resumed_probs = predictions(killed)
    np.testing.assert_array_equal(resumed_ids, ids)
    np.testing.assert_allclose(resumed_probs, probs, atol=1e-5)
    lines = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in resumed] == [(r["stage"], r["epoch"]) for r in lines]
    for key in ("train_loss", "val_kl"):  # the resumed epoch's loss sums its batches before and after the kill
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in lines], atol=1e-5)


def test_ctrl_c_in_training_is_one_line_with_the_resume_command_and_the_resume_says_where(train_store, tmp_path, run):
    """SIGINT (Ctrl-C in the terminal) right after the 3rd checkpoint inside an epoch: exit 130 and one line
    naming the exact --resume command; that command says where it goes on, and finishes the run."""
    switches = ["checkpoint_every_steps=1", "max_batches_per_epoch=4", "batch_size=4", "folds=[0]", "epochs=2",
                "stage2_epochs=0"]
    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}",
           "HMS_KILL_AFTER_MID_SAVE": "3", "HMS_KILL_SIGNAL": "INT"}
    process = subprocess.run(command(*train_args(train_store, run_dir, switches)), cwd=ROOT, env=env,
                             start_new_session=True, capture_output=True, text=True, timeout=300,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.returncode == 130, process.stderr[-3000:]
    assert process.stderr.strip().splitlines()[-1] == f"interrupted; resume with: hms-train --resume {run_dir}"
    assert "Traceback" not in process.stderr
    at = torch.load(run_dir / "fold0_last.pt", weights_only=True)["position"]
    resumed = run(["train", "--resume", str(run_dir)])
    assert (f"resuming {run_dir} at fold 0, {at['stage']}, epoch {at['epoch'] + 1} after batch {at['batch']} "
            "(finished folds: none)") in resumed.stderr
    assert (run_dir / "oof.parquet").is_file()


def test_resume_refuses_other_options_and_missing_runs(tmp_path):
    from typer.testing import CliRunner

    from hms_train.cli import app

    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1 and "not a run directory" in result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--set", "lr=1"])
    assert result.exit_code == 1 and "--resume continues a run with its own config.json" in result.output
