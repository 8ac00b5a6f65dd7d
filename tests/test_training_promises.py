"""Training promises of docs/reliability.md proved in a real run (issue 29): an epoch with no batch is an
error, and the learning rate each optimizer step used, read from the training loop itself."""

import pyarrow.parquet as pq  # noqa: F401  (the CLI's own imports, loaded before the fork)


def test_an_epoch_with_no_batch_is_one_error_line_exit_1_and_nothing_trained(train_store, preloaded, tmp_path):
    """A batch larger than the fold's rows: the reader would give no whole batch, so the epoch would train
    nothing. It must stop the run (never an epoch of no training recorded as done), in one line naming the
    cause."""
    out = tmp_path / "run"
    result = preloaded("hms-train", "train", "--store", train_store, "--config", "smoke", "--out", out, "--quiet",
                       "--set", "epochs=1", "--set", "folds=[0]", "--set", "batch_size=100000", "--set", 'device="cpu"')
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    # Refused by the plan before any step (`fewer than one batch`); the loop's own guard (`the reader gave
    # no batch`) says the same if a reader ever yields less than the plan counted.
    assert lines[0].startswith("error: fold 0 stage1") and "100000" in lines[0], lines
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text().strip() == ""  # no epoch recorded
    assert not (out / "fold0_best.pt").exists()
